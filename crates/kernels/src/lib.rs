//! CPU kernels for the operations where burn's flex backend spends most of a UNet step, each
//! parallel over fixed chunks (results do not depend on the thread count):
//! - [`attention`]: attention with narrow heads, scores, softmax and weighted sum fused;
//! - [`conv`]: convolution as one matrix product per image, forward and backward, or as
//!   Winograd's F(2x2, 3x3) or F(4x4, 3x3) for 3x3 kernels at stride 1;
//! - [`layer_norm`]: LayerNorm over the last dimension, forward and backward;
//! - [`linear`]: a dense layer as one matrix product over all rows, forward and backward;
//! - [`norm`] and [`activation`]: GroupNorm(+SiLU) and GEGLU in one pass each;
//! - [`optim`]: AdamW, EMA and gradient norms in place;
//! - [`bf16`]: a bf16 matrix product (AMX tiles or AVX512-BF16) for compute where bf16 is allowed.
//!
//! Plain slices in, plain slices out: a kernel's new output is a new buffer (`*_output`),
//! initialised block by block just before it is written. `ldmscale-model` and `ldmscale-train`
//! decide when to call them.

// The kernels index fixed-size lane arrays in counted loops on purpose: that is the shape the
// compiler turns into vector instructions.
#![allow(clippy::needless_range_loop)]

pub mod activation;
pub mod attention;
pub mod bf16;
mod buffer;
pub mod conv;
mod exp;
pub mod layer_norm;
pub mod linear;
pub mod norm;
#[cfg(feature = "onednn")]
pub mod onednn;
pub mod optim;
mod pool;
mod product;
mod simd;
#[cfg(test)]
mod test_values;
mod winograd;

pub use activation::{geglu_backward, geglu_output};
pub use attention::{AttentionShape, attention_backward, attention_forward};
pub use buffer::zeroed;
pub use conv::{
    ConvAlgorithm, ConvShape, conv2d_backward, conv2d_forward, conv2d_forward_with, conv2d_output,
};
pub use layer_norm::{LayerNormShape, layer_norm_backward, layer_norm_output};
pub use linear::{LinearShape, linear_input_gradient, linear_output, linear_parameter_gradients};
pub use norm::{GroupNormShape, group_norm_backward, group_norm_output};
pub use pool::run_on_pool;
