//! Shared helpers for the parity tests: the scheduler fixtures and the analytic denoiser (error
//! measures are `ldmscale_testkit`'s).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_diffusion::Denoiser;
use ldmscale_testkit::{RawTensor, fixture_dir, read_json, read_safetensors};
use safetensors::Dtype;
use serde_json::Value;

/// Parity bound from the project spec: |a - b| <= TOL * max(1, |b|).
pub const TOL: f32 = 1e-5;

/// `fixtures/schedulers/` loaded into memory.
pub struct Fixtures {
    tensors: BTreeMap<String, RawTensor>,
    pub manifest: Value,
}

impl Fixtures {
    /// Loads `fixtures/schedulers/`, or the directory in `LDMSCALE_SCHEDULER_FIXTURES` (e.g. one
    /// written with the script's `--exact-scalar-math` diagnostic).
    pub fn load() -> Self {
        let dir = std::env::var_os("LDMSCALE_SCHEDULER_FIXTURES")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| fixture_dir("schedulers"));
        let file = dir.join("schedulers.safetensors");
        assert!(
            file.exists(),
            "{} is missing (run tools/fixtures/make_scheduler_fixtures.py)",
            file.display()
        );
        Self {
            tensors: read_safetensors(file),
            manifest: read_json(dir.join("manifest.json")),
        }
    }

    fn tensor(&self, name: &str) -> &RawTensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("no fixture tensor {name}"))
    }

    /// An f32 tensor as (shape, values).
    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let t = self.tensor(name);
        assert_eq!(t.dtype, Dtype::F32, "{name} is not f32");
        (t.shape.clone(), t.f32())
    }

    /// An i64 tensor's values.
    pub fn i64(&self, name: &str) -> Vec<i64> {
        let t = self.tensor(name);
        assert_eq!(t.dtype, Dtype::I64, "{name} is not i64");
        t.i64()
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
