//! 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016): each 2x2 block of output pixels comes
//! from a 4x4 block of input with 16 multiplies per pair of channels where the direct product
//! takes 36. Input blocks and kernels are transformed (`V = Bᵀ d B`, `U = G g Gᵀ`), multiplied
//! at each of the 16 points of the transform domain and summed over input channels (16 matrix
//! products `M_e = U_e V_e`), and transformed back (`Y = Aᵀ M A`); the transforms are additions.
//!
//! Where the direct product already runs near the CPU's peak, fewer multiplies are what is
//! left to gain: 2.25x fewer here. Each image's sums run in a fixed order on
//! one task, so the results do not depend on the thread count; they differ from the direct
//! product's by rounding. Layers with more channels take [`f4`]'s F(4x4, 3x3) instead.

use rayon::prelude::*;

pub(crate) mod f4;

use crate::buffer::zeroed;
use crate::conv::ConvShape;
use crate::product::{inner_parallelism, product, sum_partials, transpose};
use crate::simd::{Simd, copy_prefix, multiversion};

/// Points of the 4x4 transform domain: one matrix product each.
const POINTS: usize = 16;

/// Output pixels per image from which the transforms and the narrower products cost less than
/// the multiplies they save. `conv_bench` on a 2-core AMD EPYC Zen 3 (AVX2), Winograd's speed
/// over the direct product: 1.6x at 32x32 (128 channels), 1.1x at 16x16 (64 and 256 channels),
/// 0.4-0.6x at 8x8, where products of 16 tiles repack `U` for too little work.
const MIN_PIXELS: usize = 256;

/// Whether this module can compute `shape`: a 3x3 kernel at stride 1 (any padding).
pub(crate) fn supports(shape: &ConvShape) -> bool {
    shape.kernel_h == 3 && shape.kernel_w == 3 && shape.stride == [1, 1]
}

/// Whether `shape` is a convolution this module computes faster than the direct product: one
/// it [`supports`] on images of at least [`MIN_PIXELS`] output pixels.
pub(crate) fn applies(shape: &ConvShape) -> bool {
    supports(shape) && shape.out_height() * shape.out_width() >= MIN_PIXELS
}

/// `out = conv(x, weight) + bias` for a shape where [`applies`] holds; buffers as
/// [`crate::conv2d_forward`]'s.
pub(crate) fn forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    shape: ConvShape,
    out: &mut [f32],
) {
    let tiling = Tiling::new(shape, 2);
    let (c_in, c_out, tiles) = (shape.channels_in, shape.channels_out, tiling.tiles());
    let u = transform_weights(weight, c_out, c_in);
    let image_in = c_in * shape.height * shape.width;
    let image_out = c_out * tiling.out_h * tiling.out_w;
    let inner = inner_parallelism(shape.batch);
    out.par_chunks_mut(image_out).enumerate().for_each_init(
        || Scratch::new(&tiling),
        |scratch, (b, out_b)| {
            transform_image_mv(&x[b * image_in..][..image_in], tiling, scratch);
            for e in 0..POINTS {
                product(
                    (c_out, tiles, c_in),
                    &mut scratch.m[e * c_out * tiles..][..c_out * tiles],
                    false,
                    (&u[e * c_out * c_in..][..c_out * c_in], c_in, 1),
                    (&scratch.v[e * c_in * tiles..][..c_in * tiles], tiles, 1),
                    inner,
                    false,
                );
            }
            untransform_image_mv(&scratch.m, tiling, bias, out_b);
        },
    );
}

/// Output pixels per image from which the weight gradient is faster this way: its products sum
/// over tiles, so smaller images give short sums into a large `[c_out, c_in]` block per point.
/// `conv_bench` on a 2-core AMD EPYC Zen 3 (AVX2): 8x128->128 at 32x32 17.8 -> 10.7 ms (1.7x),
/// 8x256->256 at 16x16 18 -> 24 ms (0.75x), 16x64->64 at 16x16 2.25 -> 2.07 ms (1.09x).
const MIN_GRADIENT_PIXELS: usize = 1024;

/// Whether [`weight_gradient`] computes `shape`'s weight gradient.
pub(crate) fn gradient_applies(shape: &ConvShape) -> bool {
    applies(shape) && shape.out_height() * shape.out_width() >= MIN_GRADIENT_PIXELS
}

/// The weight gradient of [`forward`], as its adjoint: `dU_e = Σ (A dY Aᵀ)_e V_eᵀ` over the
/// tiles of every image (one product per point), then `dW = Gᵀ dU G`. Images are summed in
/// fixed groups of `per_group`, the groups' partial sums then in order (the result does not
/// depend on the thread count). `dweight` is overwritten.
pub(crate) fn weight_gradient(
    x: &[f32],
    d_out: &[f32],
    shape: ConvShape,
    per_group: usize,
    dweight: &mut [f32],
) {
    let tiling = Tiling::new(shape, 2);
    let (c_in, c_out, tiles) = (shape.channels_in, shape.channels_out, tiling.tiles());
    let image_in = c_in * shape.height * shape.width;
    let image_out = c_out * tiling.out_h * tiling.out_w;
    let block = POINTS * c_out * c_in;
    let groups = shape.batch.div_ceil(per_group);
    let inner = inner_parallelism(groups);
    let mut partials = zeroed(groups * block);
    partials.par_chunks_mut(block).enumerate().for_each_init(
        || Scratch::new(&tiling),
        |scratch, (g, partial)| {
            let images = g * per_group..((g + 1) * per_group).min(shape.batch);
            for b in images.clone() {
                transform_image_mv(&x[b * image_in..][..image_in], tiling, scratch);
                let dy = &d_out[b * image_out..][..image_out];
                transform_gradient_mv(dy, tiling, &mut scratch.m);
                for e in 0..POINTS {
                    product(
                        (c_out, c_in, tiles),
                        &mut partial[e * c_out * c_in..][..c_out * c_in],
                        b > images.start,
                        (&scratch.m[e * c_out * tiles..][..c_out * tiles], tiles, 1),
                        (&scratch.v[e * c_in * tiles..][..c_in * tiles], 1, tiles),
                        inner,
                        false,
                    );
                }
            }
        },
    );
    let sum = sum_partials(&mut partials, block);
    let by_kernel = transpose(sum, POINTS, c_out * c_in, c_out * c_in);
    dweight
        .par_chunks_mut(9)
        .zip(by_kernel.par_chunks(POINTS))
        .for_each(|(dw, du)| dw.copy_from_slice(&untransform_kernel(du)));
}

/// How an image is cut into square output tiles of `side` pixels, and the zero-padded input
/// plane their blocks (`side + 2` pixels a side) are read from, with room for the last tile's
/// rows and columns where the output side is not a multiple of `side`.
#[derive(Clone, Copy, Debug)]
struct Tiling {
    channels_in: usize,
    channels_out: usize,
    height: usize,
    width: usize,
    padding: [usize; 2],
    out_h: usize,
    out_w: usize,
    side: usize,
    rows: usize,
    cols: usize,
}

impl Tiling {
    fn new(shape: ConvShape, side: usize) -> Self {
        let (out_h, out_w) = (shape.out_height(), shape.out_width());
        Self {
            channels_in: shape.channels_in,
            channels_out: shape.channels_out,
            height: shape.height,
            width: shape.width,
            padding: shape.padding,
            out_h,
            out_w,
            side,
            rows: out_h.div_ceil(side),
            cols: out_w.div_ceil(side),
        }
    }

    fn tiles(&self) -> usize {
        self.rows * self.cols
    }

    /// Sides of the padded plane: tile `(r, c)` reads its rows `side r..side (r + 1) + 2` and
    /// columns `side c..side (c + 1) + 2`.
    fn plane(&self) -> (usize, usize) {
        (self.side * self.rows + 2, self.side * self.cols + 2)
    }
}

struct Scratch {
    /// Transformed input: `[16][c_in][tiles]`.
    v: Vec<f32>,
    /// Products: `[16][c_out][tiles]`.
    m: Vec<f32>,
    /// One channel's padded plane; its border stays zero (every channel writes the same
    /// interior).
    plane: Vec<f32>,
    /// `Bᵀ d` of one row of blocks: four rows of the plane's width.
    strip: Vec<f32>,
}

impl Scratch {
    /// One task's buffers for images cut as `t`, kept from image to image.
    fn new(t: &Tiling) -> Self {
        let (plane_h, plane_w) = t.plane();
        Self {
            v: vec![0.0; POINTS * t.channels_in * t.tiles()],
            m: vec![0.0; POINTS * t.channels_out * t.tiles()],
            plane: vec![0.0; plane_h * plane_w],
            strip: vec![0.0; 4 * plane_w],
        }
    }
}

/// `U = G g Gᵀ` of every kernel, as 16 row-major `[c_out, c_in]` matrices, one per point.
fn transform_weights(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let mut by_kernel = zeroed(c_out * c_in * POINTS);
    by_kernel
        .par_chunks_mut(c_in * POINTS)
        .zip(weight.par_chunks(c_in * 9))
        .for_each(|(dst, kernels)| {
            for (u, g) in dst.chunks_exact_mut(POINTS).zip(kernels.chunks_exact(9)) {
                u.copy_from_slice(&transform_kernel(g));
            }
        });
    transpose(&by_kernel, c_out * c_in, POINTS, POINTS)
}

/// `G g Gᵀ` of one row-major 3x3 kernel, with `G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]`.
fn transform_kernel(g: &[f32]) -> [f32; POINTS] {
    let expand = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    let columns: [[f32; 4]; 3] = std::array::from_fn(|j| expand(g[j], g[3 + j], g[6 + j]));
    let mut u = [0f32; POINTS];
    for i in 0..4 {
        let row = expand(columns[0][i], columns[1][i], columns[2][i]);
        u[4 * i..4 * i + 4].copy_from_slice(&row);
    }
    u
}

/// `Gᵀ dU G` of one kernel's 4x4 gradient: the adjoint of [`transform_kernel`].
fn untransform_kernel(du: &[f32]) -> [f32; 9] {
    let reduce = |u0: f32, u1: f32, u2: f32, u3: f32| {
        [u0 + 0.5 * (u1 + u2), 0.5 * (u1 - u2), 0.5 * (u1 + u2) + u3]
    };
    let columns: [[f32; 3]; 4] =
        std::array::from_fn(|j| reduce(du[j], du[4 + j], du[8 + j], du[12 + j]));
    let mut g = [0f32; 9];
    for a in 0..3 {
        let row = reduce(columns[0][a], columns[1][a], columns[2][a], columns[3][a]);
        g[3 * a..3 * a + 3].copy_from_slice(&row);
    }
    g
}

multiversion!(fn transform_gradient_mv(d_out: &[f32], t: Tiling, m: &mut [f32]) => transform_gradient);

/// `A dY Aᵀ` of every 2x2 tile of one image's output gradient (pixels outside the image are
/// zero), into the `[16][c_out][tiles]` layout of the products: the adjoint of
/// [`untransform_image`].
#[inline(always)]
fn transform_gradient<S: Simd>(d_out: &[f32], t: Tiling, m: &mut [f32]) {
    let (tiles, cols) = (t.tiles(), t.cols);
    let (out_h, out_w) = (t.out_h, t.out_w);
    // Tiles whose 2x2 pixels all lie in the image, in whole vector steps.
    let full = cols.min(out_w / 2) / STEP * STEP;
    for o in 0..t.channels_out {
        let plane = &d_out[o * out_h * out_w..][..out_h * out_w];
        for tr in 0..t.rows {
            let y = 2 * tr;
            let top = &plane[y * out_w..][..out_w];
            let bottom = (y + 1 < out_h).then(|| &plane[(y + 1) * out_w..][..out_w]);
            let at = |e: usize, tc: usize| (e * t.channels_out + o) * tiles + tr * cols + tc;
            for t0 in (0..full).step_by(STEP) {
                let top: &[f32; 2 * STEP] = top[2 * t0..][..2 * STEP].try_into().unwrap();
                let bottom: [f32; 2 * STEP] = bottom.map_or([0.0; 2 * STEP], |row| {
                    row[2 * t0..][..2 * STEP].try_into().unwrap()
                });
                let mut points = [[0f32; STEP]; POINTS];
                for l in 0..STEP {
                    let pixels = [
                        [top[2 * l], top[2 * l + 1]],
                        [bottom[2 * l], bottom[2 * l + 1]],
                    ];
                    for (e, value) in gradient_tile(pixels).into_iter().enumerate() {
                        points[e][l] = value;
                    }
                }
                for (e, values) in points.iter().enumerate() {
                    m[at(e, t0)..][..STEP].copy_from_slice(values);
                }
            }
            let pixel = |row: &[f32], x: usize| if x < out_w { row[x] } else { 0.0 };
            for tc in full..cols {
                let x = 2 * tc;
                let y0 = [pixel(top, x), pixel(top, x + 1)];
                let y1 = bottom.map_or([0.0; 2], |row| [pixel(row, x), pixel(row, x + 1)]);
                for (e, value) in gradient_tile([y0, y1]).into_iter().enumerate() {
                    m[at(e, tc)] = value;
                }
            }
        }
    }
}

/// `A y Aᵀ` of one tile's 2x2 pixels, with A's rows `[1, 0], [1, 1], [1, -1], [0, -1]`.
#[inline(always)]
fn gradient_tile([y0, y1]: [[f32; 2]; 2]) -> [f32; POINTS] {
    let down = [
        y0,
        [y0[0] + y1[0], y0[1] + y1[1]],
        [y0[0] - y1[0], y0[1] - y1[1]],
        [-y1[0], -y1[1]],
    ];
    let mut out = [0f32; POINTS];
    for (i, [a, b]) in down.into_iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&[a, a + b, a - b, -b]);
    }
    out
}

multiversion!(fn transform_image_mv(x_b: &[f32], t: Tiling, scratch: &mut Scratch) => transform_image);

/// Tiles per vector step of the transforms.
const STEP: usize = 8;

/// `V = Bᵀ d B` of every 4x4 input block `d` of one image, with
/// `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`, into `scratch.v`.
#[inline(always)]
fn transform_image<S: Simd>(x_b: &[f32], t: Tiling, scratch: &mut Scratch) {
    let (plane_h, plane_w) = t.plane();
    let (tiles, cols) = (t.tiles(), t.cols);
    let [pad_h, pad_w] = t.padding;
    // The input rows and columns that land inside the plane.
    let (rows_in, cols_in) = (
        t.height.min(plane_h.saturating_sub(pad_h)),
        t.width.min(plane_w.saturating_sub(pad_w)),
    );
    let Scratch {
        v, plane, strip, ..
    } = scratch;
    for c in 0..t.channels_in {
        let channel = &x_b[c * t.height * t.width..][..t.height * t.width];
        for r in 0..rows_in {
            let row = &mut plane[(r + pad_h) * plane_w + pad_w..];
            copy_prefix(row, &channel[r * t.width..][..cols_in]);
        }
        for tr in 0..t.rows {
            let block_rows = &plane[2 * tr * plane_w..][..4 * plane_w];
            let (d0, rest) = block_rows.split_at(plane_w);
            let (d1, rest) = rest.split_at(plane_w);
            let (d2, d3) = rest.split_at(plane_w);
            // Bᵀ d for the whole strip of blocks at once.
            let (s0, rest) = strip.split_at_mut(plane_w);
            let (s1, rest) = rest.split_at_mut(plane_w);
            let (s2, s3) = rest.split_at_mut(plane_w);
            for x in 0..plane_w {
                s0[x] = d0[x] - d2[x];
                s1[x] = d1[x] + d2[x];
                s2[x] = d2[x] - d1[x];
                s3[x] = d1[x] - d3[x];
            }
            // (Bᵀ d) B: point (i, j) of every block in the row, from row i of the strip.
            for (e, v_e) in v.chunks_exact_mut(t.channels_in * tiles).enumerate() {
                let s = &strip[(e / 4) * plane_w..][..plane_w];
                let dst = &mut v_e[c * tiles + tr * cols..][..cols];
                match e % 4 {
                    0 => per_tile(dst, s, |q| q[0] - q[2]),
                    1 => per_tile(dst, s, |q| q[1] + q[2]),
                    2 => per_tile(dst, s, |q| q[2] - q[1]),
                    _ => per_tile(dst, s, |q| q[1] - q[3]),
                }
            }
        }
    }
}

/// `dst[t] = f(s[2t..2t + 4])` for every tile `t` of a row, [`STEP`] tiles per vector step.
#[inline(always)]
fn per_tile(dst: &mut [f32], s: &[f32], f: impl Fn([f32; 4]) -> f32) {
    let full = dst.len() / STEP * STEP;
    let (body, tail) = dst.split_at_mut(full);
    for (k, out) in body.chunks_exact_mut(STEP).enumerate() {
        let q: &[f32; 2 * STEP + 2] = s[2 * k * STEP..][..2 * STEP + 2].try_into().unwrap();
        for l in 0..STEP {
            out[l] = f([q[2 * l], q[2 * l + 1], q[2 * l + 2], q[2 * l + 3]]);
        }
    }
    for (l, out) in tail.iter_mut().enumerate() {
        let x = 2 * (full + l);
        *out = f([s[x], s[x + 1], s[x + 2], s[x + 3]]);
    }
}

multiversion!(fn untransform_image_mv(m: &[f32], t: Tiling, bias: Option<&[f32]>, out_b: &mut [f32]) => untransform_image);

/// `Y = Aᵀ M A` of every tile's products, with `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`, plus the
/// bias, into one image's output (the last row and column of tiles cut where a side is odd).
#[inline(always)]
fn untransform_image<S: Simd>(m: &[f32], t: Tiling, bias: Option<&[f32]>, out_b: &mut [f32]) {
    let tiles = t.tiles();
    let (out_h, out_w) = (t.out_h, t.out_w);
    // Tiles whose 2x2 pixels all lie in the image, in whole vector steps.
    let full = t.cols.min(out_w / 2) / STEP * STEP;
    for o in 0..t.channels_out {
        let b = bias.map_or(0.0, |bias| bias[o]);
        let plane = &mut out_b[o * out_h * out_w..][..out_h * out_w];
        for tr in 0..t.rows {
            let point: [&[f32]; POINTS] = std::array::from_fn(|e| {
                &m[(e * t.channels_out + o) * tiles + tr * t.cols..][..t.cols]
            });
            let y = 2 * tr;
            let (top, bottom) = plane[y * out_w..].split_at_mut(out_w);
            let mut bottom = (y + 1 < out_h).then(move || &mut bottom[..out_w]);
            for t0 in (0..full).step_by(STEP) {
                let p: [&[f32; STEP]; POINTS] =
                    std::array::from_fn(|e| point[e][t0..t0 + STEP].try_into().unwrap());
                let [y00, y01, y10, y11] = output_tiles(&p, b);
                let top: &mut [f32; 2 * STEP] =
                    (&mut top[2 * t0..][..2 * STEP]).try_into().unwrap();
                for l in 0..STEP {
                    top[2 * l] = y00[l];
                    top[2 * l + 1] = y01[l];
                }
                if let Some(bottom) = bottom.as_deref_mut() {
                    let bottom: &mut [f32; 2 * STEP] =
                        (&mut bottom[2 * t0..][..2 * STEP]).try_into().unwrap();
                    for l in 0..STEP {
                        bottom[2 * l] = y10[l];
                        bottom[2 * l + 1] = y11[l];
                    }
                }
            }
            write_tiles(&point, b, top, bottom, full..t.cols);
        }
    }
}

/// `Aᵀ M A + bias` of [`STEP`] tiles at once: their top-left, top-right, bottom-left and
/// bottom-right pixels.
#[inline(always)]
fn output_tiles(p: &[&[f32; STEP]; POINTS], bias: f32) -> [[f32; STEP]; 4] {
    let mut y = [[0f32; STEP]; 4];
    for l in 0..STEP {
        let pixels = output_tile(std::array::from_fn(|e| p[e][l]), bias);
        for (corner, value) in pixels.into_iter().enumerate() {
            y[corner][l] = value;
        }
    }
    y
}

/// `Aᵀ m A + bias` of one tile, with `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`: its top-left,
/// top-right, bottom-left and bottom-right pixels.
#[inline(always)]
fn output_tile(m: [f32; POINTS], bias: f32) -> [f32; 4] {
    let a: [f32; 4] = std::array::from_fn(|j| m[j] + m[4 + j] + m[8 + j]);
    let c: [f32; 4] = std::array::from_fn(|j| m[4 + j] - m[8 + j] - m[12 + j]);
    [
        a[0] + a[1] + a[2] + bias,
        a[1] - a[2] - a[3] + bias,
        c[0] + c[1] + c[2] + bias,
        c[1] - c[2] - c[3] + bias,
    ]
}

/// The tiles `range` of one row, one by one (the part the vector steps leave): `top` and
/// (unless cut) `bottom` are the two output rows the row of tiles covers.
fn write_tiles(
    point: &[&[f32]; POINTS],
    bias: f32,
    top: &mut [f32],
    mut bottom: Option<&mut [f32]>,
    range: std::ops::Range<usize>,
) {
    let width = top.len();
    for tc in range {
        let [y00, y01, y10, y11] = output_tile(std::array::from_fn(|e| point[e][tc]), bias);
        let x = 2 * tc;
        top[x] = y00;
        if let Some(bottom) = bottom.as_deref_mut() {
            bottom[x] = y10;
        }
        if x + 1 < width {
            top[x + 1] = y01;
            if let Some(bottom) = bottom.as_deref_mut() {
                bottom[x + 1] = y11;
            }
        }
    }
}
