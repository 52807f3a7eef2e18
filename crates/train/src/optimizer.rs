//! AdamW (Loshchilov & Hutter; PyTorch's formulation, decoupled weight decay) over named
//! parameters, global-norm gradient clipping, and the learning-rate schedule. The state is
//! keyed by parameter name so a checkpoint restores it exactly.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use ldmscale_kernels::optim::{AdamWStep, adamw_update, scale, sum_squares};

use crate::params::{self, Named, from_values, into_values, on_flex, read_values};

/// AdamW hyper-parameters (PyTorch defaults except weight decay, which diffusers' scripts set).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// AdamW moments for every parameter, created on first use.
#[derive(Debug, Default)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Updates taken so far (bias correction uses it).
    pub step: u64,
    /// First moments.
    pub m: Named,
    /// Second moments.
    pub v: Named,
}

impl AdamW {
    /// Fresh state.
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// One optimizer step over `module`: advances the step counter and updates each parameter
    /// that has a gradient in `grads`; the others keep their values.
    pub fn step_module<M: Module>(&mut self, module: M, mut grads: Named, lr: f64) -> M {
        self.begin_step();
        params::update(module, &mut |name, p| match grads.remove(name) {
            Some(g) => self.update(name, p, g, lr),
            None => p,
        })
    }

    /// Advances the step counter; call once per optimizer step before [`AdamW::update`].
    pub fn begin_step(&mut self) {
        self.step += 1;
    }

    /// The new value of parameter `name` given its value and gradient, in PyTorch's order:
    /// decay, moments, bias-corrected step.
    pub fn update(&mut self, name: &str, param: Tensor<1>, grad: Tensor<1>, lr: f64) -> Tensor<1> {
        let c = &self.config;
        let t = self.step as i32;
        if on_flex(&param) && on_flex(&grad) {
            let step = AdamWStep {
                lr,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                weight_decay: c.weight_decay,
                bias1: 1.0 - c.beta1.powi(t),
                bias2: 1.0 - c.beta2.powi(t),
            };
            let mut p = into_values(param);
            let grad = into_values(grad);
            let (m, v) = (self.m.remove(name), self.v.remove(name));
            let fresh = m.is_none() || v.is_none();
            let (mut m, mut v) = match (m, v) {
                (Some(m), Some(v)) => (into_values(m), into_values(v)),
                _ => (vec![0.0; p.len()], vec![0.0; p.len()]),
            };
            adamw_update(&mut p, &grad, &mut m, &mut v, fresh, step);
            self.m.insert(name.to_string(), from_values(m));
            self.v.insert(name.to_string(), from_values(v));
            return from_values(p);
        }
        let param = param.mul_scalar(1.0 - lr * c.weight_decay);
        let m = match self.m.remove(name) {
            Some(m) => m
                .mul_scalar(c.beta1)
                .add(grad.clone().mul_scalar(1.0 - c.beta1)),
            None => grad.clone().mul_scalar(1.0 - c.beta1),
        };
        let g2 = grad.clone().mul(grad);
        let v = match self.v.remove(name) {
            Some(v) => v.mul_scalar(c.beta2).add(g2.mul_scalar(1.0 - c.beta2)),
            None => g2.mul_scalar(1.0 - c.beta2),
        };
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        let denom = v.clone().div_scalar(bias2).sqrt().add_scalar(c.eps);
        let out = param.sub(m.clone().div(denom).mul_scalar(lr / bias1));
        self.m.insert(name.to_string(), m);
        self.v.insert(name.to_string(), v);
        out
    }
}

/// Scales all gradients so their global L2 norm is at most `max_norm` (PyTorch's
/// clip_grad_norm_); returns the norm before clipping.
pub fn clip_global_norm(grads: &mut Named, max_norm: Option<f64>) -> f64 {
    let mut total = 0.0;
    // Elsewhere (a GPU) one read for all parameters, not a synchronisation per parameter.
    let mut on_device = Vec::new();
    for g in grads.values() {
        if on_flex(g) {
            total += read_values(g, sum_squares);
        } else {
            on_device.push(g.clone().powi_scalar(2).sum());
        }
    }
    if !on_device.is_empty() {
        let sums = Tensor::cat(on_device, 0).into_data().convert::<f32>();
        total += sums
            .as_slice::<f32>()
            .expect("f32 sums")
            .iter()
            .map(|&s| s as f64)
            .sum::<f64>();
    }
    let total = total.sqrt();
    if let Some(max) = max_norm {
        let factor = max / (total + 1e-6);
        if factor < 1.0 {
            for g in grads.values_mut() {
                *g = if on_flex(g) {
                    let mut values = into_values(g.clone());
                    scale(&mut values, factor);
                    from_values(values)
                } else {
                    g.clone().mul_scalar(factor)
                };
            }
        }
    }
    total
}

/// Learning-rate schedule: linear warmup, then constant or cosine decay to zero.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Constant after warmup (the paper's recipe).
    Constant,
    /// Half-cosine from the peak to zero at the last step.
    Cosine,
}

/// The learning rate at optimizer step `step` (1-based) of `total`.
pub fn learning_rate(peak: f64, schedule: &LrSchedule, warmup: u64, step: u64, total: u64) -> f64 {
    if warmup > 0 && step <= warmup {
        return peak * step as f64 / warmup as f64;
    }
    match schedule {
        LrSchedule::Constant => peak,
        LrSchedule::Cosine => {
            let span = total.saturating_sub(warmup).max(1) as f64;
            let progress = (step - warmup) as f64 / span;
            peak * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
        }
    }
}

/// Metadata to restore the scalar part of the state.
pub fn state_metadata(adam: &AdamW) -> BTreeMap<String, String> {
    BTreeMap::from([("adamw_step".to_string(), adam.step.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t(v: &[f32]) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Device::flex())
    }

    fn values(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn adamw_matches_the_pytorch_formula() {
        // torch.optim.AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01), two steps of
        // grad 0.5 then -1.0 from p = 1.0, worked out by hand in f64.
        let mut opt = AdamW::new(AdamWConfig::default());
        let mut p = t(&[1.0]);
        let (lr, wd, b1, b2, eps) = (0.1f64, 0.01, 0.9, 0.999, 1e-8);
        let (mut pe, mut m, mut v) = (1.0f64, 0.0, 0.0);
        for (step, g) in [(1, 0.5f64), (2, -1.0)] {
            opt.begin_step();
            p = opt.update("w", p, t(&[g as f32]), lr);
            pe *= 1.0 - lr * wd;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let mh = m / (1.0 - b1.powi(step));
            let vh = (v / (1.0 - b2.powi(step))).sqrt();
            pe -= lr * mh / (vh + eps);
        }
        assert!((values(p)[0] as f64 - pe).abs() < 1e-6);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = Named::from([("a".into(), t(&[3.0])), ("b".into(), t(&[4.0]))]);
        let norm = clip_global_norm(&mut g, Some(1.0));
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((values(g["a"].clone())[0] - 0.6).abs() < 1e-5);
        let mut g = Named::from([("a".into(), t(&[0.3]))]);
        clip_global_norm(&mut g, Some(1.0));
        assert_eq!(values(g["a"].clone()), vec![0.3]);
    }

    #[test]
    fn warmup_then_schedules() {
        assert_eq!(learning_rate(1.0, &LrSchedule::Constant, 10, 5, 100), 0.5);
        assert_eq!(learning_rate(1.0, &LrSchedule::Constant, 10, 50, 100), 1.0);
        assert!((learning_rate(1.0, &LrSchedule::Cosine, 0, 50, 100) - 0.5).abs() < 1e-12);
        assert!(learning_rate(1.0, &LrSchedule::Cosine, 0, 100, 100).abs() < 1e-12);
    }
}
