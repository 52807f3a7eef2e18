//! Classifier-free guidance: one batched call `[uncond; cond]` when w > 1, a single conditional
//! call otherwise, and evaluation counts that follow.

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_diffusion::guidance::apply_guidance;
use ldmscale_diffusion::{
    Cfg, ConditionalModel, DdimOptions, Denoiser, NoNoise, SamplerKind, SchedulerConfig, sample,
};
use ldmscale_testkit::values;

/// Output = x + (per-sample mean of the context); records what it was called with.
#[derive(Default)]
struct Probe {
    calls: Vec<(usize, Vec<f32>, Vec<f32>)>,
}

impl ConditionalModel for Probe {
    fn forward(&mut self, x: Tensor<4>, timesteps: Tensor<1>, context: &Tensor<3>) -> Tensor<4> {
        let [n, l, d] = context.dims();
        let ctx_mean = context
            .clone()
            .reshape([n, l * d])
            .mean_dim(1)
            .reshape([n, 1, 1, 1]);
        let means = values(ctx_mean.clone());
        let ts = values(timesteps);
        self.calls.push((x.dims()[0], ts, means));
        x.add(ctx_mean)
    }
}

fn contexts(device: &Device) -> (Tensor<3>, Tensor<3>) {
    let cond = Tensor::from_data(
        TensorData::new(vec![1.0f32, 1.0, 2.0, 2.0], [2, 1, 2]),
        device,
    );
    let uncond = Tensor::from_data(TensorData::new(vec![-1.0f32, -1.0], [1, 1, 2]), device);
    (cond, uncond)
}

#[test]
fn guidance_runs_one_batched_call_uncond_first() {
    let device = Device::flex();
    let (cond, uncond) = contexts(&device);
    let mut cfg = Cfg::new(Probe::default(), cond, uncond, 7.5).unwrap();
    assert!(cfg.is_guided());
    assert_eq!(cfg.evaluations_per_call(), 2);
    let x = Tensor::<4>::zeros([2, 1, 2, 2], &device);
    let out = cfg.predict(x, &[501.0, 501.0]);
    let probe = cfg.into_inner();
    assert_eq!(probe.calls.len(), 1, "one model call per step");
    let (batch, ts, means) = &probe.calls[0];
    assert_eq!(*batch, 4);
    assert_eq!(ts, &vec![501.0; 4]);
    assert_eq!(
        means,
        &vec![-1.0, -1.0, 1.0, 2.0],
        "[uncond; cond] along the batch"
    );
    // u = -1, c = 1 or 2: u + 7.5 (c - u).
    let got = values(out);
    assert_eq!(got[..4], [14.0; 4]);
    assert_eq!(got[4..], [21.5; 4]);
}

#[test]
fn scale_at_most_one_is_a_single_conditional_call() {
    let device = Device::flex();
    for w in [1.0, 0.0] {
        let (cond, uncond) = contexts(&device);
        let mut cfg = Cfg::new(Probe::default(), cond, uncond, w).unwrap();
        assert!(!cfg.is_guided());
        assert_eq!(cfg.evaluations_per_call(), 1);
        let out = cfg.predict(Tensor::<4>::zeros([2, 1, 2, 2], &device), &[3.0, 3.0]);
        let probe = cfg.into_inner();
        assert_eq!(probe.calls.len(), 1);
        assert_eq!(probe.calls[0].0, 2, "conditional half only");
        assert_eq!(probe.calls[0].2, vec![1.0, 2.0]);
        let got = values(out);
        assert_eq!(got, [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]);
    }
}

#[test]
fn sampling_cost_counts_both_halves() {
    let device = Device::flex();
    let config = SchedulerConfig::sd();
    for (w, per_step) in [(7.5, 2), (1.0, 1)] {
        let (cond, uncond) = contexts(&device);
        let mut cfg = Cfg::new(Probe::default(), cond, uncond, w).unwrap();
        let mut sampler = SamplerKind::Ddim(DdimOptions::default())
            .build(&config, 10)
            .unwrap();
        let x = Tensor::<4>::zeros([2, 1, 2, 2], &device);
        let out = sample(sampler.as_mut(), &mut cfg, x, &mut NoNoise, None).unwrap();
        assert_eq!(out.steps, 10);
        assert_eq!(out.evaluations, 10 * per_step, "w = {w}");
        assert_eq!(
            cfg.into_inner().calls.len(),
            10,
            "one batched call per step"
        );
    }
}

#[test]
fn guidance_formula_and_rescale_extremes() {
    let device = Device::flex();
    let u = Tensor::<4>::from_data(
        TensorData::new(vec![0.0f32, 1.0, 2.0, 3.0], [1, 1, 2, 2]),
        &device,
    );
    let c = u.clone().mul_scalar(2.0);
    let g = apply_guidance(u.clone(), c.clone(), 1.0);
    assert_eq!(
        values(g),
        values(c.clone()),
        "w = 1 gives the conditional output"
    );
    // phi = 1 rescales the guided output to the conditional std exactly.
    let guided = apply_guidance(u, c.clone(), 5.0);
    let r = ldmscale_diffusion::guidance::rescale_noise_cfg(guided, c.clone(), 1.0);
    let std = |t: Tensor<4>| values(t.reshape([1, 4]).var(1).sqrt())[0];
    assert!((std(r) - std(c)).abs() < 1e-5);
}

#[test]
fn bad_contexts_and_rescale_are_errors() {
    let device = Device::flex();
    let cond = Tensor::<3>::zeros([2, 3, 4], &device);
    let err = Cfg::new(
        Probe::default(),
        cond.clone(),
        Tensor::zeros([2, 3, 5], &device),
        7.5,
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    let err = Cfg::new(
        Probe::default(),
        cond.clone(),
        Tensor::zeros([3, 3, 4], &device),
        7.5,
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    let cfg = Cfg::new(
        Probe::default(),
        cond.clone(),
        Tensor::zeros([1, 3, 4], &device),
        7.5,
    )
    .unwrap();
    let err = cfg.with_rescale(1.5).unwrap_err();
    assert!(err.to_string().contains("guidance_rescale"), "{err}");
    let err = Cfg::new(
        Probe::default(),
        cond,
        Tensor::zeros([1, 3, 4], &device),
        f32::NAN,
    )
    .unwrap_err();
    assert!(err.to_string().contains("guidance_scale"), "{err}");
}
