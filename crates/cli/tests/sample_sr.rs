//! `ldmscale sample` with a super-resolution UNet (`in_channels` = 2 x `out_channels`): given
//! `--lr-latents` it samples SR without guidance; at finetune step 0 (the text-to-image UNet
//! widened with zero weights) its latents are diffusers' unguided text-to-image pipeline's for
//! any LR input; without `--lr-latents` it stops naming `in_channels`.

#[allow(dead_code)]
#[path = "../src/npy.rs"]
mod npy;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::Device;
use ldmscale_model::weights::{load_unet, save_unet};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sample(unet: &Path, extra: &[&std::ffi::OsStr]) -> Output {
    let dir = root().join("fixtures/pipeline");
    Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .arg("sample")
        .arg("--unet")
        .arg(unet)
        .arg("--scheduler-config")
        .arg(dir.join("scheduler_config.json"))
        .args(["--sampler", "ddim", "--steps", "4", "--cfg", "1"])
        .arg("--prompt-embeds")
        .arg(dir.join("prompt_embeds.npy"))
        .arg("--init-latents")
        .arg(dir.join("init_latents.npy"))
        .args(extra)
        .output()
        .unwrap()
}

/// The fixture UNet widened for SR, saved under `dir`.
fn sr_unet(dir: &Path) -> PathBuf {
    let t2i = root().join("fixtures/unet/sd_like_linear");
    let (config, unet) = load_unet(&t2i, &Device::flex()).unwrap();
    let (config, unet) = unet.into_super_res(&config, 4).unwrap();
    let out = dir.join("sr_unet");
    save_unet(&out, &config, &unet).unwrap();
    out
}

#[test]
fn sr_sampling_at_step_zero_equals_diffusers_unguided_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let unet = sr_unet(tmp.path());
    let lr = tmp.path().join("lr.npy");
    let values: Vec<f32> = (0..2 * 4 * 16 * 16)
        .map(|i| ((i * 37 % 101) as f32 / 25.0) - 2.0)
        .collect();
    npy::write(&lr, &[2, 4, 16, 16], &values).unwrap();
    let out = tmp.path().join("out.npy");
    let result = sample(
        &unet,
        &[
            "--lr-latents".as_ref(),
            lr.as_os_str(),
            "--output-latents".as_ref(),
            out.as_os_str(),
        ],
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("4 evaluations per image"), "{stderr}");
    let ours = npy::read(&out).unwrap();
    let reference = npy::read(&root().join("fixtures/pipeline/out_ddim_4_1.npy")).unwrap();
    assert_eq!(ours.shape, reference.shape);
    let diff = ours
        .data
        .iter()
        .zip(&reference.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "max |SR - diffusers| = {diff}");
}

#[test]
fn lr_latents_are_required_by_sr_unets_and_refused_by_others() {
    let tmp = tempfile::tempdir().unwrap();
    let unet = sr_unet(tmp.path());
    let out = tmp.path().join("out.npy");
    let result = sample(&unet, &["--output-latents".as_ref(), out.as_os_str()]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success());
    assert!(
        stderr.contains("config.json: in_channels 8") && stderr.contains("--lr-latents"),
        "{stderr}"
    );

    let lr = tmp.path().join("lr.npy");
    npy::write(&lr, &[2, 4, 16, 16], &[0.5; 2 * 4 * 16 * 16]).unwrap();
    let t2i = root().join("fixtures/unet/sd_like_linear");
    let args = [
        "--lr-latents".as_ref(),
        lr.as_os_str(),
        "--output-latents".as_ref(),
        out.as_os_str(),
    ];
    let result = sample(&t2i, &args);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success());
    assert!(
        stderr.contains("in_channels 4 equals out_channels"),
        "{stderr}"
    );

    let mut with_level = args.to_vec();
    with_level.extend([
        std::ffi::OsStr::new("--noise-level"),
        std::ffi::OsStr::new("20"),
    ]);
    let result = sample(&unet, &with_level);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success());
    assert!(stderr.contains("has no noise-level embedding"), "{stderr}");

    npy::write(&lr, &[2, 3, 16, 16], &[0.5; 2 * 3 * 16 * 16]).unwrap();
    let result = sample(&unet, &args);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success());
    assert!(stderr.contains("must have 4 channels"), "{stderr}");
}
