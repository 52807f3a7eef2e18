//! Behaviour of the samplers beyond parity: convergence on a Gaussian data distribution with
//! its exact denoiser, evaluation counting, noise handling and configuration errors.

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_diffusion::DdpmVariance;
use ldmscale_diffusion::{
    DdimOptions, DdimSampler, DdpmOptions, Denoiser, DiffusionError, DpmSolverOptions, FnDenoiser,
    NoNoise, NoiseQueue, NoiseSchedule, NoiseSource, Sampler, SamplerKind, SchedulerConfig,
    SeededNoise, TimestepSpacing, sample,
};
use ldmscale_testkit::values;

const MU: f32 = 0.5;
const SD: f32 = 0.3;

/// The Bayes-optimal eps predictor for data x0 ~ N(MU, SD^2) per element:
/// E[eps | x_t] = sqrt(1-a) (x_t - sqrt(a) MU) / (a SD^2 + 1 - a).
struct GaussianDenoiser {
    alphas_cumprod: Vec<f32>,
}

impl Denoiser for GaussianDenoiser {
    fn predict(&mut self, x: Tensor<4>, timesteps: &[f32]) -> Tensor<4> {
        let a = self.alphas_cumprod[timesteps[0] as usize];
        let var = a * SD * SD + 1.0 - a;
        x.sub_scalar(a.sqrt() * MU)
            .mul_scalar((1.0 - a).sqrt() / var)
    }
}

fn mean_std(t: Tensor<4>) -> (f32, f32) {
    let v: Vec<f32> = values(t);
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean as f32, var.sqrt() as f32)
}

fn gaussian_config() -> SchedulerConfig {
    // Trailing spacing reaches t = 0 and allows up to T steps.
    SchedulerConfig {
        timestep_spacing: Some(TimestepSpacing::Trailing),
        ..SchedulerConfig::sd()
    }
}

/// Draws from the exact marginal at the sampler's first timestep and runs it to the end.
/// Returns the initial and final latents and the evaluation count.
fn run_gaussian(kind: &SamplerKind, steps: usize) -> (Tensor<4>, Tensor<4>, usize) {
    let device = Device::flex();
    let config = gaussian_config();
    let schedule = NoiseSchedule::new(&config).unwrap();
    let mut sampler = kind.build(&config, steps).unwrap();
    let a0 = schedule.alphas_cumprod[sampler.timesteps()[0] as usize];
    let mut noise = SeededNoise::new(7);
    let x_t = noise
        .noise([512, 1, 4, 4], &device)
        .unwrap()
        .mul_scalar((a0 * SD * SD + 1.0 - a0).sqrt())
        .add_scalar(a0.sqrt() * MU);
    let mut denoiser = GaussianDenoiser {
        alphas_cumprod: schedule.alphas_cumprod.clone(),
    };
    let out = sample(
        sampler.as_mut(),
        &mut denoiser,
        x_t.clone(),
        &mut noise,
        None,
    )
    .unwrap();
    (x_t, out.latents, out.evaluations)
}

/// On Gaussian data with the exact denoiser, one DDIM step maps the centred sample
/// u = x - sqrt(a) MU linearly: u' = u (sqrt(a a') SD^2 + sqrt((1-a)(1-a'))) / (a SD^2 + 1 - a).
/// The whole run must therefore equal the product of these factors, element by element.
#[test]
fn ddim_is_the_exact_linear_map_on_gaussian_data() {
    let config = gaussian_config();
    let schedule = NoiseSchedule::new(&config).unwrap();
    let ac = |t: i64| schedule.alphas_cumprod[t as usize] as f64;
    let (s2, mu) = ((SD * SD) as f64, MU as f64);
    for steps in [1, 4, 10, 50] {
        let kind = SamplerKind::Ddim(DdimOptions::default());
        let sampler = kind.build(&config, steps).unwrap();
        let ts = sampler.timesteps().to_vec();
        let ratio = 1000 / steps as i64;
        let mut factor = 1.0f64;
        let mut a_final = 0.0;
        for &t in &ts {
            let a = ac(t);
            let prev = t - ratio;
            let a_prev = if prev >= 0 { ac(prev) } else { ac(0) }; // set_alpha_to_one = false
            factor *= ((a * a_prev).sqrt() * s2 + ((1.0 - a) * (1.0 - a_prev)).sqrt())
                / (a * s2 + 1.0 - a);
            a_final = a_prev;
        }
        let (x0, x1, _) = run_gaussian(&kind, steps);
        let a0 = ac(ts[0]);
        let x0: Vec<f32> = values(x0);
        let x1: Vec<f32> = values(x1);
        let worst = x0
            .iter()
            .zip(&x1)
            .map(|(&a, &b)| {
                let want = a_final.sqrt() * mu + factor * (a as f64 - a0.sqrt() * mu);
                (b as f64 - want).abs()
            })
            .fold(0.0, f64::max);
        println!("ddim {steps:3} steps: factor {factor:.5}, worst deviation {worst:.2e}");
        assert!(worst < 2e-5, "ddim {steps}: deviation {worst}");
    }
}

/// With the exact denoiser and many steps every sampler must reproduce N(MU, SD^2). Exceptions
/// are theory, not bugs: few-step runs end on the posterior mean E[x0 | x_t] of their last
/// timestep, which has less variance than the data, and DDPM's `fixed_small` variance (like
/// DDIM with eta = 1) ignores the uncertainty of x0, so it is biased low for SD < 1 while
/// `fixed_large` errs high.
#[test]
fn samplers_converge_to_a_gaussian_with_its_exact_denoiser() {
    let ddpm_small = SamplerKind::Ddpm(DdpmOptions::default());
    let ddpm_large = SamplerKind::Ddpm(DdpmOptions {
        variance_type: DdpmVariance::FixedLarge,
    });
    // (name, sampler, steps, allowed |std / SD - 1|; the std estimate of 8192 values has ~0.8%
    // sampling error).
    let cases = [
        (
            "ddim 1000",
            SamplerKind::Ddim(DdimOptions::default()),
            1000,
            0.015,
        ),
        (
            "dpm++ 2m 500",
            SamplerKind::DpmSolver(DpmSolverOptions::dpm_pp_2m()),
            500,
            0.015,
        ),
        (
            "dpm++ 3m 500",
            SamplerKind::DpmSolver(DpmSolverOptions::dpm_pp_3m()),
            500,
            0.015,
        ),
        (
            "dpm++ 2m sde 500",
            SamplerKind::DpmSolver(DpmSolverOptions::dpm_pp_2m_sde()),
            500,
            0.025,
        ),
    ];
    let stats = |name: &str, kind: &SamplerKind, steps: usize| {
        let (_, x, evals) = run_gaussian(kind, steps);
        assert_eq!(evals, steps, "{name}: one evaluation per step");
        let (m, s) = mean_std(x);
        println!("{name:18} mean {m:.4} (want {MU})  std {s:.4} (want {SD})");
        assert!((m - MU).abs() <= 0.01, "{name}: mean {m}");
        s
    };
    for (name, kind, steps, tol) in &cases {
        let s = stats(name, kind, *steps);
        assert!((s / SD - 1.0).abs() <= *tol, "{name}: std {s}");
    }
    let small = stats("ddpm small 1000", &ddpm_small, 1000);
    let eta1 = stats(
        "ddim eta=1 1000",
        &SamplerKind::Ddim(DdimOptions {
            eta: 1.0,
            ..Default::default()
        }),
        1000,
    );
    let large = stats("ddpm large 1000", &ddpm_large, 1000);
    assert!(
        small < large && small / SD > 0.95,
        "fixed_small {small}, fixed_large {large}"
    );
    assert!(
        (eta1 / small - 1.0).abs() < 0.015,
        "DDIM eta=1 {eta1} vs DDPM {small}"
    );
    // Few steps: the run ends on E[x0 | x_t] at the last timestep, whose std is known.
    let (_, x, _) = run_gaussian(&SamplerKind::DpmSolver(DpmSolverOptions::dpm_pp_2m()), 50);
    let a = NoiseSchedule::new(&gaussian_config())
        .unwrap()
        .alphas_cumprod[19];
    let posterior_var = SD * SD * (1.0 - a) / (a * SD * SD + 1.0 - a);
    let want = (SD * SD - posterior_var).sqrt();
    let (_, s) = mean_std(x);
    println!("dpm++ 2m 50 std {s:.4}, std of E[x0 | x_19] {want:.4}");
    assert!(
        (s / want - 1.0).abs() < 0.015,
        "dpm++ 2m 50: std {s}, want {want}"
    );
}

/// Counts calls and remembers the timesteps it saw.
struct Recorder {
    calls: usize,
    seen: Vec<f32>,
    cost: usize,
}

impl Denoiser for Recorder {
    fn predict(&mut self, x: Tensor<4>, timesteps: &[f32]) -> Tensor<4> {
        self.calls += 1;
        assert_eq!(timesteps.len(), x.dims()[0], "one timestep per sample");
        self.seen.push(timesteps[0]);
        x.mul_scalar(0.1)
    }

    fn evaluations_per_call(&self) -> usize {
        self.cost
    }
}

#[test]
fn evaluations_are_steps_times_cost_per_call() {
    let device = Device::flex();
    let config = SchedulerConfig::sd();
    for cost in [1, 2] {
        let mut sampler = DdimSampler::new(&config, DdimOptions::default(), 25).unwrap();
        let mut d = Recorder {
            calls: 0,
            seen: vec![],
            cost,
        };
        let x = Tensor::<4>::zeros([2, 4, 8, 8], &device);
        let out = sample(&mut sampler, &mut d, x, &mut NoNoise, None).unwrap();
        assert_eq!(d.calls, 25);
        assert_eq!(out.steps, 25);
        assert_eq!(out.evaluations, 25 * cost);
        let expected: Vec<f32> = sampler.timesteps().iter().map(|&t| t as f32).collect();
        assert_eq!(d.seen, expected);
    }
}

#[test]
fn samplers_are_reusable_and_observable() {
    let device = Device::flex();
    let config = SchedulerConfig::sd();
    let mut sampler = SamplerKind::DpmSolver(DpmSolverOptions::dpm_pp_3m())
        .build(&config, 8)
        .unwrap();
    let x = SeededNoise::new(1).noise([1, 4, 8, 8], &device).unwrap();
    let run = |sampler: &mut dyn Sampler| {
        let mut seen = Vec::new();
        let mut observer = |e: &ldmscale_diffusion::StepEvent<'_>| seen.push(e.timestep);
        let mut d = FnDenoiser(|x: Tensor<4>, _t: &[f32]| x.mul_scalar(0.5));
        let out = sample(
            sampler,
            &mut d,
            x.clone(),
            &mut NoNoise,
            Some(&mut observer),
        )
        .unwrap();
        (values(out.latents), seen)
    };
    let (first, seen) = run(sampler.as_mut());
    let (second, _) = run(sampler.as_mut());
    assert_eq!(first, second, "sample() resets multistep history");
    assert_eq!(seen, sampler.timesteps());
}

#[test]
fn stochastic_samplers_need_noise_and_use_it() {
    let device = Device::flex();
    let config = SchedulerConfig::sd();
    let x = Tensor::<4>::ones([1, 1, 2, 2], &device);
    let mut d = FnDenoiser(|x: Tensor<4>, _t: &[f32]| x.mul_scalar(0.5));
    for kind in [
        SamplerKind::Ddpm(DdpmOptions::default()),
        SamplerKind::Ddim(DdimOptions {
            eta: 0.5,
            ..Default::default()
        }),
        SamplerKind::DpmSolver(DpmSolverOptions::dpm_pp_2m_sde()),
    ] {
        let mut s = kind.build(&config, 4).unwrap();
        let err = sample(s.as_mut(), &mut d, x.clone(), &mut NoNoise, None).unwrap_err();
        assert!(
            matches!(err, DiffusionError::NoiseExhausted(_)),
            "{kind:?}: {err}"
        );
        // One noise tensor per step is enough for all of them; a short queue is an error.
        let zeros = || Tensor::<4>::zeros([1, 1, 2, 2], &device);
        let mut queue = NoiseQueue::new((0..4).map(|_| zeros()));
        sample(s.as_mut(), &mut d, x.clone(), &mut queue, None).unwrap();
        let mut short = NoiseQueue::new([zeros()]);
        assert!(sample(s.as_mut(), &mut d, x.clone(), &mut short, None).is_err());
        // Seeded noise is reproducible.
        let a = sample(
            s.as_mut(),
            &mut d,
            x.clone(),
            &mut SeededNoise::new(3),
            None,
        )
        .unwrap();
        let b = sample(
            s.as_mut(),
            &mut d,
            x.clone(),
            &mut SeededNoise::new(3),
            None,
        )
        .unwrap();
        assert_eq!(values(a.latents), values(b.latents));
    }
}

#[test]
fn sampler_kind_reads_run_configs() {
    let k: SamplerKind = serde_json::from_str(r#"{"sampler": "ddim", "eta": 0.3}"#).unwrap();
    assert_eq!(
        k,
        SamplerKind::Ddim(DdimOptions {
            eta: 0.3,
            ..Default::default()
        })
    );
    let k: SamplerKind = serde_json::from_str(
        r#"{"sampler": "dpm_solver", "solver_order": 3, "algorithm_type": "sde-dpmsolver++"}"#,
    )
    .unwrap();
    let SamplerKind::DpmSolver(o) = k else {
        panic!()
    };
    assert_eq!(o.solver_order, 3);
    let k: SamplerKind =
        serde_json::from_str(r#"{"sampler": "ddpm", "variance_type": "fixed_large"}"#).unwrap();
    assert!(matches!(k, SamplerKind::Ddpm(_)));
}

#[test]
fn dpm_solver_options_read_a_diffusers_config() {
    // diffusers writes the default lambda_min_clipped as Python's -Infinity.
    let json = r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver++",
        "solver_order": 2, "lambda_min_clipped": -Infinity, "use_karras_sigmas": false,
        "final_sigmas_type": "zero", "beta_schedule": "scaled_linear"}"#;
    let o = DpmSolverOptions::from_json(json).unwrap();
    assert_eq!(o, DpmSolverOptions::default());
    let err = DpmSolverOptions::from_json(r#"{"use_karras_sigmas": true}"#).unwrap_err();
    assert!(err.to_string().contains("use_karras_sigmas"), "{err}");
    let err = DpmSolverOptions::from_json(r#"{"solver_order": 4}"#).unwrap_err();
    assert!(err.to_string().contains("solver_order"), "{err}");
}

#[test]
fn bad_settings_are_errors_naming_the_field() {
    let config = SchedulerConfig::sd();
    let err = DdimSampler::new(
        &config,
        DdimOptions {
            eta: -1.0,
            ..Default::default()
        },
        10,
    )
    .unwrap_err();
    assert!(err.to_string().contains("eta"), "{err}");
    let err = SamplerKind::Ddim(DdimOptions::default())
        .build(&config, 0)
        .err()
        .unwrap();
    assert!(err.to_string().contains("num_inference_steps"), "{err}");
    let mut leading_1000 = config.clone();
    leading_1000.steps_offset = 1;
    let err = SamplerKind::Ddim(DdimOptions::default())
        .build(&leading_1000, 1000)
        .err()
        .unwrap();
    assert!(err.to_string().contains("steps_offset"), "{err}");
    let err = SchedulerConfig::from_json(r#"{"beta_schedule": "sigmoid"}"#).unwrap_err();
    assert!(err.to_string().contains("sigmoid"), "{err}");
}

#[test]
fn dpm_solver_steps_must_run_in_order() {
    let device = Device::flex();
    let config = SchedulerConfig::sd();
    let mut s = SamplerKind::DpmSolver(DpmSolverOptions::default())
        .build(&config, 5)
        .unwrap();
    let x = Tensor::<4>::from_data(TensorData::new(vec![0.5f32; 4], [1, 1, 2, 2]), &device);
    let err = s.step(2, x.clone(), x.clone(), &mut NoNoise).unwrap_err();
    assert!(err.to_string().contains("expected step 0"), "{err}");
}
