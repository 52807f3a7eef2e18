//! What a training run learns, apart from how it runs: a [`TrainTask`] draws typed batches and a
//! [`ShardLoss`] turns a shard of one into a loss on a replica. The loop (optimizer, EMA,
//! clipping, checkpoints, exact resume) and the gradient synchronisation are the same for all.

use std::ops::Range;

use burn::tensor::{Device, Tensor};
use ldmscale_model::{UNet, UNetConfig};
use rand::rngs::StdRng;

use crate::config::{ModelConfig, TrainConfig};
use crate::error::TrainError;
use crate::params::Named;
use crate::trainer::REFERENCE_WIDTH;

/// A training task: text-to-image today; super-resolution, DreamBooth and consistency
/// distillation plug in the same way.
///
/// The loop owns determinism: it picks the example indices of each micro-batch with the pure
/// [`crate::data::order`] and hands [`TrainTask::draw`] a generator seeded by run, step and
/// micro-batch; a task draws its noise, timesteps and dropout from that generator alone, so a
/// resumed run draws the same batches. A batch is drawn whole on the weights' device and then
/// split into row shards, one per replica.
///
/// - Extra inputs (a super-resolution task's low-resolution latent) are fields of the batch,
///   sharded by rows like the rest, with the UNet widened by [`TrainTask::unet_config`].
/// - Per-sample weights (DreamBooth's instance and prior rows) are a `[B]` field of the batch;
///   the loss stays a mean over rows of weighted per-row terms, which is what lets the loop
///   weight each shard by its row count.
/// - Extra models (a distillation teacher) are owned by the task: frozen ones compute their
///   targets in `draw`, without gradients, so the targets are sharded with the batch; a model a
///   loss must run per replica belongs to the [`ShardLoss`], which is shared across threads.
pub trait TrainTask {
    /// One micro-batch, before splitting.
    type Batch: Sync;
    /// The part that runs on every replica, on its own thread.
    type Loss: ShardLoss<Self::Batch>;

    /// Identifies the data (dataset, encoders, resolution) so a run refuses to resume on other
    /// data.
    fn data_key(&self) -> String;
    /// Number of examples the indices of [`TrainTask::draw`] range over.
    fn examples(&self) -> usize;
    /// The UNet this task trains for the family member `model`.
    fn unet_config(&self, model: &ModelConfig) -> UNetConfig;
    /// `[h, w, tokens]` one sample's forward sees (for the compute accounting).
    fn forward_size(&self) -> [usize; 3];
    /// The batch of examples `indices`, drawing all randomness from `rng`, on plain `device`.
    fn draw(
        &self,
        indices: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Self::Batch, TrainError>;
    /// The loss of a shard.
    fn shard_loss(&self) -> &Self::Loss;
    /// Weights to start from by parameter name, on any device (a finetune's pretrained
    /// model); `None`: the seeded initialisation.
    fn initial_weights(&self) -> Option<&Named> {
        None
    }
    /// Forward passes of the trained UNet's size one training sample costs (compute
    /// accounting): 3, a forward and its backward; a distillation adds its frozen models'.
    fn forward_passes(&self) -> f64 {
        3.0
    }
    /// Weights the task keeps beside the model and advances after every step (a consistency
    /// distillation's EMA target), by name. The loop saves them in every checkpoint, so a
    /// resumed run draws the same targets; none by default.
    fn extra_state(&self) -> Named {
        Named::new()
    }
    /// Sets the extra state at the start of a run: `None` for a fresh run (the task's initial
    /// state), else a checkpoint's; returns the names a checkpoint lacks.
    fn start_extra_state(&self, saved: Option<Named>) -> Result<(), Vec<String>> {
        let _ = saved;
        Ok(())
    }
    /// Called after every optimizer step with the model's new weights (plain device).
    fn after_step(&self, weights: &Named) {
        let _ = weights;
    }
    /// The UNet whose forward cost normalises this task's (the paper: the family's 320-filter
    /// member, with 32 groups and 8 heads).
    fn reference_unet_config(&self, config: &TrainConfig) -> UNetConfig {
        let mut reference = config.model.clone();
        reference.width = REFERENCE_WIDTH;
        reference.norm_groups = 32;
        reference.heads = 8;
        self.unet_config(&reference)
    }
}

/// The loss of one shard of a batch on one replica; called from several threads at once.
pub trait ShardLoss<B>: Sync {
    /// Rows (samples) in `batch`.
    fn rows(&self, batch: &B) -> usize;
    /// Rows `rows` of `batch` on autodiff device `device`, ready for [`ShardLoss::loss`].
    fn shard(&self, batch: &B, rows: Range<usize>, device: &Device) -> B;
    /// The loss (a mean over the shard's rows) of `unet` on `shard`, differentiable.
    fn loss(&self, unet: &UNet, shard: B) -> Result<Tensor<1>, TrainError>;
}
