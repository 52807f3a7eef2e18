//! Winograd's F(4x4, 3x3) (Lavin and Gray's matrices, interpolation points 0, ±1, ±2 and ∞):
//! each 4x4 block of output pixels comes from a 6x6 block of input with 36 multiplies per pair
//! of channels, where the direct product takes 144 and F(2x2, 3x3) 64 (1.78x fewer than
//! [`super`]'s). Its images have a quarter as many tiles, too few for a wide product each, so
//! the products take the tiles of the whole batch as their columns: one product per point and
//! block of columns (whole rows of tiles), each summed on one task in a fixed order, so the
//! results do not depend on the thread count.

use gemm::Parallelism;
use rayon::prelude::*;

use super::Tiling;
use crate::buffer::{filled_in_blocks, zeroed};
use crate::conv::ConvShape;
use crate::product::product;
use crate::simd::{Simd, copy_prefix, copy_short, multiversion};

/// Side of an output tile.
const OUT: usize = 4;
/// Side of an input block and of the transform domain.
const SIDE: usize = OUT + 2;
/// Points of the 6x6 transform domain: one matrix product each.
const POINTS: usize = SIDE * SIDE;
/// Tiles per vector step of the transforms.
const STEP: usize = 8;
/// Columns per product, at least (rounded down to whole rows of tiles): enough that repacking
/// the point's `U` is a small part of each product.
const BLOCK_COLUMNS: usize = 256;

/// Whether `shape` is a convolution this module computes faster than F(2x2, 3x3) and the
/// direct product: one [`super::supports`], with enough channels for its image size. Its
/// transforms cost per channel and its products per pair of channels, so the more channels
/// (harmonic mean of in and out), the smaller the images from which it pays. Forward times on a
/// 2-core AMD EPYC Zen 1 (AVX2), `--example conv_bench` and single shapes, F(4x4) against the
/// better of the others: 128 channels at 32x32 1.27-1.37x, at 16x16 0.97x; 64 at 32x32 0.93x;
/// 256 at 16x16 1.27-1.4x, at 8x8 1.18x (batch 8) and 1.4x (batch 16); 512 at 8x8 1.66x, at
/// 4x4 1.0x.
pub(crate) fn applies(shape: &ConvShape) -> bool {
    let channels = harmonic_channels(shape);
    let pixels = shape.out_height() * shape.out_width();
    super::supports(shape) && (channels >= 256 && pixels >= 64 || channels >= 128 && pixels >= 1024)
}

/// Whether [`weight_gradient`] computes `shape`'s weight gradient: from fewer channels than the
/// forward, its products summing over the tiles of the whole batch. Times on the 2-core Zen 1
/// against the weight gradient taken otherwise (F(2x2, 3x3) from 32x32, else direct), batch 8
/// and 16: 64 channels at 32x32 1.1x, at 16x16 1.17x, at 8x8 0.7-0.9x; 32 at 32x32 0.9x; 96 at
/// 16x16 1.5x; 128 at 16x16 1.8x, at 8x8 1.25x; 256 at 16x16 2.3x.
pub(crate) fn gradient_applies(shape: &ConvShape) -> bool {
    let pixels = shape.out_height() * shape.out_width();
    let channels = harmonic_channels(shape);
    super::supports(shape) && (channels >= 64 && pixels >= 256 || channels >= 128 && pixels >= 64)
}

/// The harmonic mean of a convolution's input and output channels: where its transforms (per
/// channel) and products (per pair of channels) stand against each other.
fn harmonic_channels(shape: &ConvShape) -> usize {
    let (c_in, c_out) = (shape.channels_in, shape.channels_out);
    2 * c_in * c_out / (c_in + c_out).max(1)
}

/// `out = conv(x, weight) + bias` for a 3x3 kernel at stride 1; buffers as
/// [`crate::conv2d_forward`]'s.
pub(crate) fn forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    shape: ConvShape,
    out: &mut [f32],
) {
    let (tiling, columns, m) = transformed_products(x, weight, shape);
    out.par_chunks_mut(tiling.out_h * tiling.out_w)
        .enumerate()
        .for_each(|(image_channel, out_plane)| {
            untransform_plane(&m, (tiling, columns), bias, image_channel, out_plane)
        });
}

/// [`forward`] into a new buffer, each output plane zeroed in cache just before it is written.
pub(crate) fn forward_into_new(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    shape: ConvShape,
) -> Vec<f32> {
    let (tiling, columns, m) = transformed_products(x, weight, shape);
    let plane = tiling.out_h * tiling.out_w;
    filled_in_blocks(
        shape.output_len(),
        plane,
        &[0.0],
        |image_channel, out_plane| {
            untransform_plane(&m, (tiling, columns), bias, image_channel, out_plane)
        },
    )
    .0
}

/// The tiling, the columns and `M`: the 36 points' products of transformed weights and inputs.
fn transformed_products(
    x: &[f32],
    weight: &[f32],
    shape: ConvShape,
) -> (Tiling, Columns, Vec<f32>) {
    let tiling = Tiling::new(shape, OUT);
    let columns = Columns::new(&tiling, shape.batch);
    let (c_in, c_out) = (shape.channels_in, shape.channels_out);
    let u = transform_weights(weight, c_out, c_in);
    let v = transform_input(x, tiling, columns);
    // Each point's products overwrite their part, zeroed in cache just before.
    let m = filled_in_blocks(
        POINTS * c_out * columns.n,
        c_out * columns.n,
        &[0.0],
        |e, m_e| {
            columns
                .split(m_e, c_out, e)
                .into_par_iter()
                .for_each(|(e, k, dst)| {
                    let width = columns.block_width(k);
                    product(
                        (c_out, width, c_in),
                        dst,
                        false,
                        (&u[e * c_out * c_in..][..c_out * c_in], c_in, 1),
                        (
                            &v[columns.block_start(c_in, e, k)..][..c_in * width],
                            width,
                            1,
                        ),
                        Parallelism::None,
                        false,
                    );
                })
        },
    )
    .0;
    (tiling, columns, m)
}

/// Output plane `image_channel` (image `b`, channel `o`) from `M`, plus channel `o`'s bias.
fn untransform_plane(
    m: &[f32],
    (tiling, columns): (Tiling, Columns),
    bias: Option<&[f32]>,
    image_channel: usize,
    out_plane: &mut [f32],
) {
    let c_out = tiling.channels_out;
    let (b, o) = (image_channel / c_out, image_channel % c_out);
    let bias = bias.map_or(0.0, |bias| bias[o]);
    untransform_channel_mv(m, tiling, columns, (b, o), bias, out_plane);
}

/// Where the products' columns lie: tile `t` of image `b` is column `b * tiles + t`, and each
/// point's `[channels, n]` matrix is cut into blocks of `width` columns (whole rows of tiles),
/// each stored as a row-major `[channels, block width]` matrix of its own: the operand or
/// output of one product.
#[derive(Clone, Copy, Debug)]
struct Columns {
    n: usize,
    width: usize,
    tiles: usize,
    tiles_per_row: usize,
}

impl Columns {
    fn new(t: &Tiling, batch: usize) -> Self {
        let per_row = t.cols.max(1);
        Self {
            n: batch * t.tiles(),
            width: per_row * (BLOCK_COLUMNS / per_row).max(1),
            tiles: t.tiles(),
            tiles_per_row: t.cols,
        }
    }

    fn block_width(&self, k: usize) -> usize {
        self.width.min(self.n - k * self.width)
    }

    /// Where block `k` of point `e` starts in a buffer of `channels` rows.
    fn block_start(&self, channels: usize, e: usize, k: usize) -> usize {
        (e * self.n + k * self.width) * channels
    }

    /// Where row `c` of each point holds tile row `tr` of image `b` (`tiles_per_row` values).
    fn tile_rows(&self, channels: usize, c: usize, (b, tr): (usize, usize)) -> [usize; POINTS] {
        let col = b * self.tiles + tr * self.tiles_per_row;
        let k = col / self.width;
        let in_block = c * self.block_width(k) + col % self.width;
        let mut at = [0; POINTS];
        for (e, at) in at.iter_mut().enumerate() {
            *at = self.block_start(channels, e, k) + in_block;
        }
        at
    }

    /// Point `e`'s part `m_e` of a buffer of `channels` rows, cut into its blocks.
    fn split(self, m_e: &mut [f32], channels: usize, e: usize) -> Vec<(usize, usize, &mut [f32])> {
        let mut blocks = Vec::new();
        let mut rest = m_e;
        for k in 0..self.n.div_ceil(self.width) {
            let (block, tail) = rest.split_at_mut(channels * self.block_width(k));
            blocks.push((e, k, block));
            rest = tail;
        }
        blocks
    }
}

/// Kernels transformed per task in [`transform_weights`].
const KERNEL_BLOCK: usize = 512;

/// `U = G g Gᵀ` of every kernel, as 36 row-major `[c_out, c_in]` matrices, one per point.
fn transform_weights(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let kernels = c_out * c_in;
    // SAFETY: the blocks cover every kernel at every point.
    unsafe {
        filled(POINTS * kernels, |dst| {
            weight
                .par_chunks(9 * KERNEL_BLOCK)
                .enumerate()
                .for_each(|(block, g)| transform_kernels_mv(g, block * KERNEL_BLOCK, kernels, dst))
        })
    }
}

multiversion!(fn transform_kernels_mv(g: &[f32], first: usize, kernels: usize, dst: SharedOut) => transform_kernels);

/// `G g Gᵀ` of the row-major 3x3 kernels `g` (kernels `first..` of `kernels`), [`STEP`] at a
/// time, into each point's matrix.
#[inline(always)]
fn transform_kernels<S: Simd>(g: &[f32], first: usize, kernels: usize, dst: SharedOut) {
    let count = g.len() / 9;
    for i0 in (0..count).step_by(STEP) {
        let lanes = STEP.min(count - i0);
        let mut taps = [Lanes([0.0; STEP]); 9];
        for (l, kernel) in g[9 * i0..][..9 * lanes].chunks_exact(9).enumerate() {
            for (tap, &value) in taps.iter_mut().zip(kernel) {
                tap.0[l] = value;
            }
        }
        let mut columns = [[Lanes([0.0; STEP]); SIDE]; 3];
        for (j, column) in columns.iter_mut().enumerate() {
            *column = kernel_rows::<S>([taps[j], taps[3 + j], taps[6 + j]]);
        }
        for i in 0..SIDE {
            let row = kernel_rows::<S>([columns[0][i], columns[1][i], columns[2][i]]);
            for (k, values) in row.iter().enumerate() {
                let at = (SIDE * i + k) * kernels + first + i0;
                // SAFETY: these kernels, at each point, are this task's alone.
                unsafe { write_run(dst, at, values, lanes) };
            }
        }
    }
}

/// `G g` of one column `g` of a kernel, with `G`'s rows `[1/4, 0, 0]`, `[-1/6, -1/6, -1/6]`,
/// `[-1/6, 1/6, -1/6]`, `[1/24, 1/12, 1/6]`, `[1/24, -1/12, 1/6]` and `[0, 0, 1]`.
#[inline(always)]
fn kernel_rows<S: Simd>([a, b, c]: [Lanes; 3]) -> [Lanes; SIDE] {
    const SIXTH: f32 = 1.0 / 6.0;
    let (outer, quarter) = (a + c, a.scaled_add::<S>(0.25, c));
    [
        a.scaled(0.25),
        (outer + b).scaled(-SIXTH),
        (outer - b).scaled(-SIXTH),
        b.scaled_add::<S>(0.5, quarter).scaled(SIXTH),
        b.scaled_add::<S>(-0.5, quarter).scaled(SIXTH),
        c,
    ]
}

/// [`STEP`] tiles' values, one per lane: the transforms' arithmetic runs on these whole, so
/// that each operation is one vector instruction (two on AVX2).
#[derive(Clone, Copy)]
struct Lanes([f32; STEP]);

impl Lanes {
    /// The first [`STEP`] values of `s`.
    #[inline(always)]
    fn load(s: &[f32]) -> Self {
        Self(s[..STEP].try_into().unwrap())
    }

    /// The first `count` values of `s`, zeros after.
    #[inline(always)]
    fn load_first(s: &[f32], count: usize) -> Self {
        let mut lanes = [0f32; STEP];
        copy_prefix(&mut lanes, &s[..count]);
        Self(lanes)
    }

    /// `c self`.
    #[inline(always)]
    fn scaled(self, c: f32) -> Self {
        let mut out = self.0;
        for value in &mut out {
            *value *= c;
        }
        Self(out)
    }

    /// `c self + other`, fused where the target has FMA.
    #[inline(always)]
    fn scaled_add<S: Simd>(self, c: f32, other: Self) -> Self {
        let mut out = other.0;
        for l in 0..STEP {
            out[l] = S::fma(c, self.0[l], out[l]);
        }
        Self(out)
    }
}

// The lane loops are written out (no closures): a closure may be compiled apart from the
// function with the target's features, and `mul_add` there calls libm.
impl std::ops::Add for Lanes {
    type Output = Self;
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        let mut out = self.0;
        for l in 0..STEP {
            out[l] += other.0[l];
        }
        Self(out)
    }
}

impl std::ops::Sub for Lanes {
    type Output = Self;
    #[inline(always)]
    fn sub(self, other: Self) -> Self {
        let mut out = self.0;
        for l in 0..STEP {
            out[l] -= other.0[l];
        }
        Self(out)
    }
}

/// `Bᵀ d` of one column `d` of an input block, with `Bᵀ`'s rows `[4, 0, -5, 0, 1, 0]`,
/// `[0, -4, -4, 1, 1, 0]`, `[0, 4, -4, -1, 1, 0]`, `[0, -2, -1, 2, 1, 0]`, `[0, 2, -1, -2, 1, 0]`
/// and `[0, 4, 0, -5, 0, 1]`.
#[inline(always)]
fn input_rows<S: Simd>([d0, d1, d2, d3, d4, d5]: [Lanes; SIDE]) -> [Lanes; SIDE] {
    let (d3_d1, d4_d2) = (d3 - d1, d4 - d2);
    [
        d2.scaled_add::<S>(-5.0, d0.scaled_add::<S>(4.0, d4)),
        (d1 + d2).scaled_add::<S>(-4.0, d3 + d4),
        (d1 - d2).scaled_add::<S>(4.0, d4 - d3),
        d3_d1.scaled_add::<S>(2.0, d4_d2),
        d3_d1.scaled_add::<S>(-2.0, d4_d2),
        d3.scaled_add::<S>(-5.0, d1.scaled_add::<S>(4.0, d5)),
    ]
}

/// `Aᵀ m` of one column `m` of a tile's products, with `Aᵀ`'s rows `[1, 1, 1, 1, 1, 0]`,
/// `[0, 1, -1, 2, -2, 0]`, `[0, 1, 1, 4, 4, 0]` and `[0, 1, -1, 8, -8, 1]`.
#[inline(always)]
fn output_rows<S: Simd>([m0, m1, m2, m3, m4, m5]: [Lanes; SIDE]) -> [Lanes; OUT] {
    let (sum12, diff12, sum34, diff34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [
        m0 + sum12 + sum34,
        diff34.scaled_add::<S>(2.0, diff12),
        sum34.scaled_add::<S>(4.0, sum12),
        diff34.scaled_add::<S>(8.0, diff12) + m5,
    ]
}

/// `V = Bᵀ d B` of every input block of every image, in the products' column layout: the
/// `[36][c_in][n]` right operands.
fn transform_input(x: &[f32], t: Tiling, columns: Columns) -> Vec<f32> {
    let plane = t.height * t.width;
    // SAFETY: every (image, channel) writes its tiles' columns of its row at every point: all
    // the values (checked by the tests against the direct product).
    unsafe {
        filled(POINTS * t.channels_in * columns.n, |dst| {
            x.par_chunks(plane).enumerate().for_each_init(
                || Scratch::new(&t),
                |scratch, (image_channel, channel)| {
                    let b_c = (image_channel / t.channels_in, image_channel % t.channels_in);
                    transform_channel_mv(channel, t, columns, b_c, dst, scratch);
                },
            )
        })
    }
}

/// A buffer of `len` values, every one written by `fill` through the pointer it is given.
///
/// # Safety
/// `fill` writes all `len` values, each inside the buffer.
unsafe fn filled(len: usize, fill: impl FnOnce(SharedOut)) -> Vec<f32> {
    let mut values = Vec::with_capacity(len);
    fill(SharedOut(values.as_mut_ptr()));
    // SAFETY: the caller's contract.
    unsafe { values.set_len(len) };
    values
}

/// A buffer that tasks write at disjoint places through a raw pointer.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements only.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Element `i` (inside the buffer: the caller's to check).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// One task's buffers, kept from channel to channel, with room for vector steps to read past
/// the data's end.
struct Scratch {
    /// One channel's zero-padded plane (`plane_w` a row, [`STEP`] values to spare); its border
    /// stays zero (every channel writes the same interior).
    plane: Vec<f32>,
    /// `Bᵀ d` of one row of blocks: six rows of `stride` values, room for whole vector steps of
    /// tiles (the values past the plane's width only reach lanes that are not written out).
    strip: Vec<f32>,
    stride: usize,
}

impl Scratch {
    fn new(t: &Tiling) -> Self {
        let (plane_h, plane_w) = t.plane();
        let steps_w = OUT * t.cols.next_multiple_of(STEP) + SIDE - OUT;
        let stride = plane_w.max(steps_w).next_multiple_of(STEP);
        Self {
            plane: vec![0.0; plane_h * plane_w + STEP],
            strip: vec![0.0; SIDE * stride],
            stride,
        }
    }
}

multiversion!(fn transform_channel_mv(channel: &[f32], t: Tiling, columns: Columns, b_c: (usize, usize), dst: SharedOut, scratch: &mut Scratch) => transform_channel);

/// `Bᵀ d B` of the blocks of channel `c` of image `b`, written to its row of every point.
#[inline(always)]
fn transform_channel<S: Simd>(
    channel: &[f32],
    t: Tiling,
    columns: Columns,
    (b, c): (usize, usize),
    dst: SharedOut,
    scratch: &mut Scratch,
) {
    let (plane_h, plane_w) = t.plane();
    let [pad_h, pad_w] = t.padding;
    let rows_in = t.height.min(plane_h.saturating_sub(pad_h));
    let cols_in = t.width.min(plane_w.saturating_sub(pad_w));
    let Scratch {
        plane,
        strip,
        stride,
    } = scratch;
    for r in 0..rows_in {
        let row = &mut plane[(r + pad_h) * plane_w + pad_w..];
        copy_prefix(row, &channel[r * t.width..][..cols_in]);
    }
    for tr in 0..t.rows {
        let block = &plane[OUT * tr * plane_w..];
        for x0 in (0..plane_w).step_by(STEP) {
            let mut d = [Lanes([0.0; STEP]); SIDE];
            for (j, d_j) in d.iter_mut().enumerate() {
                *d_j = Lanes::load(&block[j * plane_w + x0..]);
            }
            let rows = input_rows::<S>(d);
            for (i, row) in rows.iter().enumerate() {
                strip[i * *stride + x0..][..STEP].copy_from_slice(&row.0);
            }
        }
        let at = columns.tile_rows(t.channels_in, c, (b, tr));
        for (i, at_i) in at.chunks_exact(SIDE).enumerate() {
            let row = &strip[i * *stride..][..*stride];
            transform_row::<S>(row, t.cols, at_i.try_into().unwrap(), dst);
        }
    }
}

/// `(Bᵀ d) B` of one row of a strip for every tile of the row (`tiles` of them; tile `tc`
/// reads columns `4 tc..4 tc + 6`), to point `(i, k)`'s run at `at[k]`.
#[inline(always)]
fn transform_row<S: Simd>(row: &[f32], tiles: usize, at: [usize; SIDE], dst: SharedOut) {
    for t0 in (0..tiles).step_by(STEP) {
        let columns: &[f32; OUT * STEP + SIDE - OUT] = row[OUT * t0..][..OUT * STEP + SIDE - OUT]
            .try_into()
            .unwrap();
        let mut taps = [Lanes([0.0; STEP]); SIDE];
        for (j, tap) in taps.iter_mut().enumerate() {
            for l in 0..STEP {
                tap.0[l] = columns[OUT * l + j];
            }
        }
        let count = STEP.min(tiles - t0);
        for (k, values) in input_rows::<S>(taps).iter().enumerate() {
            // SAFETY: this run belongs to this task's (image, channel) row alone.
            unsafe { write_run(dst, at[k] + t0, values, count) };
        }
    }
}

/// Copies the first `count` lanes of `values` to `dst` from `at`, as fixed-size copies (which
/// compile to vector stores rather than a call to `memcpy`).
///
/// # Safety
/// The run lies inside `dst`'s buffer and no other task writes it.
#[inline(always)]
unsafe fn write_run(dst: SharedOut, at: usize, values: &Lanes, count: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        if count == STEP {
            std::ptr::copy_nonoverlapping(values.0.as_ptr(), dst.at(at), STEP)
        } else {
            copy_short(values.0.as_ptr(), dst.at(at), count)
        }
    }
}

multiversion!(fn untransform_channel_mv(m: &[f32], t: Tiling, columns: Columns, b_o: (usize, usize), bias: f32, out: &mut [f32]) => untransform_channel);

/// `Y = Aᵀ M A + bias` of every tile of channel `o` of image `b`, into its output plane (the
/// last row and column of tiles cut where a side is not a multiple of 4).
#[inline(always)]
fn untransform_channel<S: Simd>(
    m: &[f32],
    t: Tiling,
    columns: Columns,
    (b, o): (usize, usize),
    bias: f32,
    out: &mut [f32],
) {
    let (out_h, out_w) = (t.out_h, t.out_w);
    for tr in 0..t.rows {
        let starts = columns.tile_rows(t.channels_out, o, (b, tr));
        let (y0, rows) = (OUT * tr, OUT.min(out_h - OUT * tr));
        for t0 in (0..t.cols).step_by(STEP) {
            let count = STEP.min(t.cols - t0);
            let mut point = [Lanes([0.0; STEP]); POINTS];
            for (e, lanes) in point.iter_mut().enumerate() {
                let run = &m[starts[e] + t0..];
                *lanes = if count == STEP {
                    Lanes::load(run)
                } else {
                    Lanes::load_first(run, count)
                };
            }
            let tile = output_tiles::<S>(&point, bias);
            let x0 = OUT * t0;
            let width = (OUT * count).min(out_w - x0);
            for (a, pixels) in tile.iter().enumerate().take(rows) {
                let mut interleaved = [0f32; OUT * STEP];
                for l in 0..STEP {
                    for c in 0..OUT {
                        interleaved[OUT * l + c] = pixels[c].0[l];
                    }
                }
                let row = &mut out[(y0 + a) * out_w + x0..];
                if width == OUT * STEP {
                    row[..OUT * STEP].copy_from_slice(&interleaved);
                } else {
                    copy_prefix(row, &interleaved[..width]);
                }
            }
        }
    }
}

/// Column `k` of the row-major 6x6 grid `m`. A loop, not `array::map`: its closure is compiled
/// outside the caller's target features, and its result copied through `memcpy`.
#[inline(always)]
fn grid_column(m: &[Lanes; POINTS], k: usize) -> [Lanes; SIDE] {
    let mut column = [Lanes([0.0; STEP]); SIDE];
    for (i, value) in column.iter_mut().enumerate() {
        *value = m[SIDE * i + k];
    }
    column
}

/// Entry `a` of each of the six columns (as [`grid_column`], a loop).
#[inline(always)]
fn row_of<const N: usize>(columns: &[[Lanes; N]; SIDE], a: usize) -> [Lanes; SIDE] {
    let mut row = [Lanes([0.0; STEP]); SIDE];
    for (value, column) in row.iter_mut().zip(columns) {
        *value = column[a];
    }
    row
}

/// `Aᵀ m A + bias` of [`STEP`] tiles' 36 products: their 4x4 pixels, `[row][column]`.
#[inline(always)]
fn output_tiles<S: Simd>(m: &[Lanes; POINTS], bias: f32) -> [[Lanes; OUT]; OUT] {
    let mut columns = [[Lanes([0.0; STEP]); OUT]; SIDE];
    for (k, column) in columns.iter_mut().enumerate() {
        let m_k = grid_column(m, k);
        *column = output_rows::<S>(m_k);
    }
    let mut pixels = [[Lanes([0.0; STEP]); OUT]; OUT];
    for (a, row) in pixels.iter_mut().enumerate() {
        let c_a = row_of(&columns, a);
        *row = output_rows::<S>(c_a);
        for value in row.iter_mut() {
            *value = *value + Lanes([bias; STEP]);
        }
    }
    pixels
}

/// The weight gradient of [`forward`], as its adjoint: `dU_e = Σ (A dY Aᵀ)_e V_eᵀ` over the
/// tiles of the whole batch (one product per point, its column blocks summed in order), then
/// `dW = Gᵀ dU G`. `dweight` is overwritten.
pub(crate) fn weight_gradient(x: &[f32], d_out: &[f32], shape: ConvShape, dweight: &mut [f32]) {
    let tiling = Tiling::new(shape, OUT);
    let columns = Columns::new(&tiling, shape.batch);
    let (c_in, c_out) = (shape.channels_in, shape.channels_out);
    let v = transform_input(x, tiling, columns);
    let dm = transform_gradient(d_out, tiling, columns);
    let kernels = c_out * c_in;
    let mut du = zeroed(POINTS * kernels);
    du.par_chunks_mut(kernels)
        .enumerate()
        .for_each(|(e, du_e)| {
            for k in 0..columns.n.div_ceil(columns.width) {
                let width = columns.block_width(k);
                product(
                    (c_out, c_in, width),
                    du_e,
                    k > 0,
                    (
                        &dm[columns.block_start(c_out, e, k)..][..c_out * width],
                        width,
                        1,
                    ),
                    (
                        &v[columns.block_start(c_in, e, k)..][..c_in * width],
                        1,
                        width,
                    ),
                    Parallelism::None,
                    false,
                );
            }
        });
    dweight
        .par_chunks_mut(9 * KERNEL_BLOCK)
        .enumerate()
        .for_each(|(block, dw)| untransform_kernels_mv(&du, kernels, block * KERNEL_BLOCK, dw));
}

/// `A dY Aᵀ` of every 4x4 tile of the output gradient (pixels outside the image are zero), in
/// the products' column layout: the `[36][c_out][n]` left operands of the weight gradient.
fn transform_gradient(d_out: &[f32], t: Tiling, columns: Columns) -> Vec<f32> {
    let plane = t.out_h * t.out_w;
    // SAFETY: every (image, channel) writes its tiles' columns of its row at every point.
    unsafe {
        filled(POINTS * t.channels_out * columns.n, |dst| {
            d_out
                .par_chunks(plane)
                .enumerate()
                .for_each(|(image_channel, dy)| {
                    let b_o = (
                        image_channel / t.channels_out,
                        image_channel % t.channels_out,
                    );
                    transform_gradient_channel_mv(dy, t, columns, b_o, dst);
                })
        })
    }
}

multiversion!(fn transform_gradient_channel_mv(dy: &[f32], t: Tiling, columns: Columns, b_o: (usize, usize), dst: SharedOut) => transform_gradient_channel);

/// `A dY Aᵀ` of the tiles of channel `o` of image `b`'s output gradient `dy`, written to its
/// row of every point: the adjoint of [`untransform_channel`].
#[inline(always)]
fn transform_gradient_channel<S: Simd>(
    dy: &[f32],
    t: Tiling,
    columns: Columns,
    (b, o): (usize, usize),
    dst: SharedOut,
) {
    let (out_h, out_w) = (t.out_h, t.out_w);
    for tr in 0..t.rows {
        let at = columns.tile_rows(t.channels_out, o, (b, tr));
        let (y0, rows) = (OUT * tr, OUT.min(out_h - OUT * tr));
        for t0 in (0..t.cols).step_by(STEP) {
            let count = STEP.min(t.cols - t0);
            let x0 = OUT * t0;
            let width = (OUT * count).min(out_w - x0);
            let mut pixels = [[Lanes([0.0; STEP]); OUT]; OUT];
            for (a, row) in pixels.iter_mut().enumerate().take(rows) {
                let mut run = [0f32; OUT * STEP];
                let src = &dy[(y0 + a) * out_w + x0..];
                if width == OUT * STEP {
                    run.copy_from_slice(&src[..OUT * STEP]);
                } else {
                    copy_prefix(&mut run, &src[..width]);
                }
                for l in 0..STEP {
                    for c in 0..OUT {
                        row[c].0[l] = run[OUT * l + c];
                    }
                }
            }
            for (e, values) in gradient_tiles::<S>(&pixels).iter().enumerate() {
                // SAFETY: this run belongs to this task's (image, channel) row alone.
                unsafe { write_run(dst, at[e] + t0, values, count) };
            }
        }
    }
}

/// `A y Aᵀ` of [`STEP`] tiles' 4x4 output gradients `y[row][column]`: their 36 points.
#[inline(always)]
fn gradient_tiles<S: Simd>(y: &[[Lanes; OUT]; OUT]) -> [Lanes; POINTS] {
    let mut rows = [[Lanes([0.0; STEP]); OUT]; SIDE];
    for c in 0..OUT {
        let column = gradient_rows::<S>([y[0][c], y[1][c], y[2][c], y[3][c]]);
        for (row, value) in rows.iter_mut().zip(column) {
            row[c] = value;
        }
    }
    let mut points = [Lanes([0.0; STEP]); POINTS];
    for (i, row) in rows.into_iter().enumerate() {
        points[SIDE * i..][..SIDE].copy_from_slice(&gradient_rows::<S>(row));
    }
    points
}

/// `A y` of one column `y` of a tile's output gradient, with `A`'s rows `[1, 0, 0, 0]`,
/// `[1, 1, 1, 1]`, `[1, -1, 1, -1]`, `[1, 2, 4, 8]`, `[1, -2, 4, -8]` and `[0, 0, 0, 1]` (the
/// transpose of [`output_rows`]' `Aᵀ`).
#[inline(always)]
fn gradient_rows<S: Simd>([y0, y1, y2, y3]: [Lanes; OUT]) -> [Lanes; SIDE] {
    let (even, odd) = (y0 + y2, y1 + y3);
    let (even4, odd4) = (y2.scaled_add::<S>(4.0, y0), y3.scaled_add::<S>(4.0, y1));
    [
        y0,
        even + odd,
        even - odd,
        odd4.scaled_add::<S>(2.0, even4),
        odd4.scaled_add::<S>(-2.0, even4),
        y3,
    ]
}

multiversion!(fn untransform_kernels_mv(du: &[f32], kernels: usize, first: usize, dw: &mut [f32]) => untransform_kernels);

/// `Gᵀ dU G` of kernels `first..` (as many as `dw` holds, row-major 3x3 each) from the 36
/// `[c_out, c_in]` point gradients `du`, [`STEP`] kernels at a time.
#[inline(always)]
fn untransform_kernels<S: Simd>(du: &[f32], kernels: usize, first: usize, dw: &mut [f32]) {
    let count = dw.len() / 9;
    for i0 in (0..count).step_by(STEP) {
        let lanes = STEP.min(count - i0);
        let mut points = [Lanes([0.0; STEP]); POINTS];
        for (e, point) in points.iter_mut().enumerate() {
            let run = &du[e * kernels + first + i0..];
            *point = if lanes == STEP {
                Lanes::load(run)
            } else {
                Lanes::load_first(run, lanes)
            };
        }
        let mut columns = [[Lanes([0.0; STEP]); 3]; SIDE];
        for (k, column) in columns.iter_mut().enumerate() {
            *column = kernel_gradient_rows::<S>(grid_column(&points, k));
        }
        for a in 0..3 {
            let row = kernel_gradient_rows::<S>(row_of(&columns, a));
            for (l, kernel) in dw[9 * i0..][..9 * lanes].chunks_exact_mut(9).enumerate() {
                for (b, values) in row.iter().enumerate() {
                    kernel[3 * a + b] = values.0[l];
                }
            }
        }
    }
}

/// `Gᵀ u` of one column `u` of a kernel's point gradients, with `Gᵀ`'s rows
/// `[1/4, -1/6, -1/6, 1/24, 1/24, 0]`, `[0, -1/6, 1/6, 1/12, -1/12, 0]` and
/// `[0, -1/6, -1/6, 1/6, 1/6, 1]` (the transpose of [`kernel_rows`]' `G`).
#[inline(always)]
fn kernel_gradient_rows<S: Simd>([u0, u1, u2, u3, u4, u5]: [Lanes; SIDE]) -> [Lanes; 3] {
    const SIXTH: f32 = 1.0 / 6.0;
    let (sum12, diff12, sum34, diff34) = (u1 + u2, u1 - u2, u3 + u4, u3 - u4);
    [
        (sum34.scaled(0.25) - sum12).scaled_add::<S>(SIXTH, u0.scaled(0.25)),
        (diff34.scaled(0.5) - diff12).scaled(SIXTH),
        (sum34 - sum12).scaled_add::<S>(SIXTH, u5),
    ]
}
