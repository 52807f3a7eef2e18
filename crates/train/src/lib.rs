//! Training LDMs from scratch: one loop over any [`TrainTask`] (text-to-image first), one
//! recipe for every width of a family, exact resume, and training compute accounted as the
//! paper does (normalised cost x iterations).

pub mod autoencoder;
pub mod checkpoint;
pub mod class_images;
pub mod config;
pub mod data;
pub mod ema;
pub mod error;
pub mod evaluation;
#[cfg(feature = "mpi")]
pub mod mpi_sync;
#[cfg(feature = "nccl")]
pub mod nccl_sync;
pub mod optimizer;
pub mod parallel;
pub mod params;
pub mod process_sync;
pub mod sync;
pub mod task;
pub mod tasks;
pub mod trainer;

pub use checkpoint::TrainState;
pub use config::{Family, ModelConfig, Objective, TrainConfig};
pub use data::{InMemory, SyntheticData, TrainingData};
pub use error::TrainError;
pub use sync::{DeviceThreads, GradSync};
pub use task::{ShardLoss, TrainTask};
pub use tasks::{CodiDistill, LcmDistill, SuperRes, TextToImage};
pub use trainer::{EvalHook, RunSummary, train, train_task, train_with_hook};
