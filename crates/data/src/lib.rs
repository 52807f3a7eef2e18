//! Datasets of ldmscale: captioned images behind one [`Dataset`] trait, deterministic train/val
//! splits, resize/crop/flip transforms, seeded resumable batching (also streamed by background
//! workers with bounded prefetch, [`PrefetchLoader`]), and a memory-mapped latent cache.
//!
//! Sources: the procedural [`Shapes`] (no files needed), the fetched assets Fashion-MNIST,
//! MNIST and emoji ([`GrayClasses`], [`Emoji`]), and user data: an image folder
//! ([`ImageFolder`]), COCO captions ([`Coco`]) and WebDataset tar shards ([`WebDataset`]).
//! Configs name them with a [`DatasetSpec`] (`"shapes"`, `"coco:JSON:DIR"`, ...); the
//! super-resolution study's high-resolution images with an [`HrSource`] (`"photos"`,
//! `"div2k:DIR"`, ...), cut into seeded crops by [`hr_crops`]; DreamBooth's subjects and prompts come from
//! [`dreambooth`] ([`SubjectSet`], [`evaluation_prompts`]).
//!
//! Everything random (splits, shuffles, crops, flips, procedural scenes) is a pure function of
//! seeds and indices through the crate's own small generator, so runs resume exactly and do not
//! shift when dependencies are upgraded.

pub mod batch;
pub mod cache;
pub mod captioned;
pub mod dataset;
pub mod degrade;
pub mod dreambooth;
pub mod error;
pub mod folder;
pub mod hr;
pub mod image;
pub mod mnist;
pub mod prefetch;
pub mod rng;
pub mod shapes;
pub mod spec;
pub mod stream;
pub mod transform;
pub mod webdataset;

pub use batch::{Batch, BatchLoader, Cursor, LoaderConfig, Sampler};
pub use cache::{
    CacheKey, CachedBatch, CachedText, LatentCache, LatentCacheWriter, MAX_MAPPED_SHARDS,
    StorageDtype, TextStorage, TokenDtype, file_sha256, range_dir, ranges_in, split_ranges,
};
pub use captioned::{Captioned, STUDY_SPLIT, load_captioned};
pub use dataset::{Dataset, Example, Skipped, Split, SplitConfig, SplitDataset};
pub use dreambooth::{
    DreamBoothSubjects, EmojiSubject, EmojiSubjects, EvalPrompt, Pattern, PromptGroup, Subject,
    SubjectDomain, SubjectInfo, SubjectSet, caption_vocabulary, check_evaluation_prompts,
    check_identifier, check_prompts, class_twin, evaluation_prompts, load_instance_dir,
};
pub use error::DataError;
pub use folder::{Coco, CocoCaptions, ImageFolder};
pub use hr::{CropSpec, Downscale, HrSource, for_each_hr_crop, hr_crops, hr_crops_of_images};
pub use image::Image;
pub use mnist::{CaptionStyle, Emoji, GrayClasses, Part, assets_dir, cache_root};
pub use prefetch::{Extent, PrefetchLoader};
pub use shapes::{Scene, Shapes, ShapesConfig};
pub use spec::DatasetSpec;
pub use stream::{CaptionedSet, CaptionedStream};
pub use transform::{Crop, Transform};
pub use webdataset::WebDataset;
