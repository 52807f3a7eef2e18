//! Counting the cost of a forward pass, by the convention that reproduces the paper's GFLOPS
//! column (shared/reference/table1.md): 2 FLOPs per multiply-add, convolution taps that fall on
//! zero padding not counted, and about one FLOP per element for each elementwise or reduction
//! step. Spelled out per op: a normalisation is 7 steps per element (mean, centre, square,
//! variance, scale by 1/std, affine scale, affine shift), an activation 4 (SiLU: negate-exp, add,
//! divide, multiply; GELU counted the same), a softmax 6 per score (scale, max, subtract, exp, sum,
//! divide), any other add or product 1. With these counts the family's GFLOPs land within 0.2% of
//! the paper's Table 1 for 96..768 filters (the `zoo` tests check it).
//!
//! Every module has a `cost` method beside its `forward` that walks the same shapes.

/// FLOPs per normalised element: mean, centring, square, variance, scaling, affine scale and shift.
pub const FLOPS_PER_NORM_ELEMENT: u64 = 7;
/// FLOPs per activated element (SiLU as x / (1 + exp(-x)); GELU counted alike).
pub const FLOPS_PER_ACTIVATION_ELEMENT: u64 = 4;
/// FLOPs per attention score in the softmax: scale, max, subtract, exp, sum, divide.
pub const FLOPS_PER_SOFTMAX_ELEMENT: u64 = 6;

/// Accumulated cost of a forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Multiply-adds of convolutions.
    pub conv_macs: u64,
    /// Multiply-adds of linear layers (including 1x1 projections done as linear).
    pub linear_macs: u64,
    /// Multiply-adds of attention score and value products.
    pub attention_macs: u64,
    /// Elements through a GroupNorm or LayerNorm.
    pub norm_elements: u64,
    /// Elements through a SiLU or GELU.
    pub activation_elements: u64,
    /// Attention scores through the softmax.
    pub softmax_elements: u64,
    /// Other elementwise work: bias and residual adds, gating, resampling copies.
    pub elementwise: u64,
}

impl Cost {
    /// Total FLOPs: 2 per multiply-add plus the elementwise count.
    pub fn flops(&self) -> u64 {
        2 * (self.conv_macs + self.linear_macs + self.attention_macs)
            + FLOPS_PER_NORM_ELEMENT * self.norm_elements
            + FLOPS_PER_ACTIVATION_ELEMENT * self.activation_elements
            + FLOPS_PER_SOFTMAX_ELEMENT * self.softmax_elements
            + self.elementwise
    }

    /// Multiply-adds alone.
    pub fn macs(&self) -> u64 {
        self.conv_macs + self.linear_macs + self.attention_macs
    }

    /// Total GFLOPs.
    pub fn gflops(&self) -> f64 {
        self.flops() as f64 / 1e9
    }

    /// Elementwise work over `n` elements.
    pub fn elementwise(&mut self, n: usize) {
        self.elementwise += n as u64;
    }

    /// A normalisation over `n` elements.
    pub fn norm(&mut self, n: usize) {
        self.norm_elements += n as u64;
    }

    /// An activation function over `n` elements.
    pub fn activation(&mut self, n: usize) {
        self.activation_elements += n as u64;
    }

    /// A `[rows, d_in] x [d_in, d_out]` linear layer with bias.
    pub fn linear(&mut self, rows: usize, d_in: usize, d_out: usize) {
        self.linear_macs += (rows * d_in * d_out) as u64;
        self.elementwise(rows * d_out);
    }

    /// A `[rows, d_in] x [d_in, d_out]` product without bias.
    pub fn matmul(&mut self, rows: usize, d_in: usize, d_out: usize) {
        self.linear_macs += (rows * d_in * d_out) as u64;
    }

    /// Batched attention products: `heads` times `[q, d] x [d, k]` and `[q, k] x [k, d]`,
    /// plus the softmax over the scores.
    pub fn attention(&mut self, heads: usize, queries: usize, keys: usize, head_dim: usize) {
        self.attention_macs += (2 * heads * queries * keys * head_dim) as u64;
        self.softmax_elements += (heads * queries * keys) as u64;
    }

    /// A square convolution with bias over a `[c_in, h, w]` input; only taps that land inside the
    /// input count. Returns the output size.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        &mut self,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        h: usize,
        w: usize,
    ) -> (usize, usize) {
        let (h_out, rows) = valid_taps(h, kernel, stride, padding);
        let (w_out, cols) = valid_taps(w, kernel, stride, padding);
        self.conv_macs += rows * cols * (c_in * c_out) as u64;
        self.elementwise(c_out * h_out * w_out);
        (h_out, w_out)
    }

    /// Adds another cost.
    pub fn add(&mut self, other: Cost) {
        self.conv_macs += other.conv_macs;
        self.linear_macs += other.linear_macs;
        self.attention_macs += other.attention_macs;
        self.norm_elements += other.norm_elements;
        self.activation_elements += other.activation_elements;
        self.softmax_elements += other.softmax_elements;
        self.elementwise += other.elementwise;
    }
}

/// Output length along one axis and the number of kernel taps, summed over output positions,
/// that fall inside the input.
/// A kernel wider than the padded input (or a zero stride) gives no output, rather than an
/// underflowed length that would loop for ever.
fn valid_taps(len: usize, kernel: usize, stride: usize, padding: usize) -> (usize, u64) {
    let padded = len.saturating_add(padding.saturating_mul(2));
    let Some(span) = padded
        .checked_sub(kernel)
        .filter(|_| stride > 0 && kernel > 0)
    else {
        return (0, 0);
    };
    let out = span / stride + 1;
    let mut taps = 0u64;
    for o in 0..out {
        let start = (o * stride) as isize - padding as isize;
        for k in 0..kernel as isize {
            let i = start + k;
            if i >= 0 && (i as usize) < len {
                taps += 1;
            }
        }
    }
    (out, taps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_taps_are_not_counted() {
        // 3x3 stride 1 pad 1 on 4 wide: border outputs see 2 taps, inner ones 3.
        assert_eq!(valid_taps(4, 3, 1, 1), (4, 2 + 3 + 3 + 2));
        // 1x1 sees every position once.
        assert_eq!(valid_taps(5, 1, 1, 0), (5, 5));
        // Stride 2 pad 1 on 4: outputs at -1..1 (2 taps) and 1..3 (3 taps).
        assert_eq!(valid_taps(4, 3, 2, 1), (2, 5));
        let mut c = Cost::default();
        c.conv2d(2, 3, 3, 1, 1, 4, 4);
        assert_eq!(c.conv_macs, 10 * 10 * 6);
        assert_eq!(c.elementwise, 3 * 16);
        assert_eq!(c.flops(), 2 * 600 + 48);
    }

    #[test]
    fn kernels_wider_than_the_input_give_nothing_instead_of_looping() {
        // Latent size 0: 0 + 2 - 3 would underflow.
        assert_eq!(valid_taps(0, 3, 1, 1), (0, 0));
        assert_eq!(valid_taps(1, 7, 1, 0), (0, 0));
        assert_eq!(valid_taps(4, 3, 0, 1), (0, 0));
        let mut c = Cost::default();
        assert_eq!(c.conv2d(4, 8, 3, 2, 1, 0, 0), (0, 0));
    }
}
