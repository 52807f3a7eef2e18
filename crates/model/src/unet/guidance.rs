//! An LCM student made from a teacher UNet: a guidance-embedding projection (`cond_proj`,
//! `time_cond_proj_dim` inputs) added to the time embedding.
//!
//! The projection is zero, so before any distillation the student's output equals the
//! teacher's for every guidance value. diffusers' LCM script leaves it randomly initialised,
//! which makes the step-0 student differ from its teacher by a guidance-dependent offset.

use burn::module::Param;
use burn::nn::LinearConfig;
use burn::tensor::Tensor;

use super::{UNet, UNetConfig};

impl UNetConfig {
    /// This config reading a guidance embedding of `dim` entries (`time_cond_proj_dim`). The
    /// error names the field that rules it out.
    pub fn with_guidance_embedding(&self, dim: usize) -> Result<UNetConfig, String> {
        if let Some(d) = self.time_cond_proj_dim {
            return Err(format!(
                "time_cond_proj_dim: {d}: this UNet already reads a guidance embedding \
                 (an LCM student, not a teacher)"
            ));
        }
        let mut config = self.clone();
        config.time_cond_proj_dim = Some(dim);
        config.validate()?;
        Ok(config)
    }
}

impl UNet {
    /// This UNet with a zero guidance-embedding projection of `dim` inputs added to its time
    /// embedding (see [`UNetConfig::with_guidance_embedding`] for the config).
    pub fn with_guidance_embedding(mut self, dim: usize) -> UNet {
        let base = self.base_channels;
        let device = self.conv_in.weight.device();
        let mut proj = LinearConfig::new(dim, base).with_bias(false).init(&device);
        proj.weight = Param::from_tensor(Tensor::zeros([dim, base], &device));
        self.time_embedding.cond_proj = Some(proj);
        self
    }
}
