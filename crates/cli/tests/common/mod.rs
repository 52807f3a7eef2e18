//! The tiny training run the `ldmscale train` tests share: a random KL autoencoder and a
//! width-8 UNet on 24 `shapes` examples at 16 px.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use ldmscale_model::init::seeded_init;
use ldmscale_model::vae::save_vae;
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig};

/// Writes `dir/run.toml` with the tiny data and model; `train` holds the `[train]` keys and
/// `extra` any tables after `[train.model]`.
pub fn tiny_run_file(dir: &Path, train: &str, extra: &str) -> PathBuf {
    let vae_dir = dir.join("vae");
    let config = AutoencoderKLConfig::small(2, 8);
    let device = Device::flex();
    let vae = seeded_init(&device, 3, || AutoencoderKL::new(&config, &device));
    save_vae(&vae_dir, &config, &vae).unwrap();
    let file = dir.join("run.toml");
    std::fs::write(
        &file,
        format!(
            "[data]\ndataset = \"shapes\"\nresolution = 16\nexamples = 24\nfirst_stage = \"{}\"\ntext_encoder = \"tiny-random\"\n\n\
             [train]\n{train}\n\
             [train.model]\nfamily = \"small\"\nwidth = 8\nheads = 2\nnorm_groups = 4\n\n{extra}",
            vae_dir.display()
        ),
    )
    .unwrap();
    file
}
