//! The EMA copy of a student that the consistency-distillation tasks (LCM, CoDi) regress onto.
//! It lives outside the trainer's own EMA (diffusers' warmup schedule, a different decay) and
//! travels in every checkpoint as the task's extra state.

use std::sync::Mutex;

use burn::tensor::Device;
use ldmscale_model::UNet;

use crate::params::{self, Named};

/// An EMA target: `target = decay target + (1 - decay) student` after every optimizer step.
pub struct EmaTarget {
    model: Mutex<UNet>,
    decay: f32,
}

impl EmaTarget {
    /// A target starting as `model`.
    pub fn new(model: UNet, decay: f64) -> Self {
        Self {
            model: Mutex::new(model),
            decay: decay as f32,
        }
    }

    /// The target as it is now.
    pub fn current(&self) -> UNet {
        self.lock().clone()
    }

    /// Its weights by name (the checkpoint's extra state).
    pub fn snapshot(&self) -> Named {
        params::snapshot(&*self.lock())
    }

    /// Takes every weight from `weights` (moved to `device`); the names `weights` lacks are
    /// returned and the target is left as it was.
    pub fn restore(&self, weights: &Named, device: &Device) -> Result<(), Vec<String>> {
        let mut model = self.lock();
        *model = params::with_weights(model.clone(), weights, device)?;
        Ok(())
    }

    /// One EMA step towards `student`'s weights.
    pub fn update(&self, student: &Named) {
        let decay = self.decay;
        let mut model = self.lock();
        *model = params::update(
            model.clone(),
            &mut |name, current| match student.get(name) {
                Some(student) => {
                    current.mul_scalar(decay) + student.clone().mul_scalar(1.0 - decay)
                }
                None => current,
            },
        );
    }

    // A panic elsewhere while holding the lock leaves valid weights: keep using them.
    fn lock(&self) -> std::sync::MutexGuard<'_, UNet> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }
}
