//! The tiny run the training tests share: a width-8 UNet of the small family on synthetic
//! 4x8x8 latents with 3x16 text states.

use ldmscale_train::{SyntheticData, TrainConfig};

/// `[model]` and `[ema]` of the tiny run.
const MODEL: &str =
    "[model]\nfamily = \"small\"\nwidth = 8\nheads = 2\nnorm_groups = 4\n[ema]\nmax_decay = 0.99\n";

/// A run config from its `[train]` keys (one per line) and the tiny model.
pub fn config(train: &str) -> TrainConfig {
    TrainConfig::from_toml(&format!("{train}\n{MODEL}"), "test").unwrap()
}

/// `len` synthetic examples of 3 classes.
pub fn data(len: usize) -> SyntheticData {
    SyntheticData {
        len,
        classes: 3,
        latent_shape: [4, 8, 8],
        context_shape: [3, 16],
    }
}
