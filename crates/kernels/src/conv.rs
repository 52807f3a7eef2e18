//! 2-D convolution on NCHW buffers as one matrix product per image: `out_b = W · col_b`, where
//! `col_b` (`[c_in * kh * kw, h_out * w_out]`) gathers each output pixel's receptive field.
//!
//! burn's flex convolution converts every input to channels-last and every weight to a
//! transposed copy on one core before its product, and scatters the result back to NCHW element
//! by element; its backward runs as a transposed convolution and a convolution with a kernel as
//! large as the image. Here the gather writes rows in the order the product reads them, the
//! product writes NCHW directly, and the backward is two products per image (`dW += dY colᵀ`,
//! `dcol = Wᵀ dY`, scattered back to `dx`). Images run in parallel; weight gradients are
//! summed per fixed group of images and the groups combined in order, so the result does not
//! depend on scheduling.

use crate::bf16::{PackedLhs, conv_product_on_tiles, products_in_bf16};
use crate::buffer::zeroed;
use crate::product::{inner_parallelism, product, product_packed, sum_partials, transpose};
use crate::winograd;
use rayon::prelude::*;

/// Sizes of one convolution (groups 1, dilation 1, the same padding on both sides of an axis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub channels_in: usize,
    pub height: usize,
    pub width: usize,
    pub channels_out: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    /// Step between output pixels, `[h, w]`.
    pub stride: [usize; 2],
    /// Zeros added on each side, `[h, w]`.
    pub padding: [usize; 2],
}

impl ConvShape {
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding[0] - self.kernel_h) / self.stride[0] + 1
    }

    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding[1] - self.kernel_w) / self.stride[1] + 1
    }

    /// Output pixels per image and channel.
    fn pixels(&self) -> usize {
        self.out_height() * self.out_width()
    }

    /// Rows of `col`: the weight's inner size.
    fn patch(&self) -> usize {
        self.channels_in * self.kernel_h * self.kernel_w
    }

    fn input_len(&self) -> usize {
        self.batch * self.channels_in * self.height * self.width
    }

    pub fn output_len(&self) -> usize {
        self.batch * self.channels_out * self.pixels()
    }

    pub fn weight_len(&self) -> usize {
        self.channels_out * self.patch()
    }

    /// A 1x1 convolution without stride or padding reads its input as `col` unchanged.
    fn is_pointwise(&self) -> bool {
        self.kernel_h == 1 && self.kernel_w == 1 && self.stride == [1, 1] && self.padding == [0, 0]
    }

    fn check(&self) {
        assert!(
            self.kernel_h <= self.height + 2 * self.padding[0]
                && self.kernel_w <= self.width + 2 * self.padding[1],
            "kernel larger than the padded input: {self:?}"
        );
        assert!(self.stride[0] > 0 && self.stride[1] > 0, "zero stride");
    }
}

/// Output pixels from which the backward products read their operands in the layouts gemm
/// packs fastest at the price of transposing small matrices (measured at 8x8 and 32x32).
const LARGE_IMAGE: usize = 256;

/// Images per weight-gradient partial sum: fixed by the batch alone, so the order in which
/// partials are added never depends on the thread count.
const GRAD_GROUPS: usize = 8;

/// How a convolution's multiplies are organised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvAlgorithm {
    /// One product of the weights with the gathered receptive fields per image.
    Direct,
    /// Winograd's F(2x2, 3x3): 2.25x fewer multiplies, for 3x3 kernels at stride 1 only.
    WinogradF2,
    /// Winograd's F(4x4, 3x3): 4x fewer multiplies, for 3x3 kernels at stride 1 only.
    WinogradF4,
}

impl ConvAlgorithm {
    /// The faster one for `shape`: for 3x3 kernels at stride 1, Winograd's F(4x4, 3x3) where
    /// there are enough channels for the image size, else F(2x2, 3x3) on images large enough
    /// that its transforms pay, in f32 (bf16 products keep the direct form, whose operands are
    /// the values the model holds rather than sums of them).
    pub fn for_shape(shape: &ConvShape, bf16: bool) -> Self {
        if bf16 {
            Self::Direct
        } else if winograd::f4::applies(shape) {
            Self::WinogradF4
        } else if winograd::applies(shape) {
            Self::WinogradF2
        } else {
            Self::Direct
        }
    }
}

/// `out = conv(x, weight) + bias`. `x`: `[batch, c_in, h, w]`, `weight`: `[c_out, c_in, kh,
/// kw]`, `bias`: `[c_out]`, `out`: `[batch, c_out, h_out, w_out]`.
pub fn conv2d_forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    shape: ConvShape,
    out: &mut [f32],
) {
    forward(x, weight, bias, shape, out, products_in_bf16());
}

/// [`conv2d_forward`] in f32 with the algorithm given (for benchmarks and tests); panics if
/// Winograd is asked for a shape other than 3x3 at stride 1.
pub fn conv2d_forward_with(
    algorithm: ConvAlgorithm,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    shape: ConvShape,
    out: &mut [f32],
) {
    check_buffers(x, weight, bias, shape, out);
    assert!(
        algorithm == ConvAlgorithm::Direct || winograd::supports(&shape),
        "Winograd's algorithms need a 3x3 kernel at stride 1: {shape:?}"
    );
    run(algorithm, x, weight, bias, shape, out, false);
}

/// `out = conv(x, weight) + bias` by `algorithm` (the direct product's in bf16 when `bf16`).
fn run(
    algorithm: ConvAlgorithm,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    shape: ConvShape,
    out: &mut [f32],
    bf16: bool,
) {
    match algorithm {
        ConvAlgorithm::Direct => direct_forward(x, weight, bias, shape, out, bf16),
        ConvAlgorithm::WinogradF2 => winograd::forward(x, weight, bias, shape, out),
        ConvAlgorithm::WinogradF4 => winograd::f4::forward(x, weight, bias, shape, out),
    }
}

/// [`conv2d_forward`] into a new buffer, the same values. Winograd's F(4x4, 3x3) zeroes each
/// output plane in cache just before writing it, instead of a pass over the whole output in
/// memory beforehand.
pub fn conv2d_output(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    shape: ConvShape,
) -> Vec<f32> {
    let bf16 = products_in_bf16();
    check_inputs(x, weight, bias, shape);
    match ConvAlgorithm::for_shape(&shape, bf16) {
        ConvAlgorithm::WinogradF4 => winograd::f4::forward_into_new(x, weight, bias, shape),
        algorithm => {
            let mut out = zeroed(shape.output_len());
            run(algorithm, x, weight, bias, shape, &mut out, bf16);
            out
        }
    }
}

fn forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    shape: ConvShape,
    out: &mut [f32],
    bf16: bool,
) {
    check_buffers(x, weight, bias, shape, out);
    let algorithm = ConvAlgorithm::for_shape(&shape, bf16);
    run(algorithm, x, weight, bias, shape, out, bf16);
}

fn check_buffers(x: &[f32], weight: &[f32], bias: Option<&[f32]>, shape: ConvShape, out: &[f32]) {
    check_inputs(x, weight, bias, shape);
    assert_eq!(out.len(), shape.output_len(), "conv output size");
}

fn check_inputs(x: &[f32], weight: &[f32], bias: Option<&[f32]>, shape: ConvShape) {
    shape.check();
    assert_eq!(x.len(), shape.input_len(), "conv input size");
    assert_eq!(weight.len(), shape.weight_len(), "conv weight size");
    if let Some(b) = bias {
        assert_eq!(b.len(), shape.channels_out, "conv bias size");
    }
}

fn direct_forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    shape: ConvShape,
    out: &mut [f32],
    bf16: bool,
) {
    let (pixels, image_in) = (
        shape.pixels(),
        shape.channels_in * shape.height * shape.width,
    );
    let image_out = shape.channels_out * pixels;
    if image_out == 0 {
        return;
    }
    let inner = inner_parallelism(shape.batch);
    let valid = ValidRanges::new(shape);
    // bf16: the weights rounded and packed once, not once per image.
    let packed_weight = bf16
        .then(|| PackedLhs::new(shape.channels_out, shape.patch(), weight, shape.patch(), 1))
        .flatten();
    out.par_chunks_mut(image_out)
        .enumerate()
        .for_each_init(Vec::new, |col, (b, out_b)| {
            let x_b = &x[b * image_in..][..image_in];
            if let Some(bias) = bias {
                for (row, &v) in out_b.chunks_exact_mut(pixels).zip(bias) {
                    row.fill(v);
                }
            }
            let parallel = !matches!(inner, gemm::Parallelism::None);
            if let Some(w) = &packed_weight
                && !shape.is_pointwise()
                && conv_product_on_tiles(w, x_b, &shape, out_b, bias.is_some(), parallel)
            {
                return;
            }
            let rhs = if shape.is_pointwise() {
                x_b
            } else {
                im2col(x_b, shape, &valid, col);
                col.as_slice()
            };
            let rhs = (rhs, pixels, 1);
            match &packed_weight {
                Some(w) => product_packed(w, pixels, out_b, bias.is_some(), rhs, inner),
                None => product(
                    (shape.channels_out, pixels, shape.patch()),
                    out_b,
                    bias.is_some(),
                    (weight, shape.patch(), 1),
                    rhs,
                    inner,
                    bf16,
                ),
            }
        });
}

/// Gradients of [`conv2d_forward`] from the output's gradient `d_out`: `dx` (when wanted),
/// `dweight` and `dbias` (when wanted) are overwritten.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
    x: &[f32],
    weight: &[f32],
    d_out: &[f32],
    shape: ConvShape,
    dx: Option<&mut [f32]>,
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
) {
    backward(
        x,
        weight,
        d_out,
        shape,
        dx,
        dweight,
        dbias,
        products_in_bf16(),
    );
}

#[allow(clippy::too_many_arguments)]
fn backward(
    x: &[f32],
    weight: &[f32],
    d_out: &[f32],
    shape: ConvShape,
    dx: Option<&mut [f32]>,
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    bf16: bool,
) {
    shape.check();
    assert_eq!(x.len(), shape.input_len(), "conv input size");
    assert_eq!(weight.len(), shape.weight_len(), "conv weight size");
    assert_eq!(d_out.len(), shape.output_len(), "conv output gradient size");
    assert_eq!(
        dweight.len(),
        shape.weight_len(),
        "conv weight gradient size"
    );
    let (pixels, patch) = (shape.pixels(), shape.patch());
    let (image_in, image_out) = (
        shape.channels_in * shape.height * shape.width,
        shape.channels_out * pixels,
    );

    if let Some(db) = dbias {
        assert_eq!(db.len(), shape.channels_out, "conv bias gradient size");
        db.par_iter_mut().enumerate().for_each(|(c, g)| {
            *g = (0..shape.batch)
                .map(|b| {
                    d_out[b * image_out + c * pixels..][..pixels]
                        .iter()
                        .sum::<f32>()
                })
                .sum();
        });
    }

    // Input gradient: one task per image, each owning its slice of `dx`.
    if let Some(dx) = dx {
        assert_eq!(dx.len(), shape.input_len(), "conv input gradient size");
        let large = shape.pixels() >= LARGE_IMAGE || winograd::f4::applies(&shape);
        let as_convolution = large
            .then(|| transposed_as_convolution(weight, shape))
            .flatten();
        if let Some((flipped, shape_t)) = as_convolution {
            // A stride-1 convolution's input gradient is the convolution of dY with the
            // flipped, transposed kernel: the product then sums over the long `c_out * kh * kw`
            // axis, as the forward's does, instead of writing a 9x larger `dcol` to scatter
            // (measured 10-20% faster at 16x16 and 32x32; slower at 8x8, where flipping the
            // kernel costs more than it saves, unless the layer is wide enough for F(4x4, 3x3)).
            forward(d_out, &flipped, None, shape_t, dx, bf16);
        } else {
            input_gradient(weight, d_out, shape, dx, bf16);
        }
    }

    // Weight gradient: by F(4x4, 3x3)'s adjoint on wide enough layers (one product per point
    // over the whole batch); else a partial sum per fixed group of images, then the partials in
    // order.
    // On large images it is computed transposed (dWᵀ = col dYᵀ reads the large `col` row by
    // row and only the 9x smaller dY transposed; measured 30% faster at 32x32), on small ones
    // directly in f32 (the transposes cost more than they save at 8x8). The bf16 product copies
    // a transposed operand before packing it, so there the smaller dY is always the one.
    let per_group = shape.batch.div_ceil(GRAD_GROUPS).max(1);
    if !bf16 && winograd::f4::gradient_applies(&shape) {
        winograd::f4::weight_gradient(x, d_out, shape, dweight);
        return;
    }
    if !bf16 && winograd::gradient_applies(&shape) {
        winograd::weight_gradient(x, d_out, shape, per_group, dweight);
        return;
    }
    let transposed = pixels >= LARGE_IMAGE || bf16;
    let groups = shape.batch.div_ceil(per_group);
    let mut partials = zeroed(groups * dweight.len());
    let inner = inner_parallelism(groups);
    let valid = ValidRanges::new(shape);
    partials
        .par_chunks_mut(dweight.len().max(1))
        .enumerate()
        .for_each_init(Vec::new, |col, (g, partial)| {
            for b in g * per_group..((g + 1) * per_group).min(shape.batch) {
                let x_b = &x[b * image_in..][..image_in];
                let dy_b = &d_out[b * image_out..][..image_out];
                let rhs = if shape.is_pointwise() {
                    x_b
                } else {
                    im2col(x_b, shape, &valid, col);
                    col.as_slice()
                };
                // partialᵀ += col dYᵀ (dYᵀ is dY read column by column), or
                // partial += dY colᵀ (colᵀ is `col` read column by column).
                let (col_t, dy) = ((rhs, 1, pixels), (dy_b, pixels, 1));
                let (dims, lhs, rhs) = if transposed {
                    (
                        (patch, shape.channels_out, pixels),
                        (rhs, pixels, 1),
                        (dy_b, 1, pixels),
                    )
                } else {
                    ((shape.channels_out, patch, pixels), dy, col_t)
                };
                product(dims, partial, b > g * per_group, lhs, rhs, inner, bf16);
            }
        });
    let sum_t = sum_partials(&mut partials, dweight.len());
    if transposed {
        dweight.copy_from_slice(&transpose(
            sum_t,
            patch,
            shape.channels_out,
            shape.channels_out,
        ));
    } else {
        dweight.copy_from_slice(sum_t);
    }
}

/// The input gradient as products into a gathered `dcol = Wᵀ dY` scattered back to `dx`
/// (strided or unpadded convolutions), or straight into `dx` (pointwise ones).
fn input_gradient(weight: &[f32], d_out: &[f32], shape: ConvShape, dx: &mut [f32], bf16: bool) {
    let (pixels, patch) = (shape.pixels(), shape.patch());
    let (image_in, image_out) = (
        shape.channels_in * shape.height * shape.width,
        shape.channels_out * pixels,
    );
    let inner = inner_parallelism(shape.batch);
    // Wᵀ once, row-major, on large images: packing a transposed operand for every image
    // costs more there (on 8x8 images the transpose costs more than it saves in f32; the bf16
    // product would copy it transposed for every image).
    let weight_t = (pixels >= LARGE_IMAGE || bf16)
        .then(|| transpose(weight, shape.channels_out, patch, patch));
    let lhs = match &weight_t {
        Some(t) => (t.as_slice(), shape.channels_out, 1),
        None => (weight, 1, patch),
    };
    let packed_weight = bf16
        .then(|| PackedLhs::new(patch, shape.channels_out, lhs.0, lhs.1, lhs.2))
        .flatten();
    let valid = ValidRanges::new(shape);
    dx.par_chunks_mut(image_in.max(1))
        .enumerate()
        .for_each_init(Vec::new, |dcol, (b, dx_b)| {
            let dy_b = &d_out[b * image_out..][..image_out];
            let pointwise = shape.is_pointwise();
            let dst: &mut [f32] = if pointwise {
                dx_b
            } else {
                // The product overwrites all of it: a reused buffer is not cleared.
                dcol.resize(patch * pixels, 0.0);
                dcol.as_mut_slice()
            };
            // dcol = Wᵀ dY.
            let rhs = (dy_b, pixels, 1);
            match &packed_weight {
                Some(w) => product_packed(w, pixels, dst, false, rhs, inner),
                None => product(
                    (patch, pixels, shape.channels_out),
                    dst,
                    false,
                    lhs,
                    rhs,
                    inner,
                    bf16,
                ),
            }
            if !pointwise {
                col2im(dcol, shape, &valid, dx_b);
            }
        });
}

/// For a stride-1 convolution with at most `kernel - 1` padding (not pointwise), the kernel
/// flipped in space with input and output channels swapped, and the shape of the convolution
/// that maps dY to dx with it.
fn transposed_as_convolution(weight: &[f32], shape: ConvShape) -> Option<(Vec<f32>, ConvShape)> {
    let (kh, kw) = (shape.kernel_h, shape.kernel_w);
    if shape.is_pointwise()
        || shape.stride != [1, 1]
        || shape.padding[0] >= kh
        || shape.padding[1] >= kw
    {
        return None;
    }
    let (c_in, c_out) = (shape.channels_in, shape.channels_out);
    // Blocks of input channels, so that reads (along `c_in`) and writes (along `c_out`) both
    // stream through memory.
    const BLOCK: usize = 16;
    let taps = kh * kw;
    let mut flipped = zeroed(weight.len());
    flipped
        .par_chunks_mut(BLOCK * c_out * taps)
        .enumerate()
        .for_each(|(block, dst)| {
            let ci0 = block * BLOCK;
            let count = dst.len() / (c_out * taps);
            for co in 0..c_out {
                for i in 0..count {
                    let src = &weight[(co * c_in + ci0 + i) * taps..][..taps];
                    let out = &mut dst[(i * c_out + co) * taps..][..taps];
                    // Flipping both axes reverses the taps' row-major order.
                    for (o, &w) in out.iter_mut().zip(src.iter().rev()) {
                        *o = w;
                    }
                }
            }
        });
    let shape_t = ConvShape {
        channels_in: c_out,
        height: shape.out_height(),
        width: shape.out_width(),
        channels_out: c_in,
        padding: [kh - 1 - shape.padding[0], kw - 1 - shape.padding[1]],
        ..shape
    };
    Some((flipped, shape_t))
}

/// For every kernel offset along each axis, the output positions that read inside the input
/// (see [`valid_range`]): computed once per convolution, not per image and channel (their
/// integer divisions showed on 8x8 images).
struct ValidRanges {
    rows: Vec<(usize, usize)>,
    cols: Vec<(usize, usize)>,
}

impl ValidRanges {
    fn new(shape: ConvShape) -> Self {
        let (h_out, w_out) = (shape.out_height(), shape.out_width());
        Self {
            rows: (0..shape.kernel_h)
                .map(|ky| valid_range(ky, shape.stride[0], shape.padding[0], shape.height, h_out))
                .collect(),
            cols: (0..shape.kernel_w)
                .map(|kx| valid_range(kx, shape.stride[1], shape.padding[1], shape.width, w_out))
                .collect(),
        }
    }
}

/// For each kernel offset `k` (in `0..kernel`) along an axis of `input` pixels, the output
/// positions whose source `o * stride + k - padding` lies inside the input.
fn valid_range(
    k: usize,
    stride: usize,
    padding: usize,
    input: usize,
    output: usize,
) -> (usize, usize) {
    // First o with o * stride + k >= padding; last with o * stride + k < input + padding.
    let first = padding.saturating_sub(k).div_ceil(stride);
    let end = if input + padding > k {
        ((input + padding - k - 1) / stride + 1).min(output)
    } else {
        0
    };
    (first.min(end), end)
}

/// `col[(c * kh + ky) * kw + kx][oy * w_out + ox] = x[c][oy * s + ky - p][ox * s + kx - p]`,
/// zero outside the input.
fn im2col(x: &[f32], shape: ConvShape, valid: &ValidRanges, col: &mut Vec<f32>) {
    let (h_out, w_out) = (shape.out_height(), shape.out_width());
    let pixels = h_out * w_out;
    // Every element is written below (padding as zeros), so a reused buffer is not cleared.
    col.resize(shape.patch() * pixels, 0.0);
    let mut rows = col.chunks_exact_mut(pixels);
    for c in 0..shape.channels_in {
        let plane = &x[c * shape.height * shape.width..][..shape.height * shape.width];
        for (ky, &(y0, y1)) in valid.rows.iter().enumerate() {
            for (kx, &(x0, x1)) in valid.cols.iter().enumerate() {
                let row = rows.next().expect("patch rows");
                row[..y0 * w_out].fill(0.0);
                row[y1 * w_out..].fill(0.0);
                if shape.stride == [1, 1] && w_out == shape.width {
                    // Output and input rows are equally long: the valid rows are the plane
                    // shifted by one offset, so they are copied at once and the columns that
                    // wrapped around are zeroed (rows of 8 or 16 pixels cost more to loop over
                    // than to copy).
                    let shift = (ky * shape.width + kx) as isize
                        - (shape.padding[0] * shape.width + shape.padding[1]) as isize;
                    let lo = (y0 * w_out).max((-shift).max(0) as usize);
                    let hi = (y1 * w_out).min((plane.len() as isize - shift) as usize);
                    if lo < hi {
                        let src = (lo as isize + shift) as usize;
                        row[lo..hi].copy_from_slice(&plane[src..src + hi - lo]);
                    }
                    if x0 > 0 || x1 < w_out {
                        for oy in y0..y1 {
                            let r = &mut row[oy * w_out..][..w_out];
                            r[..x0].fill(0.0);
                            r[x1..].fill(0.0);
                        }
                    }
                    continue;
                }
                for oy in y0..y1 {
                    let iy = oy * shape.stride[0] + ky - shape.padding[0];
                    let src = &plane[iy * shape.width..][..shape.width];
                    let dst = &mut row[oy * w_out..][..w_out];
                    dst[..x0].fill(0.0);
                    dst[x1..].fill(0.0);
                    let ix0 = x0 * shape.stride[1] + kx - shape.padding[1];
                    if shape.stride[1] == 1 {
                        dst[x0..x1].copy_from_slice(&src[ix0..ix0 + (x1 - x0)]);
                    } else {
                        for (i, d) in dst[x0..x1].iter_mut().enumerate() {
                            *d = src[ix0 + i * shape.stride[1]];
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: `dx` (overwritten) sums every `col` entry that read each pixel.
fn col2im(col: &[f32], shape: ConvShape, valid: &ValidRanges, dx: &mut [f32]) {
    let (h_out, w_out) = (shape.out_height(), shape.out_width());
    let pixels = h_out * w_out;
    dx.fill(0.0);
    let mut rows = col.chunks_exact(pixels);
    for c in 0..shape.channels_in {
        let plane = &mut dx[c * shape.height * shape.width..][..shape.height * shape.width];
        for (ky, &(y0, y1)) in valid.rows.iter().enumerate() {
            for (kx, &(x0, x1)) in valid.cols.iter().enumerate() {
                let row = rows.next().expect("patch rows");
                for oy in y0..y1 {
                    let iy = oy * shape.stride[0] + ky - shape.padding[0];
                    let dst = &mut plane[iy * shape.width..][..shape.width];
                    let src = &row[oy * w_out..][..w_out];
                    let ix0 = x0 * shape.stride[1] + kx - shape.padding[1];
                    for (i, &g) in src[x0..x1].iter().enumerate() {
                        dst[ix0 + i * shape.stride[1]] += g;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::{max_rel, on_threads, pseudo_random};

    /// Direct f64 convolution and its gradients against `d_out`.
    #[allow(clippy::type_complexity)]
    fn reference(
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        d_out: &[f32],
        s: ConvShape,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (ho, wo) = (s.out_height(), s.out_width());
        let mut out = vec![0f64; s.output_len()];
        let mut dx = vec![0f64; s.input_len()];
        let mut dw = vec![0f64; s.weight_len()];
        let mut db = vec![0f64; s.channels_out];
        for b in 0..s.batch {
            for co in 0..s.channels_out {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let o = ((b * s.channels_out + co) * ho + oy) * wo + ox;
                        let mut acc = bias[co] as f64;
                        let g = d_out[o] as f64;
                        db[co] += g;
                        for ci in 0..s.channels_in {
                            for ky in 0..s.kernel_h {
                                for kx in 0..s.kernel_w {
                                    let iy =
                                        (oy * s.stride[0] + ky) as isize - s.padding[0] as isize;
                                    let ix =
                                        (ox * s.stride[1] + kx) as isize - s.padding[1] as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= s.height as isize
                                        || ix >= s.width as isize
                                    {
                                        continue;
                                    }
                                    let xi = ((b * s.channels_in + ci) * s.height + iy as usize)
                                        * s.width
                                        + ix as usize;
                                    let wi = ((co * s.channels_in + ci) * s.kernel_h + ky)
                                        * s.kernel_w
                                        + kx;
                                    acc += x[xi] as f64 * w[wi] as f64;
                                    dx[xi] += g * w[wi] as f64;
                                    dw[wi] += g * x[xi] as f64;
                                }
                            }
                        }
                        out[o] = acc;
                    }
                }
            }
        }
        (out, dx, dw, db)
    }

    #[test]
    fn forward_and_backward_match_the_reference() {
        let shapes = [
            // 3x3 "same", odd sizes
            (3, 5, 7, 6, 4, 3, 3, [1, 1], [1, 1]),
            // stride-2 downsampling
            (2, 4, 9, 8, 3, 3, 3, [2, 2], [1, 1]),
            // pointwise, batch of one (products parallel inside)
            (1, 6, 5, 5, 7, 1, 1, [1, 1], [0, 0]),
            // no padding, non-square kernel, more images than gradient groups
            (11, 2, 6, 7, 3, 2, 3, [1, 2], [0, 1]),
            // kernel as large as the padded input
            (2, 3, 2, 2, 2, 3, 3, [1, 1], [1, 1]),
            // stride 1, non-square kernel, padding on one axis only
            (2, 3, 6, 5, 4, 2, 3, [1, 1], [0, 1]),
            // 256+ output pixels at stride 1: dx as a convolution with the flipped kernel
            (2, 3, 16, 17, 4, 3, 3, [1, 1], [1, 1]),
            (1, 2, 17, 16, 3, 2, 3, [1, 1], [0, 1]),
        ];
        for (batch, ci, h, w, co, kh, kw, stride, padding) in shapes {
            let s = ConvShape {
                batch,
                channels_in: ci,
                height: h,
                width: w,
                channels_out: co,
                kernel_h: kh,
                kernel_w: kw,
                stride,
                padding,
            };
            let x = pseudo_random(s.input_len(), 1, 1.0, 0.0);
            let wt = pseudo_random(s.weight_len(), 2, 1.0, 0.0);
            let bias = pseudo_random(co, 3, 1.0, 0.0);
            let d_out = pseudo_random(s.output_len(), 4, 1.0, 0.0);
            let (want, want_dx, want_dw, want_db) = reference(&x, &wt, &bias, &d_out, s);
            let mut out = vec![f32::NAN; s.output_len()];
            conv2d_forward(&x, &wt, Some(&bias), s, &mut out);
            assert!(max_rel(&out, &want) < 1e-5, "{s:?} forward");
            let (mut dx, mut dw, mut db) = (
                vec![f32::NAN; s.input_len()],
                vec![f32::NAN; s.weight_len()],
                vec![f32::NAN; co],
            );
            conv2d_backward(&x, &wt, &d_out, s, Some(&mut dx), &mut dw, Some(&mut db));
            assert!(max_rel(&dx, &want_dx) < 1e-5, "{s:?} dx");
            assert!(max_rel(&dw, &want_dw) < 1e-5, "{s:?} dweight");
            assert!(max_rel(&db, &want_db) < 1e-5, "{s:?} dbias");
            // Without bias the output is the bare product.
            let mut bare = vec![f32::NAN; s.output_len()];
            conv2d_forward(&x, &wt, None, s, &mut bare);
            let plane = s.out_height() * s.out_width();
            for (i, (&o, &b)) in out.iter().zip(&bare).enumerate() {
                let c = (i / plane) % co;
                assert!((o - b - bias[c]).abs() < 1e-5, "{s:?} bias at {i}");
            }
        }
    }

    /// A 3x3 convolution at stride 1.
    fn three_by_three(
        batch: usize,
        channels_in: usize,
        (height, width): (usize, usize),
        channels_out: usize,
        padding: [usize; 2],
    ) -> ConvShape {
        ConvShape {
            batch,
            channels_in,
            height,
            width,
            channels_out,
            kernel_h: 3,
            kernel_w: 3,
            stride: [1, 1],
            padding,
        }
    }

    #[test]
    fn a_new_output_holds_the_values_written_onto_a_given_one() {
        let stride_two = ConvShape {
            stride: [2, 2],
            ..three_by_three(2, 3, (9, 8), 4, [1, 1])
        };
        let shapes = [
            (
                three_by_three(1, 128, (33, 32), 136, [1, 1]),
                ConvAlgorithm::WinogradF4,
            ),
            (
                three_by_three(3, 256, (8, 8), 256, [1, 1]),
                ConvAlgorithm::WinogradF4,
            ),
            (
                three_by_three(2, 3, (16, 17), 5, [1, 1]),
                ConvAlgorithm::WinogradF2,
            ),
            (stride_two, ConvAlgorithm::Direct),
        ];
        for (s, algorithm) in shapes {
            assert_eq!(ConvAlgorithm::for_shape(&s, false), algorithm, "{s:?}");
            let x = pseudo_random(s.input_len(), 31, 1.0, 0.0);
            let wt = pseudo_random(s.weight_len(), 32, 1.0, 0.0);
            let bias = pseudo_random(s.channels_out, 33, 1.0, 0.0);
            for bias in [Some(&bias[..]), None] {
                let mut given = vec![f32::NAN; s.output_len()];
                conv2d_forward(&x, &wt, bias, s, &mut given);
                for threads in [1, 3] {
                    let new = on_threads(threads, || conv2d_output(&x, &wt, bias, s));
                    assert!(
                        new == given,
                        "{s:?} bias {} {threads} threads",
                        bias.is_some()
                    );
                }
            }
        }
    }

    #[test]
    fn winograd_matches_the_reference() {
        // (batch, c_in, (h, w), c_out, padding, images per weight-gradient group): odd and even
        // output sides, whole vector steps of tiles and tails, no padding and more than a
        // kernel's worth; the last, in F(4x4, 3x3), three blocks of product columns, images
        // across their edges.
        let shapes = [
            (2, 3, (6, 6), 4, [1, 1], 1),
            (3, 5, (7, 9), 3, [1, 1], 2),
            (5, 4, (19, 34), 5, [1, 1], 2),
            (2, 2, (9, 21), 3, [0, 0], 1),
            (1, 3, (5, 17), 2, [2, 1], 1),
            (4, 6, (33, 32), 7, [1, 0], 4),
            (9, 3, (30, 33), 2, [1, 1], 3),
        ];
        for (batch, ci, size, co, padding, per_group) in shapes {
            let s = three_by_three(batch, ci, size, co, padding);
            let x = pseudo_random(s.input_len(), 21, 1.0, 0.0);
            let wt = pseudo_random(s.weight_len(), 22, 1.0, 0.0);
            let bias = pseudo_random(co, 23, 1.0, 0.0);
            let d_out = pseudo_random(s.output_len(), 24, 1.0, 0.0);
            let (want, _, want_dw, _) = reference(&x, &wt, &bias, &d_out, s);
            for algorithm in [ConvAlgorithm::WinogradF2, ConvAlgorithm::WinogradF4] {
                let mut out = vec![f32::NAN; s.output_len()];
                conv2d_forward_with(algorithm, &x, &wt, Some(&bias), s, &mut out);
                let error = max_rel(&out, &want);
                assert!(error < 1e-5, "{algorithm:?} {s:?}: {error:e}");
                let mut bare = vec![f32::NAN; s.output_len()];
                conv2d_forward_with(algorithm, &x, &wt, None, s, &mut bare);
                let plane = s.out_height() * s.out_width();
                for (i, (&o, &b)) in out.iter().zip(&bare).enumerate() {
                    assert!(
                        (o - b - bias[(i / plane) % co]).abs() < 1e-5,
                        "{algorithm:?} {s:?} bias at {i}"
                    );
                }
            }
            let mut dw = vec![f32::NAN; s.weight_len()];
            winograd::weight_gradient(&x, &d_out, s, per_group, &mut dw);
            assert!(max_rel(&dw, &want_dw) < 1e-5, "{s:?} dweight");
            let mut dw = vec![f32::NAN; s.weight_len()];
            winograd::f4::weight_gradient(&x, &d_out, s, &mut dw);
            let error = max_rel(&dw, &want_dw);
            assert!(error < 1e-5, "{s:?} F(4x4, 3x3) dweight: {error:e}");
        }
    }

    #[test]
    fn winograd_weight_gradient_does_not_depend_on_the_thread_count() {
        let s = three_by_three(13, 5, (32, 33), 4, [1, 1]);
        assert!(
            winograd::gradient_applies(&s),
            "the backward takes this path"
        );
        let x = pseudo_random(s.input_len(), 61, 1.0, 0.0);
        let wt = pseudo_random(s.weight_len(), 62, 1.0, 0.0);
        let d_out = pseudo_random(s.output_len(), 63, 1.0, 0.0);
        let run = |threads: usize| {
            on_threads(threads, || {
                let mut dw = vec![0f32; s.weight_len()];
                let mut dx = vec![0f32; s.input_len()];
                conv2d_backward(&x, &wt, &d_out, s, Some(&mut dx), &mut dw, None);
                (dx, dw)
            })
        };
        let one = run(1);
        let (_, want_dx, want_dw, _) = reference(&x, &wt, &[0.0; 4], &d_out, s);
        assert!(max_rel(&one.0, &want_dx) < 1e-5);
        assert!(max_rel(&one.1, &want_dw) < 1e-5);
        for threads in [2, 3, 5] {
            assert_eq!(run(threads), one, "{threads} threads");
        }
        // F(4x4, 3x3)'s, which takes the shapes with more channels.
        let run = |threads: usize| {
            on_threads(threads, || {
                let mut dw = vec![0f32; s.weight_len()];
                winograd::f4::weight_gradient(&x, &d_out, s, &mut dw);
                dw
            })
        };
        let one = run(1);
        assert!(max_rel(&one, &want_dw) < 1e-5);
        for threads in [2, 3, 5] {
            assert_eq!(run(threads), one, "F(4x4, 3x3), {threads} threads");
        }
    }

    #[test]
    fn winograd_is_chosen_for_large_3x3_images_in_f32_only() {
        let shape = |size, kernel, stride, channels| ConvShape {
            batch: 2,
            channels_in: channels,
            height: size,
            width: size,
            channels_out: channels,
            kernel_h: kernel,
            kernel_w: kernel,
            stride: [stride, stride],
            padding: [kernel / 2, kernel / 2],
        };
        let chosen = |s: ConvShape, bf16| ConvAlgorithm::for_shape(&s, bf16);
        use ConvAlgorithm::{Direct, WinogradF2, WinogradF4};
        assert_eq!(chosen(shape(32, 3, 1, 4), false), WinogradF2);
        assert_eq!(chosen(shape(16, 3, 1, 4), false), WinogradF2);
        assert_eq!(chosen(shape(8, 3, 1, 4), false), Direct);
        assert_eq!(chosen(shape(32, 3, 1, 128), false), WinogradF4);
        assert_eq!(chosen(shape(16, 3, 1, 128), false), WinogradF2);
        assert_eq!(chosen(shape(8, 3, 1, 256), false), WinogradF4);
        assert_eq!(chosen(shape(4, 3, 1, 256), false), Direct);
        assert_eq!(chosen(shape(32, 3, 1, 128), true), Direct);
        assert_eq!(chosen(shape(32, 3, 2, 128), false), Direct);
        assert_eq!(chosen(shape(32, 1, 1, 128), false), Direct);
        // The weight gradient takes F(4x4, 3x3) from fewer channels.
        let f4_gradient = |s: ConvShape| winograd::f4::gradient_applies(&s);
        assert!(f4_gradient(shape(16, 3, 1, 64)) && f4_gradient(shape(8, 3, 1, 128)));
        assert!(!f4_gradient(shape(8, 3, 1, 64)) && !f4_gradient(shape(32, 3, 1, 32)));
        assert!(!f4_gradient(shape(16, 3, 2, 128)));
        let shape = |size, kernel, stride| shape(size, kernel, stride, 4);
        // The direct form stays the reference: they agree to rounding.
        let s = shape(17, 3, 1);
        let x = pseudo_random(s.input_len(), 31, 1.0, 0.0);
        let wt = pseudo_random(s.weight_len(), 32, 1.0, 0.0);
        let mut direct = vec![0f32; s.output_len()];
        conv2d_forward_with(ConvAlgorithm::Direct, &x, &wt, None, s, &mut direct);
        let direct: Vec<f64> = direct.iter().map(|&v| v as f64).collect();
        for algorithm in [ConvAlgorithm::WinogradF2, ConvAlgorithm::WinogradF4] {
            let mut fast = vec![0f32; s.output_len()];
            conv2d_forward_with(algorithm, &x, &wt, None, s, &mut fast);
            assert!(max_rel(&fast, &direct) < 1e-5, "{algorithm:?}");
        }
    }

    #[test]
    fn winograd_does_not_depend_on_the_thread_count() {
        // Fewer images than threads too (F(2x2, 3x3)'s products then split), and in F(4x4, 3x3)
        // several blocks of product columns (batch 13).
        for algorithm in [ConvAlgorithm::WinogradF2, ConvAlgorithm::WinogradF4] {
            for batch in [1, 5, 13] {
                let s = three_by_three(batch, 6, (20, 18), 5, [1, 1]);
                let x = pseudo_random(s.input_len(), 41, 1.0, 0.0);
                let wt = pseudo_random(s.weight_len(), 42, 1.0, 0.0);
                let run = |threads: usize| {
                    on_threads(threads, || {
                        let mut out = vec![0f32; s.output_len()];
                        conv2d_forward_with(algorithm, &x, &wt, None, s, &mut out);
                        out
                    })
                };
                let one = run(1);
                for threads in [2, 3, 5] {
                    assert_eq!(
                        run(threads),
                        one,
                        "{algorithm:?} batch {batch}, {threads} threads"
                    );
                }
            }
        }
    }

    #[test]
    fn bf16_products_match_the_reference_on_rounded_operands() {
        use crate::bf16::{bf16_to_f32, round_to_bf16};
        let round =
            |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| bf16_to_f32(round_to_bf16(x))).collect() };
        let conv = |batch, (c_in, c_out), (height, width), kernel: usize, stride| ConvShape {
            batch,
            channels_in: c_in,
            height,
            width,
            channels_out: c_out,
            kernel_h: kernel,
            kernel_w: kernel,
            stride: [stride, stride],
            padding: [kernel / 2, kernel / 2],
        };
        for s in [
            conv(3, (6, 5), (9, 7), 3, 1),
            conv(2, (6, 5), (9, 7), 3, 2),
            conv(1, (6, 5), (9, 7), 1, 1),
            // Patches packed from the image on AMX: an odd patch size and a 5x5 kernel, an
            // image within one vector, and two `k` blocks over several panels and micro tiles.
            conv(2, (5, 3), (6, 11), 5, 1),
            conv(1, (3, 4), (4, 3), 3, 1),
            conv(2, (64, 70), (20, 20), 3, 1),
        ] {
            let x = pseudo_random(s.input_len(), 11, 1.0, 0.0);
            let wt = pseudo_random(s.weight_len(), 12, 1.0, 0.0);
            let bias = pseudo_random(s.channels_out, 13, 1.0, 0.0);
            let d_out = pseudo_random(s.output_len(), 14, 1.0, 0.0);
            // Each product rounds both of its operands; the reference rounds them alike.
            let (want, _, _, _) = reference(&round(&x), &round(&wt), &bias, &d_out, s);
            let (_, want_dx, _, _) = reference(&x, &round(&wt), &bias, &round(&d_out), s);
            let (_, _, want_dw, _) = reference(&round(&x), &wt, &bias, &round(&d_out), s);
            let mut out = vec![f32::NAN; s.output_len()];
            forward(&x, &wt, Some(&bias), s, &mut out, true);
            assert!(max_rel(&out, &want) < 1e-5, "{s:?} forward");
            let (mut dx, mut dw) = (
                vec![f32::NAN; s.input_len()],
                vec![f32::NAN; s.weight_len()],
            );
            backward(&x, &wt, &d_out, s, Some(&mut dx), &mut dw, None, true);
            assert!(max_rel(&dx, &want_dx) < 1e-5, "{s:?} dx");
            assert!(max_rel(&dw, &want_dw) < 1e-5, "{s:?} dweight");
            // And it is bf16: the f32 result differs.
            let mut exact = vec![0f32; s.output_len()];
            forward(&x, &wt, Some(&bias), s, &mut exact, false);
            assert!(max_rel(&exact, &want) > 1e-5, "{s:?} bf16 rounding visible");
        }
    }

    #[test]
    fn gradients_do_not_depend_on_the_thread_count() {
        let s = three_by_three(13, 8, (6, 6), 5, [1, 1]);
        let x = pseudo_random(s.input_len(), 5, 1.0, 0.0);
        let wt = pseudo_random(s.weight_len(), 6, 1.0, 0.0);
        let d_out = pseudo_random(s.output_len(), 7, 1.0, 0.0);
        let run = |threads: usize| {
            on_threads(threads, || {
                let mut dw = vec![0f32; s.weight_len()];
                let mut dx = vec![0f32; s.input_len()];
                conv2d_backward(&x, &wt, &d_out, s, Some(&mut dx), &mut dw, None);
                (dx, dw)
            })
        };
        let one = run(1);
        for threads in [2, 3, 5] {
            assert_eq!(run(threads), one, "{threads} threads");
        }
    }

    #[test]
    fn bf16_gradients_do_not_depend_on_the_thread_count() {
        // Small and large images (their products take different layouts).
        for size in [6, 17] {
            let s = three_by_three(13, 8, (size, size), 5, [1, 1]);
            let x = pseudo_random(s.input_len(), 5, 1.0, 0.0);
            let wt = pseudo_random(s.weight_len(), 6, 1.0, 0.0);
            let d_out = pseudo_random(s.output_len(), 7, 1.0, 0.0);
            let run = |threads: usize| {
                on_threads(threads, || {
                    let mut dw = vec![0f32; s.weight_len()];
                    let mut dx = vec![0f32; s.input_len()];
                    backward(&x, &wt, &d_out, s, Some(&mut dx), &mut dw, None, true);
                    (dx, dw)
                })
            };
            let one = run(1);
            for threads in [2, 3, 5] {
                assert_eq!(run(threads), one, "{size}px, {threads} threads");
            }
        }
    }
}
