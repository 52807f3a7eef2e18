//! Training objective behaviour: targets per prediction type, loss weighting, text dropout.

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_diffusion::objective::{drop_text, sample_timesteps, weighted_mse};
use ldmscale_diffusion::{DiffusionObjective, NoiseSchedule, PredictionType, SchedulerConfig};
use ldmscale_testkit::values;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn ramp(n: usize, scale: f32, device: &Device) -> Tensor<4> {
    let v: Vec<f32> = (0..n)
        .map(|i| (i as f32 - n as f32 / 2.0) * scale)
        .collect();
    Tensor::from_data(TensorData::new(v, [2, 1, n / 4, 2]), device)
}

#[test]
fn targets_let_the_prediction_recover_x0_and_noise() {
    let device = Device::flex();
    let schedule = NoiseSchedule::new(&SchedulerConfig::sd()).unwrap();
    let x0 = ramp(16, 0.1, &device);
    let noise = ramp(16, -0.07, &device).add_scalar(0.3);
    let t = [10usize, 900];
    let alphas: Vec<f32> = t.iter().map(|&t| schedule.alphas_cumprod[t]).collect();
    for prediction in [
        PredictionType::Epsilon,
        PredictionType::VPrediction,
        PredictionType::Sample,
    ] {
        let obj = DiffusionObjective::new(schedule.clone(), prediction, None).unwrap();
        let pair = obj.pair(x0.clone(), noise.clone(), &t).unwrap();
        // A perfect model outputs the target; converting it back must give x0 and the noise.
        let (x0_hat, eps_hat) = prediction
            .x0_and_eps_per_sample(pair.noisy.clone(), pair.target.clone(), &alphas)
            .unwrap();
        for (a, b) in values(x0_hat).iter().zip(values(x0.clone())) {
            assert!((a - b).abs() < 1e-4, "{prediction:?}: x0 {a} vs {b}");
        }
        for (a, b) in values(eps_hat).iter().zip(values(noise.clone())) {
            assert!((a - b).abs() < 1e-4, "{prediction:?}: eps {a} vs {b}");
        }
        let loss = obj.loss(pair.target.clone(), &pair).unwrap();
        assert_eq!(values(loss), vec![0.0]);
    }
}

#[test]
fn min_snr_weights_and_weighted_loss() {
    let device = Device::flex();
    let schedule = NoiseSchedule::new(&SchedulerConfig::sd()).unwrap();
    let obj = DiffusionObjective::new(schedule, PredictionType::Epsilon, Some(5.0)).unwrap();
    let x0 = Tensor::<4>::zeros([2, 1, 2, 2], &device);
    let pair = obj.pair(x0.clone(), x0.clone(), &[0, 999]).unwrap();
    // Low noise (high SNR) is capped at gamma / snr < 1; high noise keeps weight 1.
    assert!(pair.weights[0] < 0.01, "{:?}", pair.weights);
    assert_eq!(pair.weights[1], 1.0);
    let pred = Tensor::<4>::from_data(
        TensorData::new(
            vec![1.0f32, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0],
            [2, 1, 2, 2],
        ),
        &device,
    );
    let loss = weighted_mse(pred, x0, &[0.5, 0.25]).unwrap();
    // mean(0.5 * 1, 0.25 * 4) = 0.75
    assert_eq!(values(loss), vec![0.75]);
    assert!(
        DiffusionObjective::new(obj.schedule.clone(), PredictionType::Epsilon, Some(0.0)).is_err()
    );
}

#[test]
fn text_dropout_is_seeded_and_uses_the_null_context() {
    let device = Device::flex();
    let ctx = Tensor::<3>::ones([64, 2, 3], &device);
    let null = Tensor::<3>::zeros([1, 2, 3], &device);
    let run = |seed| drop_text(ctx.clone(), &null, 0.25, &mut StdRng::seed_from_u64(seed)).unwrap();
    let (a, dropped) = run(1);
    let (b, again) = run(1);
    assert_eq!(dropped, again);
    let va = values(a);
    assert_eq!(va, values(b));
    let n = dropped.iter().filter(|&&d| d).count();
    assert!((6..=26).contains(&n), "{n} of 64 dropped at p = 0.25");
    for (i, &d) in dropped.iter().enumerate() {
        let row = &va[i * 6..(i + 1) * 6];
        assert!(
            row.iter().all(|&v| v == if d { 0.0 } else { 1.0 }),
            "row {i}"
        );
    }
    let (_, none) = drop_text(ctx.clone(), &null, 0.0, &mut StdRng::seed_from_u64(2)).unwrap();
    assert!(none.iter().all(|&d| !d));
    let (_, all) = drop_text(ctx.clone(), &null, 1.0, &mut StdRng::seed_from_u64(2)).unwrap();
    assert!(all.iter().all(|&d| d));
    let err = drop_text(ctx, &null, 1.5, &mut StdRng::seed_from_u64(2)).unwrap_err();
    assert!(err.to_string().contains("text_dropout"), "{err}");
}

#[test]
fn timesteps_are_uniform_in_range() {
    let t = sample_timesteps(&mut StdRng::seed_from_u64(0), 4096, 1000);
    assert!(t.iter().all(|&t| t < 1000));
    let mean = t.iter().sum::<usize>() as f64 / t.len() as f64;
    assert!((mean - 499.5).abs() < 15.0, "mean {mean}");
}
