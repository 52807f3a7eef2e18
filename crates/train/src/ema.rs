//! Exponential moving average of the weights, with diffusers' `EMAModel` decay schedule.

use serde::{Deserialize, Serialize};

use ldmscale_kernels::optim::ema_update;

use crate::params::{Named, from_values, into_values, on_flex, read_values};

/// EMA settings (diffusers `EMAModel` arguments).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmaConfig {
    /// Upper bound of the decay.
    pub max_decay: f64,
    /// Lower bound of the decay.
    pub min_decay: f64,
    /// Steps before averaging starts.
    pub update_after_step: u64,
    /// Warmup form `1 - (1 + step / inv_gamma)^-power` instead of `(1 + step) / (10 + step)`.
    pub use_ema_warmup: bool,
    /// Warmup inverse gamma.
    pub inv_gamma: f64,
    /// Warmup power.
    pub power: f64,
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self {
            max_decay: 0.9999,
            min_decay: 0.0,
            update_after_step: 0,
            use_ema_warmup: false,
            inv_gamma: 1.0,
            power: 2.0 / 3.0,
        }
    }
}

impl EmaConfig {
    /// The decay used at `optimization_step` (1-based, counted after the increment diffusers
    /// makes before computing it).
    pub fn decay(&self, optimization_step: u64) -> f64 {
        let step = optimization_step.saturating_sub(self.update_after_step + 1) as f64;
        if step <= 0.0 {
            return 0.0;
        }
        let current = if self.use_ema_warmup {
            1.0 - (1.0 + step / self.inv_gamma).powf(-self.power)
        } else {
            (1.0 + step) / (10.0 + step)
        };
        current.min(self.max_decay).max(self.min_decay)
    }

    /// Moves `shadow` towards `current` for `optimization_step`:
    /// `shadow -= (1 - decay) (shadow - current)`.
    pub fn update(&self, shadow: &mut Named, current: &Named, optimization_step: u64) {
        let one_minus = 1.0 - self.decay(optimization_step);
        for (name, value) in current {
            let next = match shadow.remove(name) {
                Some(s) if on_flex(&s) && on_flex(value) => {
                    let mut values = into_values(s);
                    read_values(value, |current| ema_update(&mut values, current, one_minus));
                    from_values(values)
                }
                Some(s) => s.clone().sub(s.sub(value.clone()).mul_scalar(one_minus)),
                None => value.clone(),
            };
            shadow.insert(name.clone(), next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_schedule_is_diffusers() {
        let c = EmaConfig::default();
        assert_eq!(c.decay(1), 0.0);
        assert!((c.decay(2) - 2.0 / 11.0).abs() < 1e-12);
        assert!((c.decay(1_000_000) - 0.9999).abs() < 1e-12);
        let w = EmaConfig {
            use_ema_warmup: true,
            ..c
        };
        assert!((w.decay(11) - (1.0 - 11f64.powf(-2.0 / 3.0))).abs() < 1e-12);
    }
}
