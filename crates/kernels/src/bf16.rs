//! Matrix products with bf16 products and f32 accumulation (what PyTorch's CPU bf16 autocast
//! computes): f32 operands are rounded to bf16 (round to nearest even) while they are packed,
//! and AVX512-BF16 `vdpbf16ps` multiplies pairs of them into f32 sums, at twice the rate of
//! f32 FMAs on Zen 4; on CPUs with AMX-BF16, tiles multiply the same packed operands (see
//! `amx.rs`). [`engine`] says which runs, and where neither beats f32 the kernels stay f32.
//!
//! Blocking follows BLIS with the vector dimension along the output's columns (the output is
//! row-major, so tiles load and store whole rows):
//! - `rhs` is packed into panels of [`NR`] = 32 columns; for each pair of `k` a panel holds 32
//!   words `(rhs[2q][c], rhs[2q + 1][c])`, the operand layout `vdpbf16ps` wants (two zmm). All
//!   of it once up front where many row tiles share it, else by each tile, a `k` block at a time.
//! - `lhs` is packed per micro-panel of [`MR`] rows and `k` block into rows of `k` pairs (32-bit
//!   words, each broadcast to all lanes).
//! - The microkernel keeps [`MR`] x 32 sums in 24 zmm registers.
//!
//! Results do not depend on threads: every output element is summed by one task, over `k`
//! blocks fixed by `k` alone, in the same order and with the same instructions whichever tile
//! holds it; the tiles only decide which thread does the work.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use crate::product::transpose;

/// Output rows per microkernel (broadcast `lhs` words): 12 x 2 accumulators + 2 `rhs` vectors
/// + 1 broadcast fit the 32 zmm registers.
const MR: usize = 12;
/// Output columns per microkernel: two zmm of 16 f32.
const NR: usize = 32;
/// Most `k` pairs per block: a packed `lhs` micro-panel (`MR` x 192 words = 9 KiB) stays in L1
/// and a tile's `rhs` block (256 columns: 192 KiB) in L2 (measured 3-5% faster than 128 on
/// `k` = 1152 and 2304).
const KC_PAIRS: usize = 192;
/// Output tile a task computes (multiples of `MR` and `NR`): small enough that 2 cores share
/// the tiles of the narrow shapes evenly, large enough that `lhs` is packed few times.
const TILE_ROWS: usize = 48;
const TILE_COLS: usize = 256;
/// Most rows for which each tile packs its own `rhs` blocks.
const PACK_PER_TILE_ROWS: usize = 192;
/// `k` pairs per task packing `rhs`.
const RHS_PACK_PAIRS: usize = 64;

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::{column_mask, store_pair_words};

static PRODUCTS_IN_BF16: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets the kernels that multiply matrices (convolution, dense layers) do so in bf16 with f32
/// sums where this CPU's [`engine`] runs bf16 faster than f32: the process-wide choice behind
/// `--precision bf16`. Weights, activations and every other operation stay f32.
pub fn set_products_in_bf16(on: bool) {
    PRODUCTS_IN_BF16.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether matrix products run in bf16: asked for with [`set_products_in_bf16`], and this
/// CPU's [`engine`] is not [`Engine::F32`].
pub fn products_in_bf16() -> bool {
    PRODUCTS_IN_BF16.load(std::sync::atomic::Ordering::Relaxed) && engine() != Engine::F32
}

/// How products asked to run in bf16 run on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// AMX-BF16 tiles (`tdpbf16ps`).
    Amx,
    /// AVX512-BF16 `vdpbf16ps`, where it runs at the rate of two f32 FMAs per lane (AMD Zen 4
    /// and later).
    Avx512Bf16,
    /// f32 products, where no bf16 instruction beats them: without AVX512-BF16, and on Intel
    /// CPUs without AMX, whose `vdpbf16ps` issues on one port (measured on a Sapphire Rapids
    /// without the AMX path: the UNet step 1.4x slower than f32).
    F32,
}

impl Engine {
    /// Whether this CPU can run the engine.
    pub fn runs_here(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Engine::Amx => amx::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Engine::Amx => false,
            Engine::Avx512Bf16 => available(),
            Engine::F32 => true,
        }
    }
}

/// 0: detect; else 1 + the [`Engine`] index set by [`set_engine`].
static ENGINE_OVERRIDE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
const ENGINES: [Engine; 3] = [Engine::Amx, Engine::Avx512Bf16, Engine::F32];

/// The engine of bf16 products: the one set by [`set_engine`], else the fastest this CPU runs.
pub fn engine() -> Engine {
    match ENGINE_OVERRIDE.load(std::sync::atomic::Ordering::Relaxed) {
        0 => detected_engine(),
        i => ENGINES[i as usize - 1],
    }
}

/// Runs bf16 products on `engine` from now on (to compare engines); an error where this CPU
/// cannot run it.
pub fn set_engine(engine: Engine) -> Result<(), String> {
    if !engine.runs_here() {
        return Err(format!("the {engine:?} bf16 engine cannot run on this CPU"));
    }
    let index = ENGINES.iter().position(|&e| e == engine).expect("listed");
    ENGINE_OVERRIDE.store(index as u8 + 1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

fn detected_engine() -> Engine {
    if Engine::Amx.runs_here() {
        Engine::Amx
    } else if available() && cpu_vendor_is_amd() {
        Engine::Avx512Bf16
    } else {
        Engine::F32
    }
}

fn cpu_vendor_is_amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let leaf0 = std::arch::x86_64::__cpuid_count(0, 0);
        // "AuthenticAMD" in EBX, EDX, ECX.
        (leaf0.ebx, leaf0.edx, leaf0.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has AVX512-BF16 (`vdpbf16ps`; else [`matmul_bf16`] rounds its operands
/// and multiplies them with f32 `gemm`, slower).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` rounded to bf16 bits exactly as `vcvtne2ps2bf16` does: nearest, ties to even; denormals
/// to signed zero; NaNs quiet.
pub fn round_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let magnitude = bits & 0x7fff_ffff;
    if magnitude > 0x7f80_0000 {
        ((bits >> 16) | 0x40) as u16
    } else if magnitude < 0x0080_0000 {
        ((bits >> 16) & 0x8000) as u16
    } else if magnitude == 0x7f80_0000 {
        (bits >> 16) as u16
    } else {
        let bias = 0x7fff + ((bits >> 16) & 1);
        (bits.wrapping_add(bias) >> 16) as u16
    }
}

/// The f32 value of bf16 bits.
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

#[cfg(target_arch = "x86_64")]
/// The two bf16 of `k` pair `(lo, hi)` as the 32-bit word `vdpbf16ps` reads (`lo` first).
pub(crate) fn pair_word(lo: f32, hi: f32) -> u32 {
    round_to_bf16(lo) as u32 | (round_to_bf16(hi) as u32) << 16
}

/// `dst (+)= lhs rhs` with `lhs` `[m, k]`, `rhs` `[k, n]` rounded to bf16 and f32 sums; `dst`
/// row-major with `dst_rs` floats between rows; operands addressed as `lhs[i * lhs_rs + p *
/// lhs_cs]`, `rhs[p * rhs_rs + j * rhs_cs]`, so transposed operands are read in place.
/// `accumulate` adds to `dst` instead of overwriting it. `parallel` splits the output over
/// rayon in tiles fixed by the shape, so results are the same on any number of threads.
#[allow(clippy::too_many_arguments)]
pub fn matmul_bf16(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst_rs >= n || m == 1, "dst rows overlap");
    assert!(dst.len() > (m - 1) * dst_rs + (n - 1), "dst too short");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst[i * dst_rs..i * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    assert!(
        lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs,
        "lhs too short"
    );
    assert!(
        rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs,
        "rhs too short"
    );

    #[cfg(target_arch = "x86_64")]
    if available() {
        // A transposed operand is copied to row-major first: packing reads rows with vector
        // loads, columns one element at a time (several times slower than the copy).
        let lhs_t =
            (lhs_cs != 1 && lhs_rs == 1 && lhs_cs >= m).then(|| transpose(lhs, k, m, lhs_cs));
        let (lhs, lhs_rs, lhs_cs) = match &lhs_t {
            Some(t) => (t.as_slice(), k, 1),
            None => (lhs, lhs_rs, lhs_cs),
        };
        let rhs_t =
            (rhs_cs != 1 && rhs_rs == 1 && rhs_cs >= k).then(|| transpose(rhs, n, k, rhs_cs));
        let (rhs, rhs_rs, rhs_cs) = match &rhs_t {
            Some(t) => (t.as_slice(), n, 1),
            None => (rhs, rhs_rs, rhs_cs),
        };
        let shape = Shape {
            m,
            n,
            k,
            dst_rs,
            lhs_rs,
            lhs_cs,
            rhs_rs,
            rhs_cs,
            accumulate,
        };
        // SAFETY: the features are present and the extents were checked above.
        unsafe {
            if engine() == Engine::Amx {
                amx::matmul::<amx::Amx>(&shape, dst, avx512::Lhs::Floats(lhs), rhs, None, parallel)
            } else {
                avx512::matmul(&shape, dst, avx512::Lhs::Floats(lhs), rhs, parallel)
            }
        };
        return;
    }
    matmul_rounded_f32(
        m, n, k, dst, dst_rs, accumulate, lhs, lhs_rs, lhs_cs, rhs, rhs_rs, rhs_cs, parallel,
    );
}

/// An `lhs` rounded to bf16 and packed once, for several products with it (a convolution's
/// weights over the images of a batch): [`matmul_bf16_packed`] gives the same bits as
/// [`matmul_bf16`] without packing it again.
pub struct PackedLhs {
    m: usize,
    k: usize,
    /// The engine whose blocks `words` holds: [`Engine::Amx`] or [`Engine::Avx512Bf16`].
    layout: Engine,
    words: Vec<u32>,
}

impl PackedLhs {
    /// `lhs` (`[m, k]`, strides as [`matmul_bf16`]'s), packed for this CPU's [`engine`];
    /// `None` where the products would not read it (no AVX512-BF16).
    pub fn new(m: usize, k: usize, lhs: &[f32], lhs_rs: usize, lhs_cs: usize) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if !available() || m == 0 || k == 0 {
                return None;
            }
            assert!(
                lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs,
                "lhs too short"
            );
            let shape = Shape {
                m,
                n: 0,
                k,
                dst_rs: 0,
                lhs_rs,
                lhs_cs,
                rhs_rs: 0,
                rhs_cs: 0,
                accumulate: false,
            };
            let layout = match engine() {
                Engine::Amx => Engine::Amx,
                _ => Engine::Avx512Bf16,
            };
            // SAFETY: features present; extents checked above.
            let words = unsafe {
                match layout {
                    Engine::Amx => amx::pack_lhs(&shape, lhs),
                    _ => avx512::pack_lhs(&shape, lhs),
                }
            };
            Some(PackedLhs {
                m,
                k,
                layout,
                words,
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (m, k, lhs, lhs_rs, lhs_cs);
            None
        }
    }
}

/// [`matmul_bf16`] with `lhs` packed by [`PackedLhs::new`]; the same bits.
#[allow(clippy::too_many_arguments)]
pub fn matmul_bf16_packed(
    lhs: &PackedLhs,
    n: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    parallel: bool,
) {
    let (m, k) = (lhs.m, lhs.k);
    if n == 0 {
        return;
    }
    assert!(dst_rs >= n || m == 1, "dst rows overlap");
    assert!(dst.len() > (m - 1) * dst_rs + (n - 1), "dst too short");
    assert!(
        rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs,
        "rhs too short"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let rhs_t =
            (rhs_cs != 1 && rhs_rs == 1 && rhs_cs >= k).then(|| transpose(rhs, n, k, rhs_cs));
        let (rhs, rhs_rs, rhs_cs) = match &rhs_t {
            Some(t) => (t.as_slice(), n, 1),
            None => (rhs, rhs_rs, rhs_cs),
        };
        let shape = Shape {
            m,
            n,
            k,
            dst_rs,
            lhs_rs: k,
            lhs_cs: 1,
            rhs_rs,
            rhs_cs,
            accumulate,
        };
        let packed = avx512::Lhs::Packed(&lhs.words);
        // SAFETY: `PackedLhs` exists only where the features (and its layout's engine) are;
        // extents checked above.
        unsafe {
            match lhs.layout {
                Engine::Amx => amx::matmul::<amx::Amx>(&shape, dst, packed, rhs, None, parallel),
                _ => avx512::matmul(&shape, dst, packed, rhs, parallel),
            }
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dst, accumulate, parallel);
        unreachable!("PackedLhs is never built here");
    }
}

/// `dst (+)= lhs patches` for a stride-1 convolution that keeps the image's size: `lhs` its
/// weights packed for AMX, `patches` the im2col matrix of image `x` (`[c, h, w]`), which is
/// packed from the image straight into the tiles' layout rather than written out in f32.
/// `false` (and nothing done) where the weights are not packed for AMX or the convolution is
/// not of that kind: the caller then multiplies the im2col.
pub(crate) fn conv_product_on_tiles(
    lhs: &PackedLhs,
    x: &[f32],
    conv: &crate::conv::ConvShape,
    dst: &mut [f32],
    accumulate: bool,
    parallel: bool,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let (m, n) = (lhs.m, conv.height * conv.width);
        if lhs.layout != Engine::Amx || !amx::patches::applies(conv) || n == 0 {
            return false;
        }
        assert_eq!(
            lhs.k,
            conv.channels_in * conv.kernel_h * conv.kernel_w,
            "patch size"
        );
        assert!(dst.len() >= m * n, "dst too short");
        let shape = Shape {
            m,
            n,
            k: lhs.k,
            dst_rs: n,
            lhs_rs: lhs.k,
            lhs_cs: 1,
            rhs_rs: 0,
            rhs_cs: 0,
            accumulate,
        };
        let mut words = amx::patches::PACKED_PATCHES.take();
        // SAFETY: a `PackedLhs` of the AMX layout exists only where AMX (and AVX512-BF16)
        // run; `pack_patches` checks the image's extent, the product reads only the words.
        unsafe {
            amx::patches::pack_patches(x, conv, &mut words);
            let lhs = avx512::Lhs::Packed(&lhs.words);
            amx::matmul::<amx::Amx>(&shape, dst, lhs, &[], Some(&words), parallel);
        }
        amx::patches::PACKED_PATCHES.set(words);
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (lhs, x, conv, dst, accumulate, parallel);
        false
    }
}

/// The same product without AVX512-BF16: bf16-rounded copies multiplied by f32 `gemm` (sums
/// in another order, so not bitwise equal to the AVX-512 path).
#[allow(clippy::too_many_arguments)]
fn matmul_rounded_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    parallel: bool,
) {
    let round = |x: f32| bf16_to_f32(round_to_bf16(x));
    let lhs_rounded: Vec<f32> = (0..m * k)
        .map(|e| round(lhs[(e / k) * lhs_rs + (e % k) * lhs_cs]))
        .collect();
    let rhs_rounded: Vec<f32> = (0..k * n)
        .map(|e| round(rhs[(e / n) * rhs_rs + (e % n) * rhs_cs]))
        .collect();
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: extents checked by the caller; the copies are dense row-major.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs_rounded.as_ptr(),
            1,
            k as isize,
            rhs_rounded.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A product's extents and strides (elements).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Shape {
    m: usize,
    n: usize,
    k: usize,
    dst_rs: usize,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs_rs: usize,
    rhs_cs: usize,
    accumulate: bool,
}

#[cfg(target_arch = "x86_64")]
/// Splits `len` into `ceil(len / target)` near-equal parts rounded up to multiples of `unit`.
fn split(len: usize, target: usize, unit: usize) -> usize {
    let parts = len.div_ceil(target);
    len.div_ceil(parts).div_ceil(unit) * unit
}

#[cfg(target_arch = "x86_64")]
/// Start and length of part `part` of `parts` near-equal runs of `units` blocks of `unit`
/// elements covering `len` elements.
fn tile_range(part: usize, parts: usize, units: usize, unit: usize, len: usize) -> (usize, usize) {
    let start = (part * units / parts * unit).min(len);
    let end = ((part + 1) * units / parts * unit).min(len);
    (start, end - start)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;
    use std::cell::Cell;
    use std::thread::LocalKey;

    thread_local! {
        /// Packing buffers kept between calls: a fresh large allocation costs page faults on
        /// every call (measured ~2% of a 96 x 256 x 2048 product).
        static PACKED_RHS: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
        pub(super) static PACKED_LHS: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
        pub(super) static PACKED_RHS_BLOCK: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
        /// The AMX path's whole `rhs`, packed before its tiles run.
        pub(super) static PACKED_RHS_WHOLE: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    }

    /// This thread's `buffer`, at least `len` words (contents unspecified), taken out until it
    /// is set back; empty (so allocated afresh) while in use further up this thread's stack (a
    /// rayon worker that took another product's task while waiting).
    pub(super) fn take_buffer(buffer: &'static LocalKey<Cell<Vec<u32>>>, len: usize) -> Vec<u32> {
        let mut words = buffer.take();
        if words.len() < len {
            words.resize(len, 0);
        }
        words
    }

    /// A buffer shared by tasks that write disjoint parts of it.
    pub(super) struct SharedMut<T>(pub(super) *mut T);
    impl<T> Clone for SharedMut<T> {
        fn clone(&self) -> Self {
            *self
        }
    }
    impl<T> Copy for SharedMut<T> {}
    // SAFETY: tasks write disjoint parts only.
    unsafe impl<T> Send for SharedMut<T> {}
    unsafe impl<T> Sync for SharedMut<T> {}

    /// `lhs` as floats, or packed by [`PackedLhs`] (then `shape`'s `lhs` strides are unused).
    #[derive(Clone, Copy)]
    pub(super) enum Lhs<'a> {
        Floats(&'a [f32]),
        Packed(&'a [u32]),
    }

    /// All of `lhs` (`shape`'s `m` x `k` and `lhs` strides) rounded to bf16 in the micro-panels
    /// and `k` blocks [`matmul`] reads as [`Lhs::Packed`] (see [`packed_lhs_offset`]).
    ///
    /// # Safety
    /// avx512f, avx512bw and avx512bf16 present; `lhs` covers the extents in `shape`.
    pub(super) unsafe fn pack_lhs(shape: &Shape, lhs: &[f32]) -> Vec<u32> {
        let (m, pairs) = (shape.m, shape.k.div_ceil(2));
        let panels = m.div_ceil(MR);
        let block_pairs = split(pairs, KC_PAIRS, 1);
        let mut words = vec![0u32; pairs.div_ceil(block_pairs) * panels * MR * KC_PAIRS];
        // One micro-panel and `k` block per chunk, where `matmul` reads it.
        words
            .par_chunks_mut(MR * KC_PAIRS)
            .enumerate()
            .for_each(|(i, chunk)| {
                let (pair0, row0) = (i / panels * block_pairs, i % panels * MR);
                let (block, rows) = (block_pairs.min(pairs - pair0), MR.min(m - row0));
                debug_assert_eq!(
                    packed_lhs_offset(m, block_pairs, pair0, row0),
                    i * MR * KC_PAIRS
                );
                // SAFETY: the caller's contract.
                unsafe { pack_lhs_block(shape, lhs, row0, rows, pair0, block, chunk, KC_PAIRS) }
            });
        words
    }

    /// Where the packed micro-panel of `row` (a multiple of [`MR`]) and `k` block `pair0`
    /// starts in a [`PackedLhs`] of `m` rows.
    pub(super) fn packed_lhs_offset(
        m: usize,
        block_pairs: usize,
        pair0: usize,
        row: usize,
    ) -> usize {
        ((pair0 / block_pairs) * m.div_ceil(MR) + row / MR) * MR * KC_PAIRS
    }

    /// # Safety
    /// avx512f, avx512bw and avx512bf16 present; the slices cover the extents in `shape`.
    pub(super) unsafe fn matmul(
        shape: &Shape,
        dst: &mut [f32],
        lhs: Lhs,
        rhs: &[f32],
        parallel: bool,
    ) {
        let Shape { m, n, k, .. } = *shape;
        let pairs = k.div_ceil(2);
        let panel_len = pairs * NR;
        let panels = n.div_ceil(NR);
        // `k` blocks of near-equal size, fixed by `k` alone.
        let block_pairs = split(pairs, KC_PAIRS, 1);
        // Tiles only decide who computes what (each element is summed the same way in any
        // tile), so they may follow the thread count: a multiple of it where the tiles are
        // few, so that no thread idles at the end.
        let threads = if parallel {
            rayon::current_num_threads()
        } else {
            1
        };
        let micro_panels = m.div_ceil(MR);
        let mut col_tiles = panels.div_ceil(TILE_COLS / NR);
        // Few rows: one row of tiles, each packing its own `rhs` blocks just before use, so that
        // they are still in L2 (measured ~5% faster on 128 x 1024 x 1152 than packing all of
        // `rhs` first, whose packing then waits on memory).
        let pack_per_tile = micro_panels <= PACK_PER_TILE_ROWS / MR;
        let mut row_tiles = if pack_per_tile {
            while col_tiles % threads != 0 && col_tiles < panels {
                col_tiles += 1;
            }
            1
        } else {
            micro_panels.div_ceil(TILE_ROWS / MR)
        };
        while (row_tiles * col_tiles) % threads != 0 && row_tiles < micro_panels {
            row_tiles += 1;
        }
        let mut packed_rhs = Vec::new();
        if !pack_per_tile {
            packed_rhs = take_buffer(&PACKED_RHS, panels * panel_len);
            // SAFETY: the buffer holds every panel; features present (caller); extents checked
            // by `matmul_bf16`.
            unsafe { pack_all_rhs_pairs(shape, rhs, &mut packed_rhs, panel_len, parallel) };
        }
        let dst_ptr = SharedMut(dst.as_mut_ptr());
        let packed_rhs_words = (!pack_per_tile).then_some(&packed_rhs[..]);
        let run_tile = |tile: usize| {
            let (row0, rows) = tile_range(tile / col_tiles, row_tiles, micro_panels, MR, m);
            let (col0, cols) = tile_range(tile % col_tiles, col_tiles, panels, NR, n);
            // SAFETY: tiles are disjoint; features present; extents checked.
            unsafe {
                compute_tile(
                    shape,
                    dst_ptr,
                    lhs,
                    rhs,
                    packed_rhs_words,
                    block_pairs,
                    row0,
                    rows,
                    col0,
                    cols,
                )
            }
        };
        if parallel {
            (0..row_tiles * col_tiles)
                .into_par_iter()
                .for_each(run_tile);
        } else {
            (0..row_tiles * col_tiles).for_each(run_tile);
        }
        if !pack_per_tile {
            PACKED_RHS.set(packed_rhs);
        }
    }

    /// Packs every `k` pair of `rhs` into every panel of 32 columns, panels `panel_stride` words
    /// apart ([`pack_rhs_pairs`] over fixed chunks of pairs, in parallel where `parallel`).
    ///
    /// # Safety
    /// AVX512-BF16 present; `rhs` covers `shape`'s extents; `packed` holds every panel.
    pub(super) unsafe fn pack_all_rhs_pairs(
        shape: &Shape,
        rhs: &[f32],
        packed: &mut [u32],
        panel_stride: usize,
        parallel: bool,
    ) {
        let (pairs, panels) = (shape.k.div_ceil(2), shape.n.div_ceil(NR));
        assert!(
            packed.len() >= panels * panel_stride,
            "packed rhs too short"
        );
        let packed_ptr = SharedMut(packed.as_mut_ptr());
        let pack_chunk = |chunk: usize| {
            let pair0 = chunk * RHS_PACK_PAIRS;
            let pair1 = (pair0 + RHS_PACK_PAIRS).min(pairs);
            let packed = packed_ptr; // the whole wrapper, which is Sync
            // SAFETY: chunks write disjoint pairs of every panel; the caller's contract.
            unsafe {
                let offset = SharedMut(packed.0.add(pair0 * NR));
                pack_rhs_pairs(shape, rhs, pair0, pair1, 0, panels, offset, panel_stride)
            }
        };
        let chunks = 0..pairs.div_ceil(RHS_PACK_PAIRS);
        if parallel {
            chunks.into_par_iter().for_each(pack_chunk);
        } else {
            chunks.for_each(pack_chunk);
        }
    }

    /// Packs `k` pairs `pair0..pair1` of `rhs` into every panel of 32 columns (zero past `n`):
    /// word `q * NR + c` of panel `p` is `(rhs[2q][32p + c], rhs[2q + 1][32p + c])`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_rhs_pairs(
        shape: &Shape,
        rhs: &[f32],
        pair0: usize,
        pair1: usize,
        panel0: usize,
        panel1: usize,
        packed: SharedMut<u32>,
        panel_stride: usize,
    ) {
        // SAFETY: the caller's contract (features present, extents checked).
        unsafe {
            let Shape {
                n,
                k,
                rhs_rs,
                rhs_cs,
                ..
            } = *shape;
            // The first of the 32 words of pair `q` in panel `p`.
            let word_at =
                |p: usize, q: usize| packed.0.add((p - panel0) * panel_stride + (q - pair0) * NR);
            if rhs_cs == 1 {
                // Row by row pair, so `rhs` is read in order.
                for q in pair0..pair1 {
                    let row_lo = rhs.as_ptr().add(2 * q * rhs_rs);
                    let row_hi = if 2 * q + 1 < k {
                        Some(row_lo.add(rhs_rs))
                    } else {
                        None
                    };
                    for panel in panel0..panel1 {
                        let col0 = panel * NR;
                        let cols = NR.min(n - col0);
                        let mask_lo = column_mask(cols);
                        let mask_hi = column_mask(cols.saturating_sub(16));
                        let lo_0 = _mm512_maskz_loadu_ps(mask_lo, row_lo.wrapping_add(col0));
                        let lo_1 = _mm512_maskz_loadu_ps(mask_hi, row_lo.wrapping_add(col0 + 16));
                        let (hi_0, hi_1) = match row_hi {
                            Some(row_hi) => (
                                _mm512_maskz_loadu_ps(mask_lo, row_hi.wrapping_add(col0)),
                                _mm512_maskz_loadu_ps(mask_hi, row_hi.wrapping_add(col0 + 16)),
                            ),
                            None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
                        };
                        store_pair_words(word_at(panel, q), [lo_0, lo_1], [hi_0, hi_1]);
                    }
                }
            } else {
                // Column by column, so column-major `rhs` is read in order.
                for panel in panel0..panel1 {
                    let col0 = panel * NR;
                    let cols = NR.min(n - col0);
                    for c in 0..NR {
                        for q in pair0..pair1 {
                            // Reused buffers hold old words: zero the columns past `n`.
                            let word = if c < cols {
                                let at = 2 * q * rhs_rs + (col0 + c) * rhs_cs;
                                let hi = if 2 * q + 1 < k { rhs[at + rhs_rs] } else { 0.0 };
                                pair_word(rhs[at], hi)
                            } else {
                                0
                            };
                            *word_at(panel, q).add(c) = word;
                        }
                    }
                }
            }
        }
    }

    /// Writes the 32 words `(lo[c], hi[c])` of two rows' 32 values (two vectors each), rounded to
    /// bf16, at `out`: a `k` pair of a panel.
    ///
    /// # Safety
    /// AVX512-BF16 present; `out` holds 32 words.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(crate) unsafe fn store_pair_words(out: *mut u32, lo: [__m512; 2], hi: [__m512; 2]) {
        // Lane c of the result takes element c of row 2q and element c of row 2q + 1 (the
        // converted pair of rows holds row 2q in elements 0..16, row 2q + 1 in 16..32).
        let interleave = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        for half in 0..2 {
            // SAFETY: a vector conversion; the caller's contract for the store.
            unsafe {
                let bf: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi[half], lo[half]));
                let words = _mm512_permutexvar_epi16(interleave, bf);
                _mm512_storeu_si512(out.add(16 * half).cast(), words);
            }
        }
    }

    /// Lane mask of the first `count` (capped at 16) lanes.
    pub(crate) fn column_mask(count: usize) -> __mmask16 {
        if count >= 16 {
            0xffff
        } else {
            ((1u32 << count) - 1) as __mmask16
        }
    }

    /// Computes the output tile `rows` x `cols` at (`row0`, `col0`) over all of `k`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn compute_tile(
        shape: &Shape,
        dst: SharedMut<f32>,
        lhs: Lhs,
        rhs: &[f32],
        packed_rhs: Option<&[u32]>,
        block_pairs: usize,
        row0: usize,
        rows: usize,
        col0: usize,
        cols: usize,
    ) {
        // SAFETY: the caller's contract (features present, extents checked).
        unsafe {
            let Shape {
                k,
                dst_rs,
                accumulate,
                lhs_rs,
                lhs_cs,
                ..
            } = *shape;
            let pairs = k.div_ceil(2);
            let panel_len = pairs * NR;
            let mut packed_lhs = take_buffer(&PACKED_LHS, MR * KC_PAIRS);
            let panel0 = col0 / NR;
            let panel1 = (col0 + cols).div_ceil(NR);
            let mut packed_rhs_block = match packed_rhs {
                Some(_) => Vec::new(),
                None => take_buffer(&PACKED_RHS_BLOCK, (panel1 - panel0) * KC_PAIRS * NR),
            };
            let mut pair0 = 0;
            while pair0 < pairs {
                let block = block_pairs.min(pairs - pair0);
                let load_dst = accumulate || pair0 > 0;
                if packed_rhs.is_none() {
                    let words = SharedMut(packed_rhs_block.as_mut_ptr());
                    let (pair1, stride) = (pair0 + block, block * NR);
                    pack_rhs_pairs(shape, rhs, pair0, pair1, panel0, panel1, words, stride);
                }
                for i in (0..rows).step_by(MR) {
                    let micro_rows = MR.min(rows - i);
                    let lhs_panel = match lhs {
                        Lhs::Packed(words) => {
                            let at = packed_lhs_offset(shape.m, block_pairs, pair0, row0 + i);
                            words[at..at + MR * KC_PAIRS].as_ptr()
                        }
                        Lhs::Floats(lhs) => {
                            pack_lhs_block(
                                shape,
                                lhs,
                                row0 + i,
                                micro_rows,
                                pair0,
                                block,
                                &mut packed_lhs,
                                KC_PAIRS,
                            );
                            if lhs_cs == 1 {
                                // Bring the next micro-panel's rows towards L2 while this one
                                // is computed (packing otherwise waits on them where the sums
                                // are short).
                                let next_rows = MR.min(rows - (i + micro_rows));
                                for r in 0..next_rows {
                                    let src = lhs
                                        .as_ptr()
                                        .add((row0 + i + micro_rows + r) * lhs_rs + 2 * pair0);
                                    for step in (0..(2 * block).min(k - 2 * pair0)).step_by(16) {
                                        _mm_prefetch::<_MM_HINT_T1>(src.add(step).cast());
                                    }
                                }
                            }
                            packed_lhs.as_ptr()
                        }
                    };
                    for j in (0..cols).step_by(NR) {
                        let panel = (col0 + j) / NR;
                        let rhs_panel = match packed_rhs {
                            Some(words) => words.as_ptr().add(panel * panel_len + pair0 * NR),
                            None => packed_rhs_block.as_ptr().add((panel - panel0) * block * NR),
                        };
                        let out = dst.0.add((row0 + i) * dst_rs + col0 + j);
                        let micro_cols = NR.min(cols - j);
                        macro_rules! dispatch {
                        ($($r:literal)*) => {
                            match micro_rows {
                                $($r => microkernel::<$r>(block, lhs_panel, rhs_panel, out, dst_rs, micro_cols, load_dst),)*
                                _ => unreachable!(),
                            }
                        };
                    }
                        dispatch!(1 2 3 4 5 6 7 8 9 10 11 12);
                    }
                }
                pair0 += block;
            }
            PACKED_LHS.set(packed_lhs);
            if packed_rhs.is_none() {
                PACKED_RHS_BLOCK.set(packed_rhs_block);
            }
        }
    }

    /// Packs `lhs` rows `row0..row0 + rows`, `k` pairs `pair0..pair0 + block` into rows of
    /// `row_words` words (zero past `k`).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_lhs_block(
        shape: &Shape,
        lhs: &[f32],
        row0: usize,
        rows: usize,
        pair0: usize,
        block: usize,
        packed: &mut [u32],
        row_words: usize,
    ) {
        // SAFETY: the caller's contract (features present, extents checked).
        unsafe {
            let Shape {
                k, lhs_rs, lhs_cs, ..
            } = *shape;
            let k0 = 2 * pair0;
            let k_len = (2 * block).min(k - k0);
            if lhs_cs == 1 {
                for r in 0..rows {
                    let src = lhs.as_ptr().add((row0 + r) * lhs_rs + k0);
                    let out = packed.as_mut_ptr().add(r * row_words);
                    // 32 values (16 words) per step; masked loads zero the odd `k`'s partner.
                    for step in (0..2 * block).step_by(32) {
                        let lo_count = k_len.saturating_sub(step);
                        let lo =
                            _mm512_maskz_loadu_ps(column_mask(lo_count), src.wrapping_add(step));
                        let hi = _mm512_maskz_loadu_ps(
                            column_mask(lo_count.saturating_sub(16)),
                            src.wrapping_add(step + 16),
                        );
                        let words: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                        let word_count = (block - step / 2).min(16);
                        _mm512_mask_storeu_epi32(
                            out.add(step / 2).cast(),
                            column_mask(word_count),
                            words,
                        );
                    }
                }
            } else {
                for r in 0..rows {
                    let base = (row0 + r) * lhs_rs;
                    for q in 0..block {
                        let p = k0 + 2 * q;
                        let hi = if p + 1 < k {
                            lhs[base + (p + 1) * lhs_cs]
                        } else {
                            0.0
                        };
                        packed[r * row_words + q] = pair_word(lhs[base + p * lhs_cs], hi);
                    }
                }
            }
        }
    }

    /// `dst (+)= lhs_panel rhs_panel` for `ROWS` x `cols` (`cols` <= 32) over `pairs` `k`
    /// pairs; `lhs_panel` rows are [`KC_PAIRS`] words apart, `rhs_panel` holds 32 words a pair.
    #[inline(always)]
    unsafe fn microkernel<const ROWS: usize>(
        pairs: usize,
        lhs_panel: *const u32,
        rhs_panel: *const u32,
        dst: *mut f32,
        dst_rs: usize,
        cols: usize,
        load_dst: bool,
    ) {
        unsafe {
            // Fetch the output lines for writing while the sums are computed (they are often
            // not cached: measured ~5% faster on 16384 x 128 x 128).
            for r in 0..ROWS {
                let row = dst.wrapping_add(r * dst_rs);
                _mm_prefetch::<_MM_HINT_ET0>(row.cast());
                _mm_prefetch::<_MM_HINT_ET0>(row.wrapping_add(NR - 1).cast());
            }
            let mut sums = [[_mm512_setzero_ps(); 2]; ROWS];
            for q in 0..pairs {
                let rhs_0: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(rhs_panel.add(q * NR).cast()));
                let rhs_1: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(rhs_panel.add(q * NR + 16).cast()));
                for r in 0..ROWS {
                    let word = *lhs_panel.add(r * KC_PAIRS + q);
                    let lhs_pair: __m512bh = std::mem::transmute(_mm512_set1_epi32(word as i32));
                    sums[r][0] = _mm512_dpbf16_ps(sums[r][0], rhs_0, lhs_pair);
                    sums[r][1] = _mm512_dpbf16_ps(sums[r][1], rhs_1, lhs_pair);
                }
            }
            let mask_0 = column_mask(cols);
            let mask_1 = column_mask(cols.saturating_sub(16));
            for r in 0..ROWS {
                let row = dst.add(r * dst_rs);
                let (mut sum_0, mut sum_1) = (sums[r][0], sums[r][1]);
                if load_dst {
                    sum_0 = _mm512_add_ps(sum_0, _mm512_maskz_loadu_ps(mask_0, row));
                    sum_1 =
                        _mm512_add_ps(sum_1, _mm512_maskz_loadu_ps(mask_1, row.wrapping_add(16)));
                }
                _mm512_mask_storeu_ps(row, mask_0, sum_0);
                _mm512_mask_storeu_ps(row.wrapping_add(16), mask_1, sum_1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        crate::test_values::pseudo_random(len, seed, 1.0, 0.0)
    }

    /// A dense operand stored row-major (`transposed = false`) or column-major.
    struct Matrix {
        data: Vec<f32>,
        rs: usize,
        cs: usize,
    }

    fn matrix(rows: usize, cols: usize, transposed: bool, seed: u64) -> Matrix {
        let data = values(rows * cols, seed);
        if transposed {
            Matrix {
                data,
                rs: 1,
                cs: rows,
            }
        } else {
            Matrix {
                data,
                rs: cols,
                cs: 1,
            }
        }
    }

    type Product = fn(
        usize,
        usize,
        usize,
        &mut [f32],
        usize,
        bool,
        &[f32],
        usize,
        usize,
        &[f32],
        usize,
        usize,
        bool,
    );

    fn check(
        m: usize,
        n: usize,
        k: usize,
        lhs_t: bool,
        rhs_t: bool,
        accumulate: bool,
        parallel: bool,
    ) {
        check_product(matmul_bf16, m, n, k, lhs_t, rhs_t, accumulate, parallel);
    }

    /// Checks `product` against f64 sums of the bf16-rounded operands.
    #[allow(clippy::too_many_arguments)]
    fn check_product(
        product: Product,
        m: usize,
        n: usize,
        k: usize,
        lhs_t: bool,
        rhs_t: bool,
        accumulate: bool,
        parallel: bool,
    ) {
        let lhs = matrix(m, k, lhs_t, 1 + m as u64);
        let rhs = matrix(k, n, rhs_t, 2 + n as u64);
        let dst_rs = n + 3;
        let initial = values(m * dst_rs, 3);
        let mut dst = initial.clone();
        product(
            m, n, k, &mut dst, dst_rs, accumulate, &lhs.data, lhs.rs, lhs.cs, &rhs.data, rhs.rs,
            rhs.cs, parallel,
        );
        let round = |x: f32| bf16_to_f32(round_to_bf16(x)) as f64;
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut magnitude) = (0f64, 0f64);
                for p in 0..k {
                    let product = round(lhs.data[i * lhs.rs + p * lhs.cs])
                        * round(rhs.data[p * rhs.rs + j * rhs.cs]);
                    sum += product;
                    magnitude += product.abs();
                }
                let before = initial[i * dst_rs + j] as f64;
                if accumulate {
                    sum += before;
                    magnitude += before.abs();
                }
                let got = dst[i * dst_rs + j] as f64;
                assert!(
                    (got - sum).abs() <= 1e-5 * magnitude + 1e-30,
                    "{m}x{n}x{k} lhs_t {lhs_t} rhs_t {rhs_t} acc {accumulate}: [{i},{j}] {got} vs {sum}"
                );
            }
            // The padding between rows is left alone.
            for j in n..dst_rs {
                assert_eq!(
                    dst[i * dst_rs + j].to_bits(),
                    initial[i * dst_rs + j].to_bits()
                );
            }
        }
    }

    #[test]
    fn bf16_rounding_ties_to_even_and_specials() {
        assert_eq!(round_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even 1.
        assert_eq!(round_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to the even one.
        assert_eq!(round_to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(round_to_bf16(f32::INFINITY), 0x7f80);
        assert_eq!(round_to_bf16(-f32::MAX), 0xff80); // rounds up to -inf
        assert_eq!(round_to_bf16(-1e-40), 0x8000);
        assert_eq!(round_to_bf16(f32::NAN) & 0x7fc0, 0x7fc0);
    }

    /// The scalar rounding (used by strided packing) agrees bitwise with `vcvtne2ps2bf16`
    /// (used by contiguous packing): a product read through strides equals the same product
    /// from contiguous operands.
    #[test]
    fn bf16_strided_packing_matches_contiguous() {
        let (m, n, k) = (29, 45, 37);
        let mut lhs = values(m * k, 11);
        let mut rhs = values(k * n, 12);
        // Ties, denormals, large values.
        lhs[0] = 1.0 + 1.0 / 256.0;
        lhs[1] = 1.0 + 3.0 / 256.0;
        lhs[2] = 1e-39;
        rhs[3] = -1e-40;
        rhs[4] = 3.0e38;
        let lhs_t: Vec<f32> = (0..m * k).map(|e| lhs[(e % m) * k + e / m]).collect();
        let rhs_t: Vec<f32> = (0..k * n).map(|e| rhs[(e % k) * n + e / k]).collect();
        let mut contiguous = vec![0f32; m * n];
        let mut strided = vec![0f32; m * n];
        matmul_bf16(
            m,
            n,
            k,
            &mut contiguous,
            n,
            false,
            &lhs,
            k,
            1,
            &rhs,
            n,
            1,
            false,
        );
        matmul_bf16(
            m,
            n,
            k,
            &mut strided,
            n,
            false,
            &lhs_t,
            1,
            m,
            &rhs_t,
            1,
            k,
            false,
        );
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&contiguous), bits(&strided));
    }

    #[test]
    fn bf16_small_and_odd_shapes() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (33, 13, 7),
            (5, 70, 1),
            (13, 33, 2),
            (25, 31, 3),
            (12, 32, 64),
            (1, 100, 301),
        ] {
            for accumulate in [false, true] {
                check(m, n, k, false, false, accumulate, false);
            }
        }
    }

    #[test]
    fn bf16_transposed_operands() {
        for &(m, n, k) in &[(33, 13, 7), (50, 65, 257), (7, 300, 40)] {
            for (lhs_t, rhs_t) in [(true, false), (false, true), (true, true)] {
                check(m, n, k, lhs_t, rhs_t, true, true);
            }
        }
    }

    #[test]
    fn bf16_multiple_tiles_and_k_blocks() {
        // Several output tiles, `k` blocks (k > 2 * KC_PAIRS) and edges in every dimension.
        check(101, 530, 517, false, false, false, true);
        check(101, 530, 517, false, false, true, true);
        // More rows than PACK_PER_TILE_ROWS: `rhs` packed once for all tiles.
        check(203, 75, 401, false, false, true, true);
        check(203, 75, 401, true, true, false, true);
        check(203, 75, 401, false, true, false, false);
    }

    /// The path for CPUs without AVX512-BF16.
    #[test]
    fn bf16_rounded_f32_fallback() {
        for &(m, n, k) in &[(1, 1, 1), (33, 13, 7), (50, 65, 257)] {
            for (lhs_t, rhs_t) in [(false, false), (true, true)] {
                check_product(matmul_rounded_f32, m, n, k, lhs_t, rhs_t, true, false);
                check_product(matmul_rounded_f32, m, n, k, lhs_t, rhs_t, false, true);
            }
        }
    }

    /// The AMX driver on tiles `T` with the strides as given (no transposed copies); with
    /// `PACKED`, `lhs` packed whole first, as [`PackedLhs`] does on AMX.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    fn amx_product<T: amx::Tiles, const PACKED: bool>(
        m: usize,
        n: usize,
        k: usize,
        dst: &mut [f32],
        dst_rs: usize,
        accumulate: bool,
        lhs: &[f32],
        lhs_rs: usize,
        lhs_cs: usize,
        rhs: &[f32],
        rhs_rs: usize,
        rhs_cs: usize,
        parallel: bool,
    ) {
        let shape = Shape {
            m,
            n,
            k,
            dst_rs,
            lhs_rs,
            lhs_cs,
            rhs_rs,
            rhs_cs,
            accumulate,
        };
        // SAFETY: the callers check the features; `check_product` sizes the operands.
        unsafe {
            if PACKED {
                let words = amx::pack_lhs(&shape, lhs);
                amx::matmul::<T>(
                    &shape,
                    dst,
                    avx512::Lhs::Packed(&words),
                    rhs,
                    None,
                    parallel,
                )
            } else {
                amx::matmul::<T>(&shape, dst, avx512::Lhs::Floats(lhs), rhs, None, parallel)
            }
        }
    }

    /// Shapes with edges in every dimension, transposed operands, several tiles and `k`
    /// blocks (the last padded to whole tile steps).
    #[cfg(target_arch = "x86_64")]
    fn check_amx_shapes(product: Product) {
        for &(m, n, k) in &[
            (1, 1, 1),
            (33, 13, 7),
            (5, 70, 1),
            (32, 32, 32),
            (31, 33, 64),
        ] {
            for accumulate in [false, true] {
                check_product(product, m, n, k, false, false, accumulate, false);
            }
        }
        for (lhs_t, rhs_t) in [(true, false), (false, true), (true, true)] {
            check_product(product, 50, 65, 257, lhs_t, rhs_t, true, true);
        }
        check_product(product, 203, 300, 1100, false, false, true, true);
        check_product(product, 230, 75, 1100, false, false, false, true);
    }

    /// The AMX packing, padding and blocking with `tdpbf16ps` emulated: runs on any CPU with
    /// AVX512-BF16 (which packs).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn bf16_amx_blocking_with_emulated_tiles() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX512-BF16, which packs AMX operands");
            return;
        }
        check_amx_shapes(amx_product::<amx::Emulated, false>);
    }

    /// An `lhs` packed whole for AMX gives the bits of the product that packs it per task.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn bf16_amx_packed_lhs_matches_plain_emulated() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX512-BF16, which packs AMX operands");
            return;
        }
        check_amx_shapes(amx_product::<amx::Emulated, true>);
        for (m, n, k, lhs_t) in [
            (33, 13, 7, false),
            (101, 130, 517, true),
            (70, 75, 1100, false),
        ] {
            let lhs = matrix(m, k, lhs_t, 41);
            let rhs = matrix(k, n, false, 42);
            let initial = values(m * n, 43);
            let (mut plain, mut packed) = (initial.clone(), initial);
            let args = (&lhs.data, lhs.rs, lhs.cs, &rhs.data, rhs.rs, rhs.cs);
            amx_product::<amx::Emulated, false>(
                m, n, k, &mut plain, n, true, args.0, args.1, args.2, args.3, args.4, args.5, true,
            );
            amx_product::<amx::Emulated, true>(
                m,
                n,
                k,
                &mut packed,
                n,
                true,
                args.0,
                args.1,
                args.2,
                args.3,
                args.4,
                args.5,
                true,
            );
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&plain), bits(&packed), "{m}x{n}x{k}");
        }
    }

    /// The AMX instructions themselves, where this CPU and OS run them.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn bf16_amx_tiles_on_this_cpu() {
        if !amx::available() {
            eprintln!("skipped: {}", amx::unavailable_reason());
            return;
        }
        check_amx_shapes(amx_product::<amx::Amx, false>);
        check_amx_shapes(amx_product::<amx::Amx, true>);
        deterministic_across_threads(amx_product::<amx::Amx, false>, 150, 300, 1100);
        deterministic_across_threads(amx_product::<amx::Amx, false>, 260, 100, 600);
    }

    /// Linux refuses the tile data state to a process on a CPU without AMX (and grants it where
    /// AMX runs): the permission request reaches the kernel.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[test]
    fn bf16_amx_permission_follows_the_cpu() {
        assert_eq!(
            amx::request_tile_data().is_ok(),
            amx::cpu_has_amx_bf16(),
            "{}",
            amx::unavailable_reason()
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn bf16_amx_deterministic_across_threads_emulated() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX512-BF16, which packs AMX operands");
            return;
        }
        deterministic_across_threads(amx_product::<amx::Emulated, false>, 150, 300, 600);
    }

    /// Where no override is set, the engine is one this CPU runs, and products run in bf16 only
    /// where it is not f32.
    #[test]
    fn bf16_engine_runs_here() {
        assert!(engine().runs_here(), "{:?}", engine());
        assert!(Engine::F32.runs_here());
        if !available() {
            assert_eq!(engine(), Engine::F32);
            assert!(set_engine(Engine::Avx512Bf16).is_err());
        }
    }

    /// A packed `lhs` gives the bits of the plain product on this CPU's engine, over tiles, `k`
    /// blocks and both ways of packing `rhs`.
    #[test]
    fn bf16_packed_lhs_matches_plain() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX512-BF16, which the packed lhs serves");
            return;
        }
        for (m, n, k, lhs_t) in [
            (33, 13, 7, false),
            (101, 530, 517, true),
            (203, 75, 401, false),
        ] {
            let lhs = matrix(m, k, lhs_t, 31);
            let rhs = matrix(k, n, false, 32);
            let initial = values(m * n, 33);
            let (mut plain, mut packed) = (initial.clone(), initial);
            matmul_bf16(
                m, n, k, &mut plain, n, true, &lhs.data, lhs.rs, lhs.cs, &rhs.data, rhs.rs, rhs.cs,
                true,
            );
            let lhs_packed = PackedLhs::new(m, k, &lhs.data, lhs.rs, lhs.cs).expect("packed");
            matmul_bf16_packed(
                &lhs_packed,
                n,
                &mut packed,
                n,
                true,
                &rhs.data,
                rhs.rs,
                rhs.cs,
                true,
            );
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&plain), bits(&packed), "{m}x{n}x{k}");
        }
    }

    #[test]
    fn bf16_zero_k() {
        let mut dst = vec![1f32; 6];
        matmul_bf16(2, 3, 0, &mut dst, 3, true, &[], 0, 1, &[], 3, 1, false);
        assert_eq!(dst, vec![1f32; 6]);
        matmul_bf16(2, 3, 0, &mut dst, 3, false, &[], 0, 1, &[], 3, 1, false);
        assert_eq!(dst, vec![0f32; 6]);
    }

    /// Bitwise equal results on 1 and 3 threads and without rayon.
    #[test]
    fn bf16_deterministic_across_threads() {
        // Both ways of packing `rhs` (rows up to PACK_PER_TILE_ROWS and beyond).
        for (m, n, k) in [(150, 300, 533), (260, 100, 400)] {
            deterministic_across_threads(matmul_bf16, m, n, k);
        }
    }

    fn deterministic_across_threads(product: Product, m: usize, n: usize, k: usize) {
        let lhs = values(m * k, 21);
        let rhs = values(k * n, 22);
        let run = |threads: Option<usize>| {
            let mut dst = values(m * n, 23);
            let mut product = || {
                product(
                    m,
                    n,
                    k,
                    &mut dst,
                    n,
                    true,
                    &lhs,
                    k,
                    1,
                    &rhs,
                    n,
                    1,
                    threads.is_some(),
                )
            };
            match threads {
                Some(t) => crate::test_values::on_threads(t, product),
                None => product(),
            }
            dst.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        let serial = run(None);
        assert_eq!(run(Some(1)), serial);
        assert_eq!(run(Some(3)), serial);
        assert_eq!(run(Some(3)), serial);
    }
}
