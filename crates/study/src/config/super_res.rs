//! The `[super_res]` section: x4 super-resolution finetuning of every width and its
//! evaluation (Secs. 3.2 and 3.5, Figs. 4, 5, 12).

use ldmscale_data::{Downscale, HrSource};
use ldmscale_diffusion::SamplerId;
use ldmscale_train::Objective;
use serde::{Deserialize, Serialize};

/// Which RealESRGAN parameters degrade the HR images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SrDegradation {
    /// The paper's, with kernel sizes capped to small images (`RealEsrganParams::scaled_for`).
    Scaled,
    /// The paper's (Real-ESRGAN x4plus), unchanged: meant for paper-scale crops (its 21-tap
    /// kernels and resize ranges assume images of hundreds of pixels).
    Paper,
}

/// Super-resolution: the HR source, the finetune recipe shared by every width, and the
/// evaluation grid (no guidance, as the paper samples SR).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperResConfig {
    /// Where HR images come from: "study" (the study's own images at its resolution: the
    /// training split for finetuning, the held-out split for evaluation), "photos" (the
    /// offline photographs of `tools/fetch-assets.sh photos`), "div2k:DIR" or "folder:DIR".
    /// The files of the last three are split: every fifth (by sorted path) is held out for
    /// evaluation, the rest give the training crops.
    #[serde(default = "study_source")]
    pub hr_source: HrSource,
    /// Crops of a file source at the study's resolution: "off" (full resolution, as the
    /// paper's 512 px DIV2K crops), a factor k (a k-times larger region area-averaged down) or
    /// "paper-view" (the scene a 512 px crop shows, where the image allows).
    #[serde(default = "paper_view")]
    pub downscale: Downscale,
    /// HR side in pixels (LR: a quarter); none: the study's resolution. The `study` source
    /// renders or resizes its images to it, so SR can run above the pretraining resolution
    /// (a 4 px LR of a 16 px image holds little more than its colours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<usize>,
    /// RealESRGAN degradation parameters: "scaled" or "paper".
    #[serde(default = "scaled")]
    pub degradation: SrDegradation,
    /// HR/LR training pairs.
    pub train_pairs: usize,
    /// Frozen evaluation pairs (made once, stored as PNG with their hash).
    pub eval_pairs: usize,
    /// What the finetuned SR model predicts: "v_prediction" (as diffusers' x4 upscaler) or
    /// "epsilon" (as the pretrained model). The noise term carries almost no loss at the high
    /// noise levels where the LR image decides the picture, so with "epsilon" small models
    /// learn to ignore it.
    #[serde(default = "v_prediction")]
    pub objective: Objective,
    /// Finetune optimizer steps per width.
    pub steps: u64,
    /// Finetune batch size.
    pub batch_size: usize,
    /// Finetune learning rate (AdamW, constant after warmup).
    pub learning_rate: f64,
    /// Warmup steps.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Finetune steps whose models are evaluated (Fig. 4); the last step always is.
    #[serde(default)]
    pub snapshot_steps: Vec<u64>,
    /// Samplers of the evaluation.
    pub samplers: Vec<SamplerId>,
    /// Sampling steps of the evaluation (Fig. 12).
    pub sample_steps: Vec<u32>,
    /// Seed of the finetune's data order and noise, and of the evaluation's noise.
    #[serde(default)]
    pub seed: u64,
    /// LPIPS trunk (AlexNet, safetensors made by `tools/convert_lpips_trunk.py`) with the v0.1
    /// heads of `tools/fetch-assets.sh lpips`; none: the in-domain perceptual distance,
    /// labelled as such.
    #[serde(default)]
    pub lpips_trunk: Option<String>,
}

fn study_source() -> HrSource {
    HrSource::Study
}

fn v_prediction() -> Objective {
    Objective::VPrediction
}

fn paper_view() -> Downscale {
    Downscale::PaperView
}

fn scaled() -> SrDegradation {
    SrDegradation::Scaled
}

impl SuperResConfig {
    /// The HR side: [`SuperResConfig::resolution`] or the study's.
    pub fn hr_side(&self, study_resolution: usize) -> usize {
        self.resolution.unwrap_or(study_resolution)
    }

    /// The finetune steps evaluated: the snapshots and the last step, ascending.
    pub fn evaluated_steps(&self) -> Vec<u64> {
        let mut steps: Vec<u64> = self
            .snapshot_steps
            .iter()
            .copied()
            .filter(|&s| s < self.steps)
            .collect();
        steps.push(self.steps);
        steps.sort_unstable();
        steps.dedup();
        steps
    }

    /// A minimal section for CI: a few finetune steps, two snapshots, two step counts.
    pub fn tiny() -> Self {
        SuperResConfig {
            hr_source: study_source(),
            downscale: paper_view(),
            resolution: None,
            objective: v_prediction(),
            degradation: SrDegradation::Scaled,
            train_pairs: 128,
            eval_pairs: 16,
            steps: 30,
            batch_size: 8,
            learning_rate: 1e-3,
            warmup_steps: 0,
            snapshot_steps: vec![10],
            samplers: vec![SamplerId::Ddim],
            sample_steps: vec![2, 8],
            seed: 0,
            lpips_trunk: None,
        }
    }

    /// The paper's setup: DIV2K (held-out fifth) at full resolution, 512 px HR / 128 px LR,
    /// the paper's degradation, snapshots every 50 finetune steps, DDIM at the step
    /// grid, LPIPS with a local AlexNet trunk.
    pub fn paper() -> Self {
        SuperResConfig {
            hr_source: "div2k:DIV2K".parse().expect("a valid source"),
            downscale: Downscale::Off,
            resolution: None,
            objective: v_prediction(),
            degradation: SrDegradation::Paper,
            train_pairs: 100_000,
            eval_pairs: 3000,
            steps: 500,
            batch_size: 64,
            learning_rate: 5e-5,
            warmup_steps: 0,
            snapshot_steps: (1..10).map(|k| 50 * k).collect(),
            samplers: vec![SamplerId::Ddim],
            sample_steps: vec![5, 10, 20, 50, 100, 200],
            seed: 0,
            lpips_trunk: Some("lpips/alexnet.safetensors".into()),
        }
    }

    /// Every width in a few minutes of a 2-core CPU.
    pub fn quick() -> Self {
        SuperResConfig {
            train_pairs: 1024,
            eval_pairs: 64,
            steps: 200,
            batch_size: 16,
            warmup_steps: 20,
            snapshot_steps: vec![50, 100],
            sample_steps: vec![2, 4, 8, 16, 32],
            ..Self::tiny()
        }
    }
}

/// Every fifth file (by sorted path) of a file source is held out for evaluation.
pub const EVAL_EVERY: usize = 5;
