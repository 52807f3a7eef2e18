//! The UNet forward against diffusers' `UNet2DConditionModel` on random-weight fixtures
//! (tools/fixtures/make_unet_fixtures.py).

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use ldmscale_model::ExtraConditioning;
use ldmscale_model::weights::load_unet;
use ldmscale_testkit::{RawTensor, assert_parity, fixture_dir, read_safetensors, values};

fn fixtures() -> PathBuf {
    fixture_dir("unet")
}

/// The tensors of a case's `io.safetensors`.
struct Io(BTreeMap<String, RawTensor>);

impl Io {
    fn open(case: &str) -> Self {
        Io(read_safetensors(
            fixtures().join(case).join("io.safetensors"),
        ))
    }

    fn f32(&self, name: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        let t = self.0.get(name)?;
        Some((t.shape.clone(), t.f32()))
    }

    fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Option<Tensor<D>> {
        let (shape, values) = self.f32(name)?;
        Some(Tensor::from_data(TensorData::new(values, shape), device))
    }
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
    if let Some(labels) = io.0.get("class_labels") {
        extra.class_labels = Some(Tensor::<1, Int>::from_data(
            TensorData::new(labels.i64(), labels.shape.clone()),
            &device,
        ));
    }
    let out = model.forward_with(sample, &timesteps, context, &extra);
    let (shape, reference) = io.f32("out").unwrap();
    assert_eq!(out.dims().to_vec(), shape, "{case}: output shape");
    let ours = values(out);
    assert_parity(case, &ours, &reference, 1e-4, 1e-4);
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
