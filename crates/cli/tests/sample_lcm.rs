//! `ldmscale sample --sampler lcm` end to end against diffusers' LatentConsistencyModelPipeline
//! (output_type="latent") on the random-weight LCM UNet fixture with the same latents, text
//! states and step noise (fixtures/lcm, made by tools/fixtures/make_lcm_fixtures.py), and its
//! refusals.

#[allow(dead_code)]
#[path = "../src/npy.rs"]
mod npy;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn lcm_dir() -> PathBuf {
    root().join("fixtures/lcm")
}

/// `ldmscale sample --sampler lcm` on `unet` with the fixture inputs, plus `extra` arguments.
fn sample(unet: &str, steps: usize, cfg: f64, extra: &[&Path], out: &Path) -> Output {
    let unet = root().join("fixtures/unet").join(unet);
    let scheduler = lcm_dir().join("lcm_scheduler_config.json");
    sample_with((&unet, &scheduler), steps, cfg, extra, out)
}

/// [`sample`] with the UNet directory and scheduler config given.
fn sample_with(
    (unet, scheduler): (&Path, &Path),
    steps: usize,
    cfg: f64,
    extra: &[&Path],
    out: &Path,
) -> Output {
    let dir = lcm_dir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ldmscale"));
    cmd.arg("sample")
        .arg("--unet")
        .arg(unet)
        .arg("--scheduler-config")
        .arg(scheduler)
        .args(["--sampler", "lcm", "--steps", &steps.to_string()])
        .args(["--cfg", &cfg.to_string()])
        .arg("--prompt-embeds")
        .arg(dir.join("prompt_embeds.npy"))
        .arg("--init-latents")
        .arg(dir.join("init_latents.npy"))
        .arg("--output-latents")
        .arg(out);
    for pair in extra.chunks(2) {
        cmd.arg(pair[0]).arg(pair[1]);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `(max |a - b|, max |a - b| / max(1, |b|))`.
fn errors(ours: &[f32], theirs: &[f32]) -> (f32, f32) {
    ours.iter()
        .zip(theirs)
        .fold((0.0, 0.0), |(abs, rel), (a, b)| {
            let d = (a - b).abs();
            (abs.max(d), rel.max(d / b.abs().max(1.0)))
        })
}

#[test]
fn final_latents_match_the_diffusers_lcm_pipeline() {
    let dir = lcm_dir();
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let cases = manifest["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 12);
    let tmp = tempfile::tempdir().unwrap();
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let out = tmp.path().join(file);
        let noise = case["step_noise_file"].as_str().map(|f| dir.join(f));
        let flag = Path::new("--step-noise");
        let extra: Vec<&Path> = noise.iter().flat_map(|n| [flag, n.as_path()]).collect();
        let result = sample(
            "lcm_timestep_cond",
            steps,
            case["cfg"].as_f64().unwrap(),
            &extra,
            &out,
        );
        assert!(result.status.success(), "{file}: {}", stderr(&result));
        assert!(
            stderr(&result).contains(&format!("{steps} evaluations per image")),
            "{file}: one evaluation per step: {}",
            stderr(&result)
        );
        let ours = npy::read(&out).unwrap();
        let theirs = npy::read(&dir.join(file)).unwrap();
        assert_eq!(ours.shape, theirs.shape, "{file}");
        let (abs, scaled) = errors(&ours.data, &theirs.data);
        // The random UNet's eps is divided by sqrt(alpha_cumprod) (1/0.068 at t = 999), so the
        // latents reach |x| ~ 70 and f32 rounding alone moves them by ~6e-5: diffusers' own f32
        // run lies that far from its f64 run. The sampler's arithmetic is held to 1e-5 apart
        // from the UNet (crates/diffusion/tests/lcm.rs); here, twice diffusers' own distance.
        let floor = case["f32_vs_f64_max_abs"].as_f64().unwrap() as f32;
        eprintln!(
            "{file}: max abs {abs:.2e} (diffusers f32 vs f64: {floor:.2e}), \
             max abs / max(1, |ref|) {scaled:.2e}"
        );
        assert!(
            abs <= 2.0 * floor,
            "{file}: max abs {abs:e} > 2 x {floor:e}"
        );
    }
}

/// The realistic-scale cases: the fixture UNet with its output convolution scaled by 0.3,
/// predicting v, so the latents stay within |x| ~ 2 and diffusers' own f32 run lies within
/// 2.5e-6 of its f64 run; the whole pipeline is held to 1e-5 at 1, 2, 4 and 8 steps and
/// guidance 1, 4.5 and 8.
#[test]
fn realistic_scale_latents_match_the_diffusers_lcm_pipeline_within_1e_5() {
    let dir = lcm_dir();
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let v = &manifest["v_prediction"];
    let cases = v["cases"].as_array().expect("v_prediction.cases");
    assert_eq!(cases.len(), 12);
    let unet = dir.join(v["unet"].as_str().unwrap());
    let scheduler = dir.join(v["scheduler_config"].as_str().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let out = tmp.path().join(file);
        let noise = case["step_noise_file"].as_str().map(|f| dir.join(f));
        let flag = Path::new("--step-noise");
        let extra: Vec<&Path> = noise.iter().flat_map(|n| [flag, n.as_path()]).collect();
        let cfg = case["cfg"].as_f64().unwrap();
        let result = sample_with((&unet, &scheduler), steps, cfg, &extra, &out);
        assert!(result.status.success(), "{file}: {}", stderr(&result));
        let ours = npy::read(&out).unwrap();
        let theirs = npy::read(&dir.join(file)).unwrap();
        assert_eq!(ours.shape, theirs.shape, "{file}");
        let (abs, _) = errors(&ours.data, &theirs.data);
        let largest = theirs.data.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        eprintln!("{file}: max abs {abs:.2e} on latents up to |x| {largest:.2}");
        assert!(largest < 4.0, "{file}: the fixture is not O(1): {largest}");
        assert!(abs <= 1e-5, "{file}: max abs {abs:e} > 1e-5");
    }
}

#[test]
fn guidance_changes_the_latents() {
    let tmp = tempfile::tempdir().unwrap();
    let noise = lcm_dir().join("step_noise_4.npy");
    let extra = [Path::new("--step-noise"), noise.as_path()];
    let read = |cfg: f64| {
        let out = tmp.path().join(format!("{cfg}.npy"));
        let result = sample("lcm_timestep_cond", 4, cfg, &extra, &out);
        assert!(result.status.success(), "{}", stderr(&result));
        npy::read(&out).unwrap().data
    };
    let (abs, _) = errors(&read(1.0), &read(8.0));
    assert!(abs > 1e-2, "guidance 1 and 8 gave the same latents");
}

#[test]
fn a_unet_without_a_guidance_embedding_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = root().join("fixtures/pipeline");
    let prompt = pipeline.join("prompt_embeds.npy");
    let result = Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .arg("sample")
        .arg("--unet")
        .arg(root().join("fixtures/unet/sd_like_linear"))
        .args(["--sampler", "lcm", "--steps", "4"])
        .arg("--prompt-embeds")
        .arg(prompt)
        .arg("--output-latents")
        .arg(tmp.path().join("o.npy"))
        .output()
        .unwrap();
    let err = stderr(&result);
    assert!(!result.status.success());
    for part in [
        "sd_like_linear/config.json",
        "time_cond_proj_dim",
        "guidance embedding",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
}

#[test]
fn step_noise_of_the_wrong_shape_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let noise = lcm_dir().join("step_noise_8.npy");
    let extra = [Path::new("--step-noise"), noise.as_path()];
    let result = sample(
        "lcm_timestep_cond",
        4,
        4.5,
        &extra,
        &tmp.path().join("o.npy"),
    );
    let err = stderr(&result);
    assert!(!result.status.success());
    for part in ["step_noise_8.npy", "[3, 2, 4, 8, 8]", "[7, 2, 4, 8, 8]"] {
        assert!(err.contains(part), "{part}: {err}");
    }
}

#[test]
fn flags_that_do_not_go_together_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.npy");
    let dir = lcm_dir();
    let noise = dir.join("step_noise_4.npy");
    let prompt = dir.join("prompt_embeds.npy");
    let cases: [(&[&Path], &str); 3] = [
        (&[Path::new("--noise"), &noise], "--noise"),
        (
            &[Path::new("--negative-embeds"), &prompt],
            "--negative-embeds",
        ),
        (&[Path::new("--step-noise"), &noise], "1 LCM step"),
    ];
    for (i, (extra, part)) in cases.iter().enumerate() {
        let steps = if i == 2 { 1 } else { 4 };
        let result = sample("lcm_timestep_cond", steps, 4.5, extra, &out);
        assert!(!result.status.success());
        assert!(
            stderr(&result).contains(part),
            "{part}: {}",
            stderr(&result)
        );
    }
    let result = sample("lcm_timestep_cond", 51, 4.5, &[], &out);
    assert!(
        stderr(&result).contains("num_inference_steps"),
        "{}",
        stderr(&result)
    );
    // --step-noise belongs to LCM.
    let result = Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .arg("sample")
        .arg("--unet")
        .arg(root().join("fixtures/unet/lcm_timestep_cond"))
        .args(["--sampler", "ddpm", "--steps", "4", "--step-noise"])
        .arg(&noise)
        .arg("--prompt-embeds")
        .arg(&prompt)
        .arg("--output-latents")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!result.status.success());
    assert!(
        stderr(&result).contains("--step-noise is for --sampler lcm"),
        "{}",
        stderr(&result)
    );
}
