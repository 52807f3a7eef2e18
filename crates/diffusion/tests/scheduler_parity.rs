//! Parity with diffusers 0.42.1 on the fixtures of tools/fixtures/make_scheduler_fixtures.py:
//! schedules, timesteps, DPM sigmas and whole sampling trajectories under an analytic denoiser.
//!
//! Bound: |rust - diffusers| <= 1e-5 * max(1, |diffusers|) everywhere. Run with `--nocapture`
//! to see the worst error per group (typically ~1e-6; worst 9.4e-6 for DDIM on the linear
//! schedule with trailing spacing, whose first step divides by sqrt(alphabar_999) = 0.0064 and
//! so amplifies torch's inexact f32 sqrt).
//!
//! Stricter diagnostic: fixtures written with `make_scheduler_fixtures.py --exact-scalar-math
//! --out DIR` replace torch's sqrt/exp/log by correctly rounded ones; run these tests with
//! `LDMSCALE_SCHEDULER_FIXTURES=DIR` and DDIM/DDPM trajectories agree bit for bit, DPM-Solver to
//! < 5e-7, which shows the f32 operation order matches diffusers.

mod common;

use burn::tensor::{Device, Tensor};
use common::{Analytic, Fixtures, TOL};
use ldmscale_diffusion::timesteps::{ddim_timesteps, dpm_solver_timesteps};
use ldmscale_diffusion::{
    DpmSolverSampler, NoiseQueue, NoiseSchedule, SamplerKind, SchedulerConfig, StepEvent,
    TimestepSpacing, sample,
};
use ldmscale_testkit::{max_rel_err, values};
use serde_json::Value;

#[test]
fn schedules_match_diffusers() {
    let fx = Fixtures::load();
    let configs = fx.manifest["configs"].as_object().unwrap();
    for name in configs.keys() {
        let config = SchedulerConfig::from_json(&fx.config_json(name, &Value::Null)).unwrap();
        let schedule = NoiseSchedule::new(&config).unwrap();
        let (_, betas) = fx.f32(&format!("schedule/{name}/betas"));
        let (_, alphas) = fx.f32(&format!("schedule/{name}/alphas_cumprod"));
        let eb = max_rel_err(&schedule.betas, &betas);
        let ea = max_rel_err(&schedule.alphas_cumprod, &alphas);
        println!("schedule {name:14} betas err {eb:.2e}  alphas_cumprod err {ea:.2e}");
        // torch.linspace and cumprod are reproduced bit for bit (allow an ulp for other CPUs);
        // the zero-terminal-SNR rescale goes through torch's sqrt, which is not correctly
        // rounded (up to 0.75 ulp), so it only meets the general bound.
        let bound = if config.rescale_betas_zero_snr {
            TOL
        } else {
            1e-7
        };
        assert!(
            eb <= bound && ea <= bound,
            "{name}: betas {eb}, alphas_cumprod {ea}"
        );
    }
}

#[test]
fn timesteps_match_diffusers() {
    let fx = Fixtures::load();
    let cases = fx.manifest["timestep_cases"].as_array().unwrap();
    for case in cases {
        let config = SchedulerConfig::from_json(
            &fx.config_json(case["config"].as_str().unwrap(), &Value::Null),
        )
        .unwrap();
        let spacing: TimestepSpacing =
            serde_json::from_value(case["timestep_spacing"].clone()).unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let t = config.num_train_timesteps;
        let got = match case["sampler"].as_str().unwrap() {
            "ddim" => ddim_timesteps(spacing, t, steps, config.steps_offset),
            _ => dpm_solver_timesteps(spacing, t, t, steps, config.steps_offset),
        }
        .unwrap();
        let want: Vec<i64> = serde_json::from_value(case["timesteps"].clone()).unwrap();
        assert_eq!(got, want, "timesteps of {case}");
    }
    println!("{} timestep cases identical", cases.len());
}

/// Runs every trajectory case and checks timesteps (exactly), sigmas and latents.
#[test]
fn trajectories_match_diffusers() {
    let fx = Fixtures::load();
    let device = Device::flex();
    let x_t = fx.tensor4("x_T", &device);
    let (bank_shape, bank) = fx.f32("noise_bank");
    let per = bank.len() / bank_shape[0];
    let shape: [usize; 4] = bank_shape[1..].try_into().unwrap();
    let noise_bank: Vec<Tensor<4>> = bank
        .chunks(per)
        .map(|c| Tensor::from_data(burn::tensor::TensorData::new(c.to_vec(), shape), &device))
        .collect();

    let mut worst_overall = 0.0f32;
    let mut failures = Vec::new();
    let mut cases = 0;
    for group in fx.manifest["groups"].as_array().unwrap() {
        let name = group["group"].as_str().unwrap();
        let config = SchedulerConfig::from_json(&fx.config_json(
            group["config"].as_str().unwrap(),
            &group["timestep_spacing"],
        ))
        .unwrap();
        let kind: SamplerKind = serde_json::from_value(group["sampler"].clone()).unwrap();
        let all_ts = fx.i64(&format!("ts/{name}"));
        let (_, all_traj) = fx.f32(&format!("traj/{name}"));
        let all_sigmas = match kind {
            SamplerKind::DpmSolver(_) => Some(fx.f32(&format!("sigmas/{name}")).1),
            _ => None,
        };
        let (mut ts_off, mut traj_off, mut sig_off) = (0, 0, 0);
        let mut worst = 0.0f32;
        for (i, steps) in group["steps"].as_array().unwrap().iter().enumerate() {
            let steps = steps.as_u64().unwrap() as usize;
            let n = group["num_timesteps"][i].as_u64().unwrap() as usize;
            let full = group["full_trajectory"][i].as_bool().unwrap();
            let case = format!("{name}/{steps}");
            cases += 1;

            let mut sampler = kind.build(&config, steps).unwrap();
            assert_eq!(
                sampler.timesteps(),
                &all_ts[ts_off..ts_off + n],
                "timesteps of {case}"
            );
            if let (SamplerKind::DpmSolver(o), Some(sig)) = (&kind, &all_sigmas) {
                let dpm = DpmSolverSampler::new(&config, *o, steps).unwrap();
                let e = max_rel_err(dpm.sigmas(), &sig[sig_off..sig_off + n + 1]);
                assert!(e <= 1e-6, "sigmas of {case}: err {e}");
                sig_off += n + 1;
            }

            let mut noise = NoiseQueue::new(noise_bank.iter().cloned());
            let mut trajectory = Vec::new();
            let mut record = |e: &StepEvent<'_>| trajectory.push(values(e.sample.clone()));
            let out = sample(
                sampler.as_mut(),
                &mut Analytic,
                x_t.clone(),
                &mut noise,
                Some(&mut record),
            )
            .unwrap();
            assert_eq!(out.steps, n);
            assert_eq!(out.evaluations, n, "{case}: one evaluation per step");
            let rows = if full { n } else { 1 };
            let got: Vec<f32> = if full {
                trajectory.concat()
            } else {
                values(out.latents)
            };
            let want = &all_traj[traj_off * per..(traj_off + rows) * per];
            let e = max_rel_err(&got, want);
            if e.is_nan() || e > TOL {
                failures.push(format!("{case}: err {e:.3e}"));
            }
            worst = worst.max(e);
            ts_off += n;
            traj_off += rows;
        }
        assert_eq!(ts_off, all_ts.len(), "{name}: all timesteps consumed");
        println!("{name:40} worst err {worst:.2e}");
        worst_overall = worst_overall.max(worst);
    }
    println!("{cases} trajectory cases, worst err {worst_overall:.2e}");
    assert!(
        failures.is_empty(),
        "cases over {TOL}:\n{}",
        failures.join("\n")
    );
}
