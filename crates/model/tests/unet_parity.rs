//! The UNet forward against diffusers' `UNet2DConditionModel` on random-weight fixtures
//! (tools/fixtures/make_unet_fixtures.py).

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use ldmscale_model::ExtraConditioning;
use ldmscale_model::weights::load_unet;
use safetensors::{Dtype, SafeTensors};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/unet")
}

struct Io {
    bytes: Vec<u8>,
}

impl Io {
    fn open(case: &str) -> Self {
        Io {
            bytes: std::fs::read(fixtures().join(case).join("io.safetensors")).unwrap(),
        }
    }

    fn get(&self, name: &str) -> Option<(Vec<usize>, Dtype, Vec<u8>)> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let view = st.tensor(name).ok()?;
        Some((view.shape().to_vec(), view.dtype(), view.data().to_vec()))
    }

    fn f32(&self, name: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        let (shape, dtype, data) = self.get(name)?;
        assert_eq!(dtype, Dtype::F32, "{name}");
        let values = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        Some((shape, values))
    }

    fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Option<Tensor<D>> {
        let (shape, values) = self.f32(name)?;
        Some(Tensor::from_data(TensorData::new(values, shape), device))
    }
}

/// Relative L2 error and max absolute error of `ours` against `reference`.
fn errors(ours: &[f32], reference: &[f32]) -> (f64, f64) {
    assert_eq!(ours.len(), reference.len());
    let mut diff2 = 0.0f64;
    let mut ref2 = 0.0f64;
    let mut max_abs = 0.0f64;
    for (&a, &b) in ours.iter().zip(reference) {
        let d = (a - b) as f64;
        diff2 += d * d;
        ref2 += (b as f64) * (b as f64);
        max_abs = max_abs.max(d.abs());
    }
    ((diff2 / ref2).sqrt(), max_abs)
}

fn check(case: &str) {
    let device = Device::flex();
    let (_, model) = load_unet(&fixtures().join(case), &device).unwrap();
    let io = Io::open(case);
    let sample: Tensor<4> = io.tensor("sample", &device).unwrap();
    let context: Tensor<3> = io.tensor("encoder_hidden_states", &device).unwrap();
    let (_, timesteps) = io.f32("timesteps").unwrap();
    let mut extra = ExtraConditioning {
        timestep_cond: io.tensor("timestep_cond", &device),
        class_labels: None,
    };
    if let Some((shape, dtype, data)) = io.get("class_labels") {
        assert_eq!(dtype, Dtype::I64);
        let labels: Vec<i64> = data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        extra.class_labels = Some(Tensor::<1, Int>::from_data(
            TensorData::new(labels, shape),
            &device,
        ));
    }
    let out = model.forward_with(sample, &timesteps, context, &extra);
    let (shape, reference) = io.f32("out").unwrap();
    assert_eq!(out.dims().to_vec(), shape, "{case}: output shape");
    let ours = out.into_data().try_to_vec::<f32>().unwrap();
    let (rel, max_abs) = errors(&ours, &reference);
    let scale = reference.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
    eprintln!("{case}: relative L2 {rel:.2e}, max abs {max_abs:.2e} (|out| <= {scale:.2})");
    assert!(rel <= 1e-4, "{case}: relative L2 error {rel:.3e} > 1e-4");
    assert!(
        max_abs <= 1e-4 * scale.max(1.0),
        "{case}: max abs error {max_abs:.3e} > 1e-4 x {scale:.2}"
    );
}

#[test]
fn sd_like_linear() {
    check("sd_like_linear");
}

#[test]
fn sd15_like_conv() {
    check("sd15_like_conv");
}

#[test]
fn one_level() {
    check("one_level");
}

#[test]
fn two_levels_no_attn_bottom() {
    check("two_levels_no_attn_bottom");
}

#[test]
fn three_levels_upcast() {
    check("three_levels_upcast");
}

#[test]
fn lcm_timestep_cond() {
    check("lcm_timestep_cond");
}

#[test]
fn upscaler_like() {
    check("upscaler_like");
}
