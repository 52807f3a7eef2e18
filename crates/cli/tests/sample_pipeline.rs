//! `ldmscale sample` end to end against diffusers' StableDiffusionPipeline(output_type="latent")
//! on a random-weight tiny UNet with the same latents and text states
//! (fixtures/pipeline, made by tools/fixtures/make_pipeline_fixtures.py).

#[allow(dead_code)]
#[path = "../src/npy.rs"]
mod npy;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        d += ((x - y) as f64).powi(2);
        n += (y as f64).powi(2);
    }
    (d / n).sqrt()
}

#[test]
fn final_latents_match_the_diffusers_pipeline() {
    let dir = root().join("fixtures/pipeline");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let cases = manifest["cases"].as_array().expect("cases");
    assert!(cases.len() >= 10);
    let out_dir = tempfile::tempdir().unwrap();
    let unet = root().join(manifest["unet"].as_str().unwrap());
    for case in cases {
        let sampler = case["sampler"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap().to_string();
        let cfg = case["cfg"].as_f64().unwrap().to_string();
        let eta = case["eta"].as_f64().unwrap_or(0.0).to_string();
        let file = case["file"].as_str().unwrap();
        let scheduler = manifest["scheduler_configs"][sampler].as_str().unwrap();
        let out = out_dir.path().join(file);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ldmscale"));
        cmd.arg("sample")
            .arg("--unet")
            .arg(&unet)
            .arg("--scheduler-config")
            .arg(dir.join(scheduler))
            .args([
                "--sampler",
                sampler,
                "--steps",
                &steps,
                "--cfg",
                &cfg,
                "--eta",
                &eta,
            ])
            .arg("--prompt-embeds")
            .arg(dir.join("prompt_embeds.npy"))
            .arg("--negative-embeds")
            .arg(dir.join("negative_embeds.npy"))
            .arg("--init-latents")
            .arg(dir.join("init_latents.npy"))
            .arg("--output-latents")
            .arg(&out);
        if let Some(noise) = case["noise_file"].as_str() {
            cmd.arg("--noise").arg(dir.join(noise));
        }
        let result = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(result.status.success(), "{file}: {stderr}");
        let per_step = if case["cfg"].as_f64().unwrap() > 1.0 {
            2
        } else {
            1
        };
        let evaluations = per_step * case["steps"].as_u64().unwrap();
        assert!(
            stderr.contains(&format!("{evaluations} evaluations per image")),
            "{file}: {stderr}"
        );
        let ours = npy::read(&out).unwrap();
        let theirs = npy::read(&dir.join(file)).unwrap();
        assert_eq!(ours.shape, theirs.shape, "{file}");
        let err = relative_l2(&ours.data, &theirs.data);
        // 1e-3, unless the case amplifies rounding so much that diffusers' own f32 run lies
        // further than that from its f64 run (20 guided DPM++ steps of a random network do:
        // a 1e-6 change of the input moves the output by 3e-3); then three times that
        // distance: another f32 run lands anywhere in that ball (on an Intel Sapphire Rapids,
        // whose AVX-512 kernels round differently, 2.07 times it for that case).
        let floor = case["f32_vs_f64_relative_l2"]
            .as_f64()
            .expect("f32_vs_f64_relative_l2");
        let tolerance = 1e-3f64.max(3.0 * floor);
        eprintln!("{file}: relative L2 {err:.2e} (diffusers f32 vs f64: {floor:.1e})");
        assert!(
            err < tolerance,
            "{file}: relative L2 error {err:.3e} >= {tolerance:.1e}"
        );
    }
}

#[test]
fn bad_inputs_are_named() {
    let dir = root().join("fixtures/pipeline");
    let unet = root().join("fixtures/unet/sd_like_linear");
    let out_dir = tempfile::tempdir().unwrap();
    // Text states of the wrong width.
    let wrong = out_dir.path().join("wrong.npy");
    npy::write(&wrong, &[2, 3, 16], &[0.0; 96]).unwrap();
    let result = Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .arg("sample")
        .arg("--unet")
        .arg(&unet)
        .arg("--prompt-embeds")
        .arg(&wrong)
        .arg("--output-latents")
        .arg(out_dir.path().join("o.npy"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success());
    assert!(
        stderr.contains("wrong.npy") && stderr.contains("cross_attention_dim"),
        "{stderr}"
    );
    // A UNet directory that does not exist.
    let result = Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .args([
            "sample",
            "--unet",
            "/nonexistent/unet",
            "--output-latents",
            "o.npy",
        ])
        .arg("--prompt-embeds")
        .arg(dir.join("prompt_embeds.npy"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success());
    assert!(stderr.contains("/nonexistent/unet/config.json"), "{stderr}");
}
