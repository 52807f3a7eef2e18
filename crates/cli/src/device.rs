//! The `--device` argument every command takes.

use anyhow::Result;
use burn::tensor::Device;
use clap::Args;

/// Where models run.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Device: `cpu`, or `cuda:N` (NVIDIA GPU N; needs a build with the `cuda` feature).
    #[arg(long, value_name = "cpu|cuda:N", default_value = "cpu")]
    pub device: String,
}

impl DeviceArgs {
    /// The device, or an error naming the flag.
    pub fn device(&self) -> Result<Device> {
        Ok(ldmscale_train::parallel::parse_device(
            &self.device,
            "--device",
        )?)
    }
}

impl Default for DeviceArgs {
    fn default() -> Self {
        DeviceArgs {
            device: "cpu".into(),
        }
    }
}
