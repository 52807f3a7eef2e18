//! Shared helpers for the parity tests: fixture loading, the analytic denoiser, error metrics.

#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_diffusion::Denoiser;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

/// Parity bound from the project spec: |a - b| <= TOL * max(1, |b|).
pub const TOL: f32 = 1e-5;

/// `fixtures/schedulers/` loaded into memory.
pub struct Fixtures {
    bytes: Vec<u8>,
    pub manifest: Value,
}

impl Fixtures {
    /// Loads `fixtures/schedulers/`, or the directory in `LDMSCALE_SCHEDULER_FIXTURES` (e.g. one
    /// written with the script's `--exact-scalar-math` diagnostic).
    pub fn load() -> Self {
        let dir = std::env::var_os("LDMSCALE_SCHEDULER_FIXTURES")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/schedulers")
            });
        let bytes = std::fs::read(dir.join("schedulers.safetensors"))
            .expect("fixtures/schedulers/schedulers.safetensors (run tools/fixtures/make_scheduler_fixtures.py)");
        let manifest = serde_json::from_slice(
            &std::fs::read(dir.join("manifest.json")).expect("fixtures/schedulers/manifest.json"),
        )
        .expect("manifest.json is JSON");
        Self { bytes, manifest }
    }

    fn view(&self, name: &str) -> (Vec<usize>, Dtype, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).expect("valid safetensors");
        let v = st
            .tensor(name)
            .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
        (v.shape().to_vec(), v.dtype(), v.data().to_vec())
    }

    /// An f32 tensor as (shape, values).
    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, dtype, data) = self.view(name);
        assert_eq!(dtype, Dtype::F32, "{name} is not f32");
        let values = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (shape, values)
    }

    /// An i64 tensor's values.
    pub fn i64(&self, name: &str) -> Vec<i64> {
        let (_, dtype, data) = self.view(name);
        assert_eq!(dtype, Dtype::I64, "{name} is not i64");
        data.chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    /// A 4-d f32 fixture tensor on `device`.
    pub fn tensor4(&self, name: &str, device: &Device) -> Tensor<4> {
        let (shape, values) = self.f32(name);
        let shape: [usize; 4] = shape.try_into().expect("4-d tensor");
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// The scheduler config JSON of a named config, with `timestep_spacing` overridden.
    pub fn config_json(&self, config: &str, spacing: &Value) -> String {
        let mut cfg = self.manifest["configs"][config].clone();
        if !spacing.is_null() {
            cfg["timestep_spacing"] = spacing.clone();
        }
        cfg.to_string()
    }
}

/// The fixtures' analytic denoiser, same f32 operations as the Python script:
/// `tf = t / 1000; out = (x (0.6 + 0.3 tf) + (x^2 / (x^2 + 1)) 0.2) - 0.1 tf`.
pub struct Analytic;

impl Denoiser for Analytic {
    fn predict(&mut self, x: Tensor<4>, timesteps: &[f32]) -> Tensor<4> {
        let tf = timesteps[0] / 1000.0;
        let k1 = 0.6 + 0.3 * tf;
        let k2 = 0.1 * tf;
        let y = x.clone().mul(x.clone());
        let z = y.clone().div(y.add_scalar(1.0));
        x.mul_scalar(k1).add(z.mul_scalar(0.2)).sub_scalar(k2)
    }
}

/// max |a - b| / max(1, |b|) (NaN counts as infinitely wrong unless both are NaN).
pub fn max_rel_err(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    actual
        .iter()
        .zip(expected)
        .map(|(&a, &b)| {
            if a.is_nan() && b.is_nan() || a == b {
                0.0
            } else {
                let e = (a - b).abs() / b.abs().max(1.0);
                if e.is_nan() { f32::INFINITY } else { e }
            }
        })
        .fold(0.0, f32::max)
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}
