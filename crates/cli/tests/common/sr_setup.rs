//! The tiny pretrained setup the `ldmscale finetune-sr` tests share (the including test crate
//! declares `mod npy` from `src/npy.rs`).

use std::path::Path;

use burn::tensor::Device;
use ldmscale_data::Image;
use ldmscale_model::init::seeded_init;
use ldmscale_model::vae::save_vae;
use ldmscale_model::weights::save_unet;
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig, UNet, UNetConfig};

/// A tiny pretrained setup under `root`: `unet/`, `vae/`, `empty.npy` and `hr/` with three
/// 40x36 images.
pub fn setup(root: &Path) {
    let device = Device::flex();
    let mut config = UNetConfig::small(8, 16, 2);
    config.norm_num_groups = 4;
    let unet = seeded_init(&device, 1, || UNet::new(&config, &device));
    save_unet(&root.join("unet"), &config, &unet).unwrap();
    let vae_config = AutoencoderKLConfig::small(2, 8);
    let vae = seeded_init(&device, 2, || AutoencoderKL::new(&vae_config, &device));
    save_vae(&root.join("vae"), &vae_config, &vae).unwrap();
    crate::npy::write(&root.join("empty.npy"), &[1, 3, 16], &[0.0; 48]).unwrap();
    std::fs::create_dir_all(root.join("hr")).unwrap();
    for i in 0..3u32 {
        let mut image = Image::filled(40, 36, [20, 40, 60]);
        for y in 0..36 {
            for x in 0..40 {
                let v = ((x * (i + 2) + y * 3) % 255) as u8;
                image.set_pixel(x, y, [v, 255 - v, (v / 2) + 60]);
            }
        }
        std::fs::write(root.join(format!("hr/{i}.png")), image.to_png()).unwrap();
    }
}
