//! Class images for prior preservation: made once by the base model, reused, resumed with the
//! same pixels, a folder made by another prompt refused, a user's own folder used as it is.

use std::path::Path;

use burn::tensor::Device;
use ldmscale_data::Image;
use ldmscale_diffusion::SamplerId;
use ldmscale_model::init::{seeded_init, with_device_rng};
use ldmscale_model::text::{TextConditioner, TinyTextSpec, tiny_text_conditioner};
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig, UNet};
use ldmscale_pipeline::{LatentDiffusion, SamplingSpec};
use ldmscale_train::class_images::{ClassImageRequest, RECORD, ensure_class_images, image_path};
use ldmscale_train::{Family, ModelConfig};

struct Models {
    vae_config: AutoencoderKLConfig,
    vae: AutoencoderKL,
    unet: UNet,
    text: TextConditioner,
}

/// A KL-f2 autoencoder, a width-8 UNet over 4x8x8 latents and a tiny text encoder, untrained.
fn models(device: &Device) -> Models {
    let vae_config = AutoencoderKLConfig::small(2, 8);
    let vae = seeded_init(device, 0, || AutoencoderKL::new(&vae_config, device));
    let model = ModelConfig {
        family: Family::Small,
        width: 8,
        heads: 2,
        norm_groups: 4,
    };
    let spec = TinyTextSpec {
        width: 16,
        layers: 1,
        heads: 2,
        min_count: 1,
        ..TinyTextSpec::default()
    };
    // Seeded under the device generator's lock; encoding once initialises every parameter.
    let text = with_device_rng(|| {
        device.seed(0);
        let text = tiny_text_conditioner(&["a red circle", "a blue square"], &spec, device);
        let text = text.unwrap();
        text.encode(&["a circle"], device).unwrap();
        text
    });
    let unet = seeded_init(device, 0, || UNet::new(&model.unet(4, 8, 16), device));
    Models {
        vae_config,
        vae,
        unet,
        text,
    }
}

fn request(prompt: &str, count: usize) -> ClassImageRequest {
    ClassImageRequest {
        prompt: prompt.into(),
        count,
        sampling: SamplingSpec {
            sampler: SamplerId::Ddim,
            steps: 2,
            cfg: 3.0,
            seed: 7,
        },
    }
}

fn ensure(m: &Models, dir: &Path, req: &ClassImageRequest) -> Result<Vec<Image>, String> {
    let model = LatentDiffusion {
        unet: &m.unet,
        vae: &m.vae,
        vae_config: &m.vae_config,
        latent_shape: [4, 8, 8],
    };
    ensure_class_images(dir, req, &model, &m.text, &Device::flex()).map_err(|e| e.to_string())
}

#[test]
fn made_once_reused_and_resumed_with_the_same_pixels() {
    let device = Device::flex();
    let m = models(&device);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("class");
    let five = ensure(&m, &dir, &request("a circle", 5)).unwrap();
    assert_eq!(five.len(), 5);
    assert_eq!((five[0].width(), five[0].height()), (16, 16));
    assert!(dir.join(RECORD).is_file() && image_path(&dir, 4).is_file());
    // Different noise per image.
    assert_ne!(five[0], five[1]);

    // A lost image is made again with the same pixels; the others are not touched.
    let before = std::fs::read(image_path(&dir, 2)).unwrap();
    std::fs::remove_file(image_path(&dir, 2)).unwrap();
    let again = ensure(&m, &dir, &request("a circle", 5)).unwrap();
    assert_eq!(std::fs::read(image_path(&dir, 2)).unwrap(), before);
    assert_eq!(again, five);

    // Image i depends on the seed and i only, not on how many were asked for.
    let three = ensure(&m, &root.path().join("three"), &request("a circle", 3)).unwrap();
    assert_eq!(three[..], five[..3]);
    // Asking for more extends the folder.
    assert_eq!(ensure(&m, &dir, &request("a circle", 6)).unwrap().len(), 6);
}

#[test]
fn another_prompt_a_short_user_folder_and_an_empty_prompt_are_refused() {
    let device = Device::flex();
    let m = models(&device);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("class");
    ensure(&m, &dir, &request("a circle", 2)).unwrap();
    let err = ensure(&m, &dir, &request("a square", 2)).unwrap_err();
    assert!(
        err.contains("another prompt") && err.contains("class"),
        "{err}"
    );

    let user = root.path().join("user");
    std::fs::create_dir(&user).unwrap();
    let red = Image::filled(16, 16, [200, 0, 0]);
    std::fs::write(user.join("b.png"), red.to_png()).unwrap();
    std::fs::write(
        user.join("a.png"),
        Image::filled(16, 16, [0, 0, 9]).to_png(),
    )
    .unwrap();
    let used = ensure(&m, &user, &request("a circle", 2)).unwrap();
    assert_eq!(
        used[1], red,
        "a user's images are used as they are, sorted by name"
    );
    assert!(!user.join(RECORD).exists());
    let err = ensure(&m, &user, &request("a circle", 3)).unwrap_err();
    assert!(
        err.contains("user") && err.contains("holds 2 images"),
        "{err}"
    );

    let err = ensure(&m, &root.path().join("e"), &request(" ", 2)).unwrap_err();
    assert!(
        err.contains("class prompt") && err.contains("empty"),
        "{err}"
    );
    let err = ensure(&m, &root.path().join("e"), &request("a circle", 0)).unwrap_err();
    assert!(err.contains("0 class images"), "{err}");
}
