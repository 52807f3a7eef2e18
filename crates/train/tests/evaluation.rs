//! The training evaluator: its FID scorer is pluggable and sees the probe's samples, its grid
//! lands beside the run, and its log keeps one record per step across a resume.

use std::cell::RefCell;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_diffusion::SamplerId;
use ldmscale_model::init::seeded_init;
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig, UNet};
use ldmscale_pipeline::SamplingSpec;
use ldmscale_train::evaluation::{
    BoxError, FidProbe, FidScore, GridProbe, TrainingEvaluator, read_records,
};
use ldmscale_train::{Family, ModelConfig, TrainState};

/// A scorer that remembers the batches it saw and scores by their size.
struct Recording(RefCell<Vec<[usize; 4]>>);

impl FidScore for Recording {
    fn fid(&self, images: Tensor<4>) -> Result<f64, BoxError> {
        self.0.borrow_mut().push(images.dims());
        Ok(images.dims()[0] as f64)
    }
}

/// Text states `[n, 3, 16]`.
fn states(n: usize, device: &Device) -> Tensor<3> {
    let v: Vec<f32> = (0..n * 48).map(|i| (i % 7) as f32 / 7.0).collect();
    Tensor::from_data(TensorData::new(v, [n, 3, 16]), device)
}

fn state(step: u64) -> TrainState {
    TrainState {
        step,
        samples: 2 * step,
        adamw_step: step,
        train_gflops: step as f64,
        normalized_cost_x_iterations: step as f64 / 10.0,
        last_loss: 0.5,
        data_key: "test".into(),
    }
}

/// A KL-f2 autoencoder and a width-8 UNet over its 4x8x8 latents, untrained.
fn models(device: &Device) -> (AutoencoderKLConfig, AutoencoderKL, UNet) {
    let vae_config = AutoencoderKLConfig::small(2, 8);
    let vae = seeded_init(device, 0, || AutoencoderKL::new(&vae_config, device));
    let model = ModelConfig {
        family: Family::Small,
        width: 8,
        heads: 2,
        norm_groups: 4,
    };
    let unet = seeded_init(device, 0, || UNet::new(&model.unet(4, 8, 16), device));
    (vae_config, vae, unet)
}

fn evaluator<'a>(
    vae: &'a AutoencoderKL,
    vae_config: &'a AutoencoderKLConfig,
    score: &'a Recording,
    run: &Path,
    device: &Device,
) -> TrainingEvaluator<'a> {
    TrainingEvaluator {
        vae,
        vae_config,
        latent_shape: [4, 8, 8],
        spec: SamplingSpec {
            sampler: SamplerId::Ddim,
            steps: 2,
            cfg: 2.0,
            seed: 0,
        },
        null: states(1, device),
        fid: Some(FidProbe {
            prompts: states(5, device),
            score: Box::new(score),
        }),
        grid: Some(GridProbe {
            prompts: states(3, device),
            dir: run.join("eval"),
        }),
        log: run.join("eval.jsonl"),
    }
}

#[test]
fn probes_sample_and_the_log_keeps_one_record_per_step_across_a_resume() {
    let device = Device::flex();
    let run = tempfile::tempdir().unwrap();
    let (vae_config, vae, unet) = models(&device);
    let score = Recording(RefCell::new(Vec::new()));
    let eval = evaluator(&vae, &vae_config, &score, run.path(), &device);

    let first = eval.evaluate(&unet, &state(2)).unwrap();
    assert_eq!(first.fid, Some(5.0));
    assert_eq!(*score.0.borrow(), [[5, 3, 16, 16]]);
    assert_eq!(first.grid.as_deref(), Some("eval/step-00000002.png"));
    let png = std::fs::read(run.path().join("eval/step-00000002.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    eval.evaluate(&unet, &state(4)).unwrap();
    // A resume from step 2 evaluates step 4 again: its record replaces the old one.
    let again = eval.evaluate(&unet, &state(4)).unwrap();
    let steps: Vec<u64> = read_records(&eval.log)
        .unwrap()
        .iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(steps, [2, 4]);
    assert_eq!(read_records(&eval.log).unwrap()[1], again);
    assert_eq!(read_records(&eval.log).unwrap()[0], first);
}

#[test]
fn without_a_grid_the_record_has_no_grid_key() {
    let device = Device::flex();
    let run = tempfile::tempdir().unwrap();
    let (vae_config, vae, unet) = models(&device);
    let score = Recording(RefCell::new(Vec::new()));
    let mut eval = evaluator(&vae, &vae_config, &score, run.path(), &device);
    eval.grid = None;
    eval.evaluate(&unet, &state(2)).unwrap();
    let line = std::fs::read_to_string(&eval.log).unwrap();
    let value: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(value["fid"].as_f64(), Some(5.0));
    assert!(value.get("grid").is_none(), "{line}");
    assert!(!run.path().join("eval").exists());
}
