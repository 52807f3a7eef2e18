//! The `[super_res]` section: x4 super-resolution finetuning of every width and its
//! evaluation (Secs. 3.2 and 3.5, Figs. 4, 5, 12).

use ldmscale_diffusion::SamplerId;
use serde::{Deserialize, Serialize};

/// Which RealESRGAN parameters degrade the HR images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SrDegradation {
    /// The paper's, with kernel sizes capped to small images (`RealEsrganParams::scaled_for`).
    Scaled,
    /// The paper's (Real-ESRGAN x4plus), unchanged: needs HR images of at least 84 px.
    Paper,
}

/// Super-resolution: the HR source, the finetune recipe shared by every width, and the
/// evaluation grid (no guidance, as the paper samples SR).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperResConfig {
    /// Where HR images come from: "study" (the study's own images at its resolution: the
    /// training split for finetuning, the held-out split for evaluation).
    #[serde(default = "study_source")]
    pub hr_source: String,
    /// RealESRGAN degradation parameters: "scaled" or "paper".
    #[serde(default = "scaled")]
    pub degradation: SrDegradation,
    /// HR/LR training pairs.
    pub train_pairs: usize,
    /// Frozen evaluation pairs (made once, stored as PNG with their hash).
    pub eval_pairs: usize,
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

fn study_source() -> String {
    "study".into()
}

fn scaled() -> SrDegradation {
    SrDegradation::Scaled
}

impl SuperResConfig {
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
