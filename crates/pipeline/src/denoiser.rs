//! The UNet seen as the conditional model that guidance wraps.

use burn::tensor::Tensor;
use ldmscale_diffusion::ConditionalModel;
use ldmscale_model::UNet;

use crate::values;

/// A UNet as a [`ConditionalModel`]: `eps(x, t, context)`.
pub struct UNetDenoiser<'a>(pub &'a UNet);

impl ConditionalModel for UNetDenoiser<'_> {
    fn forward(&mut self, x: Tensor<4>, t: Tensor<1>, context: &Tensor<3>) -> Tensor<4> {
        self.0.forward(x, &values(t), context.clone())
    }
}
