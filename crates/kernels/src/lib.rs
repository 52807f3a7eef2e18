//! CPU kernels for the operations where burn's flex backend spends most of a UNet step:
//! attention with narrow heads (scores, softmax and weighted sum fused, vectorised `exp`).
//! Plain slices in, plain slices out; `ldmscale-model` decides when to call them.

// The kernels index fixed-size lane arrays in counted loops on purpose: that is the shape the
// compiler turns into vector instructions.
#![allow(clippy::needless_range_loop)]

pub mod attention;
mod exp;
mod simd;

pub use attention::{AttentionShape, attention_backward, attention_forward};
