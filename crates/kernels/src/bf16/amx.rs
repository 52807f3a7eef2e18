//! bf16 products on AMX tiles (Intel Sapphire Rapids and later): `tdpbf16ps` multiplies a
//! 16 x 32 bf16 tile by a 32 x 16 one into 16 x 16 f32 sums, an order of magnitude more per
//! instruction than `vdpbf16ps`. The AMX intrinsics are not stable Rust, so the tile code is
//! stable inline assembly, chosen at run time; Linux hands a process the tile data state only
//! after it asks (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), which [`available`]
//! does once.
//!
//! Blocking: a task computes an output tile over `k` blocks of about [`KC_PAIRS`] pairs, fixed
//! by `k` alone and the last padded with zero pairs to whole tile steps of 16. Per block it packs
//! its `rhs` columns in the AVX-512 path's panels of 32 columns (row `q` of a B tile is 16 words
//! `(rhs[2q][c], rhs[2q + 1][c])`, 128 bytes apart) and per 32 rows the `lhs` block (rows of
//! `k` pairs). Each 32 x 32 micro tile sums the block from zero in four C tiles and adds them to
//! `dst`, so every output element is summed the same way whichever task computes it: results
//! do not depend on the thread count. [`pack_lhs`] packs a whole `lhs` once in the same blocks
//! (a convolution's weights, read for every image of a batch); the products are bitwise the same.
//! Where several rows of tiles share `rhs`, it is packed whole once first ([`pack_whole_rhs`],
//! the same words) and each tile spans every column; a convolution's patches are packed that way
//! straight from its image ([`patches`]).
//!
//! The tile arithmetic sits behind [`Tiles`] so that the packing and blocking are tested on any
//! CPU against an emulation of `tdpbf16ps`; the assembly itself runs only where AMX does.

use std::arch::asm;

pub(crate) mod patches;

use rayon::prelude::*;

use super::avx512::{
    Lhs, SharedMut, pack_all_rhs_pairs, pack_lhs_block, pack_rhs_pairs, take_buffer,
};
use super::{NR, Shape, split, tile_range};

/// Output rows per micro tile: two C tiles of 16 rows.
const MR: usize = 32;
/// `k` pairs per tile step: an A tile row is 16 words (64 bytes).
const STEP_PAIRS: usize = 16;
/// About this many `k` pairs per block (a multiple of [`STEP_PAIRS`]): the packed `lhs` rows
/// (32 x 256 words, 32 KiB) stay in L1/L2 while the micro tiles of a row sweep the columns.
const KC_PAIRS: usize = 256;
/// Output tile of a task (multiples of [`MR`] and [`NR`]).
const TILE_ROWS: usize = 192;
const TILE_COLS: usize = 256;
/// Bytes between the `k` pairs of a packed `rhs` panel.
const RHS_PAIR_BYTES: usize = NR * 4;

/// Whether this CPU and OS run AMX-BF16 tiles (and AVX512-BF16, which packs the operands);
/// asks Linux for the tile data state the first time.
pub fn available() -> bool {
    use std::sync::OnceLock;
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| super::available() && cpu_has_amx_bf16() && os_enables_tiles())
}

/// Why [`available`] is false (for tests that skip).
#[cfg(test)]
pub(crate) fn unavailable_reason() -> String {
    if !super::available() {
        "this CPU lacks AVX512-BF16".into()
    } else if !cpu_has_amx_bf16() {
        "this CPU lacks AMX-BF16 (CPUID leaf 7 EDX bits 22 and 24): the AMX path is untested here"
            .into()
    } else if !os_enables_tiles() {
        format!(
            "the OS does not grant AMX tile data: {:?}",
            request_tile_data()
        )
    } else {
        "AMX runs here".into()
    }
}

/// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (EDX bit 24).
pub(super) fn cpu_has_amx_bf16() -> bool {
    use std::arch::x86_64::__cpuid_count;
    let (max_leaf, leaf7) = (__cpuid_count(0, 0).eax, __cpuid_count(7, 0));
    max_leaf >= 7 && leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0
}

/// The OS saves tile state (XCR0 bits 17 and 18) and grants this process its use.
fn os_enables_tiles() -> bool {
    if std::arch::x86_64::__cpuid_count(1, 0).ecx & (1 << 27) == 0 {
        return false;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV exists where CPUID reports OSXSAVE (checked).
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    let xcr0 = (hi as u64) << 32 | lo as u64;
    xcr0 & (0b11 << 17) == 0b11 << 17 && request_tile_data() == Ok(())
}

/// Asks Linux for permission to use the tile data state (process-wide, once); the kernel's
/// error number otherwise (EINVAL where the CPU or kernel lacks AMX).
#[cfg(target_os = "linux")]
pub(super) fn request_tile_data() -> Result<(), i64> {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
    const XFEATURE_XTILEDATA: u64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl reads no memory for this request; the syscall clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret == 0 { Ok(()) } else { Err(-ret) }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn request_tile_data() -> Result<(), i64> {
    Err(0)
}

/// The tile arithmetic: the products' 32 x 32 micro tile and attention's 16 x 16 tiles
/// (`attention::bf16`).
pub(crate) trait Tiles {
    /// Run by a task before its micro tiles (loads the tile configuration).
    ///
    /// # Safety
    /// Only where the implementation's instructions exist.
    unsafe fn begin() {}
    /// Run by a task after its micro tiles (releases the tile state).
    ///
    /// # Safety
    /// As [`Tiles::begin`].
    unsafe fn end() {}
    /// `out` (32 x 32, rows 128 bytes apart) = the sums over `steps` x 16 `k` pairs of 32 packed
    /// `lhs` rows (`lhs_stride` bytes apart) and a packed `rhs` panel (32 words per pair).
    ///
    /// # Safety
    /// `steps` >= 1 and the pointers cover what is read and written.
    unsafe fn micro_tile(
        steps: usize,
        lhs: *const u32,
        lhs_stride: usize,
        rhs: *const u32,
        out: *mut f32,
    );
    /// Four 16 x 16 tiles sharing their A tiles: tile `g` (rows `out_stride` bytes apart, at
    /// `out + 64 g` bytes) = the sum over `steps` of the pair-word A tile at `a + s * a_step`
    /// bytes (rows `a_stride` bytes apart) times the B tile at `b + (g * steps + s) * 1024`
    /// bytes (16 rows of 16 pair words): attention's scores of four groups of 16 keys. Four
    /// independent sums keep the tile unit busy (one sum waits on each product).
    ///
    /// # Safety
    /// `steps` >= 1 and the pointers cover what is read and written.
    unsafe fn dot16_four(
        steps: usize,
        a: *const u8,
        a_stride: usize,
        a_step: usize,
        b: *const u32,
        out: *mut f32,
        out_stride: usize,
    );
    /// One 16 x 16 product over `steps` A tiles (at `a + s * a_step` bytes, rows `a_stride`
    /// bytes apart) and B tiles (at `b + s * 1024` bytes) as four partial sums, written to
    /// `partials` (4 x 256 floats): sum `j` takes the steps `s = j mod 4` below the last whole
    /// four, sum 0 also the rest. Attention's product of probabilities with values, whose
    /// `k` (the keys) is long: one running sum would wait on each product.
    ///
    /// # Safety
    /// `steps` >= 1 and the pointers cover what is read and written.
    unsafe fn dot16_split(
        steps: usize,
        a: *const u8,
        a_stride: usize,
        a_step: usize,
        b: *const u32,
        partials: *mut f32,
    );
}

/// Bytes of a 16 x 16 B tile of pair words.
pub(crate) const B_TILE_BYTES: usize = 1024;

/// The AMX instructions.
pub(crate) struct Amx;

/// The 64-byte tile configuration `ldtilecfg` reads (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

/// Tiles 0-3 the C sums, 4-5 the A rows, 6-7 the B panels: all 16 rows of 64 bytes.
static TILE_CONFIG: TileConfig = {
    let mut bytes_per_row = [0u16; 16];
    let mut rows = [0u8; 16];
    let mut t = 0;
    while t < 8 {
        bytes_per_row[t] = 64;
        rows[t] = 16;
        t += 1;
    }
    TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row,
        rows,
    }
};

impl Tiles for Amx {
    unsafe fn begin() {
        // SAFETY: AMX present (caller); the configuration is 64 valid bytes.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &TILE_CONFIG, options(nostack, readonly)) };
    }

    unsafe fn end() {
        // SAFETY: AMX present (caller).
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    unsafe fn micro_tile(
        steps: usize,
        lhs: *const u32,
        lhs_stride: usize,
        rhs: *const u32,
        out: *mut f32,
    ) {
        // SAFETY: the caller's contract; the tiles were configured by `begin`.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "2:",
                "tileloadd tmm4, [{a0} + {a_stride}*1]",
                "tileloadd tmm5, [{a1} + {a_stride}*1]",
                "tileloadd tmm6, [{b} + {b_stride}*1]",
                "tileloadd tmm7, [{b} + {b_stride}*1 + 64]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a0}, 64",
                "add {a1}, 64",
                "add {b}, {b_step}",
                "dec {steps}",
                "jnz 2b",
                "tilestored [{c0} + {c_stride}*1], tmm0",
                "tilestored [{c0} + {c_stride}*1 + 64], tmm1",
                "tilestored [{c1} + {c_stride}*1], tmm2",
                "tilestored [{c1} + {c_stride}*1 + 64], tmm3",
                a0 = inout(reg) lhs => _,
                a1 = inout(reg) lhs.byte_add(16 * lhs_stride) => _,
                b = inout(reg) rhs => _,
                steps = inout(reg) steps => _,
                a_stride = in(reg) lhs_stride,
                b_stride = in(reg) RHS_PAIR_BYTES,
                b_step = const STEP_PAIRS * RHS_PAIR_BYTES,
                c0 = in(reg) out,
                c1 = in(reg) out.byte_add(16 * RHS_PAIR_BYTES),
                c_stride = in(reg) RHS_PAIR_BYTES,
                options(nostack),
            );
        }
    }

    unsafe fn dot16_four(
        steps: usize,
        a: *const u8,
        a_stride: usize,
        a_step: usize,
        b: *const u32,
        out: *mut f32,
        out_stride: usize,
    ) {
        let group_bytes = steps * B_TILE_BYTES;
        // SAFETY: the caller's contract; the tiles were configured by `begin` (16 rows of 64
        // bytes each).
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "2:",
                "tileloadd tmm4, [{a} + {a_stride}*1]",
                "tileloadd tmm5, [{b} + {b_stride}*1]",
                "tdpbf16ps tmm0, tmm4, tmm5",
                "tileloadd tmm6, [{b1} + {b_stride}*1]",
                "tdpbf16ps tmm1, tmm4, tmm6",
                "tileloadd tmm7, [{b2} + {b_stride}*1]",
                "tdpbf16ps tmm2, tmm4, tmm7",
                "tileloadd tmm5, [{b3} + {b_stride}*1]",
                "tdpbf16ps tmm3, tmm4, tmm5",
                "add {a}, {a_step}",
                "add {b}, {b_step}",
                "add {b1}, {b_step}",
                "add {b2}, {b_step}",
                "add {b3}, {b_step}",
                "dec {steps}",
                "jnz 2b",
                "tilestored [{c} + {c_stride}*1], tmm0",
                "tilestored [{c} + {c_stride}*1 + 64], tmm1",
                "tilestored [{c} + {c_stride}*1 + 128], tmm2",
                "tilestored [{c} + {c_stride}*1 + 192], tmm3",
                a = inout(reg) a => _,
                b = inout(reg) b => _,
                b1 = inout(reg) b.byte_add(group_bytes) => _,
                b2 = inout(reg) b.byte_add(2 * group_bytes) => _,
                b3 = inout(reg) b.byte_add(3 * group_bytes) => _,
                steps = inout(reg) steps => _,
                a_stride = in(reg) a_stride,
                a_step = in(reg) a_step,
                b_stride = in(reg) 64usize,
                b_step = const B_TILE_BYTES,
                c = in(reg) out,
                c_stride = in(reg) out_stride,
                options(nostack),
            );
        }
    }

    unsafe fn dot16_split(
        steps: usize,
        a: *const u8,
        a_stride: usize,
        a_step: usize,
        b: *const u32,
        partials: *mut f32,
    ) {
        // SAFETY: the caller's contract; the tiles were configured by `begin`.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "test {quads}, {quads}",
                "jz 3f",
                "2:",
                "tileloadd tmm4, [{a} + {a_stride}*1]",
                "tileloadd tmm6, [{b} + {b_stride}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "add {a}, {a_step}",
                "tileloadd tmm5, [{a} + {a_stride}*1]",
                "tileloadd tmm7, [{b} + {b_stride}*1 + 1024]",
                "tdpbf16ps tmm1, tmm5, tmm7",
                "add {a}, {a_step}",
                "tileloadd tmm4, [{a} + {a_stride}*1]",
                "tileloadd tmm6, [{b} + {b_stride}*1 + 2048]",
                "tdpbf16ps tmm2, tmm4, tmm6",
                "add {a}, {a_step}",
                "tileloadd tmm5, [{a} + {a_stride}*1]",
                "tileloadd tmm7, [{b} + {b_stride}*1 + 3072]",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a}, {a_step}",
                "add {b}, 4096",
                "dec {quads}",
                "jnz 2b",
                "3:",
                "test {rest}, {rest}",
                "jz 5f",
                "4:",
                "tileloadd tmm4, [{a} + {a_stride}*1]",
                "tileloadd tmm6, [{b} + {b_stride}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "add {a}, {a_step}",
                "add {b}, 1024",
                "dec {rest}",
                "jnz 4b",
                "5:",
                "tilestored [{c} + {c_stride}*1], tmm0",
                "tilestored [{c} + {c_stride}*1 + 1024], tmm1",
                "tilestored [{c} + {c_stride}*1 + 2048], tmm2",
                "tilestored [{c} + {c_stride}*1 + 3072], tmm3",
                a = inout(reg) a => _,
                b = inout(reg) b => _,
                quads = inout(reg) steps / 4 => _,
                rest = inout(reg) steps % 4 => _,
                a_stride = in(reg) a_stride,
                a_step = in(reg) a_step,
                b_stride = in(reg) 64usize,
                c = in(reg) partials,
                c_stride = in(reg) 64usize,
                options(nostack),
            );
        }
    }
}

/// `tdpbf16ps` in scalar code (f32 products of the bf16 halves, summed in order), to test the
/// packing and blocking on CPUs without AMX.
#[cfg(test)]
pub(crate) struct Emulated;

#[cfg(test)]
impl Tiles for Emulated {
    unsafe fn micro_tile(
        steps: usize,
        lhs: *const u32,
        lhs_stride: usize,
        rhs: *const u32,
        out: *mut f32,
    ) {
        let halves = |w: u32| (f32::from_bits(w << 16), f32::from_bits(w & 0xffff_0000));
        for r in 0..MR {
            for c in 0..NR {
                let mut sum = 0f32;
                for q in 0..steps * STEP_PAIRS {
                    // SAFETY: the caller's contract.
                    let (a, b) =
                        unsafe { (*lhs.byte_add(r * lhs_stride).add(q), *rhs.add(q * NR + c)) };
                    let ((a_lo, a_hi), (b_lo, b_hi)) = (halves(a), halves(b));
                    sum += a_lo * b_lo;
                    sum += a_hi * b_hi;
                }
                // SAFETY: the caller's contract.
                unsafe { *out.add(r * NR + c) = sum };
            }
        }
    }

    unsafe fn dot16_four(
        steps: usize,
        a: *const u8,
        a_stride: usize,
        a_step: usize,
        b: *const u32,
        out: *mut f32,
        out_stride: usize,
    ) {
        for g in 0..4 {
            // SAFETY: the caller's contract.
            unsafe {
                let b = b.add(g * steps * B_TILE_BYTES / 4);
                let sums = emulated_dot16(0..steps, a, a_stride, a_step, b);
                for (r, row) in sums.chunks_exact(16).enumerate() {
                    let dst = out.byte_add(r * out_stride).add(16 * g);
                    std::ptr::copy_nonoverlapping(row.as_ptr(), dst, 16);
                }
            }
        }
    }

    unsafe fn dot16_split(
        steps: usize,
        a: *const u8,
        a_stride: usize,
        a_step: usize,
        b: *const u32,
        partials: *mut f32,
    ) {
        let whole = steps / 4 * 4;
        for j in 0..4 {
            let mut order: Vec<usize> = (j..whole).step_by(4).collect();
            if j == 0 {
                order.extend(whole..steps);
            }
            // SAFETY: the caller's contract.
            unsafe {
                let sums = emulated_dot16(order, a, a_stride, a_step, b);
                std::ptr::copy_nonoverlapping(sums.as_ptr(), partials.add(256 * j), 256);
            }
        }
    }
}

/// The 16 x 16 sums over the tile steps `steps` (in that order) of the A tiles at `a + s *
/// a_step` bytes and the B tiles at `b + s * 1024` bytes, as `tdpbf16ps` in scalar code.
///
/// # Safety
/// The pointers cover what is read.
#[cfg(test)]
unsafe fn emulated_dot16(
    steps: impl IntoIterator<Item = usize>,
    a: *const u8,
    a_stride: usize,
    a_step: usize,
    b: *const u32,
) -> [f32; 256] {
    let halves = |w: u32| (f32::from_bits(w << 16), f32::from_bits(w & 0xffff_0000));
    let mut sums = [0f32; 256];
    for s in steps {
        for (i, sum) in sums.iter_mut().enumerate() {
            let (r, c) = (i / 16, i % 16);
            for p in 0..16 {
                // SAFETY: the caller's contract.
                let (x, y) = unsafe {
                    let row = a.add(s * a_step + r * a_stride).cast::<u32>();
                    (row.add(p).read_unaligned(), *b.add((s * 16 + p) * 16 + c))
                };
                let ((x_lo, x_hi), (y_lo, y_hi)) = (halves(x), halves(y));
                *sum += x_lo * y_lo;
                *sum += x_hi * y_hi;
            }
        }
    }
    sums
}

/// `k` pairs per block: near-equal blocks fixed by `k` alone, whole tile steps each.
fn block_pairs(k: usize) -> usize {
    split(k.div_ceil(2), KC_PAIRS, STEP_PAIRS)
}

/// Where [`pack_lhs`] puts the rows of the micro tile at `row` (a multiple of [`MR`]) and the
/// `k` block at `pair0`: one micro tile's rows of `block_pairs` words after another, by block.
fn packed_lhs_offset(m: usize, block_pairs: usize, pair0: usize, row: usize) -> usize {
    ((pair0 / block_pairs) * m.div_ceil(MR) + row / MR) * MR * block_pairs
}

/// All of `lhs` (`shape`'s `m` x `k` and `lhs` strides) rounded to bf16 in the blocks
/// [`matmul`] packs per task, zero past `m` and `k`: [`matmul`] reads it as [`Lhs::Packed`].
///
/// # Safety
/// AVX512-BF16 present; `lhs` covers the extents in `shape`.
pub(super) unsafe fn pack_lhs(shape: &Shape, lhs: &[f32]) -> Vec<u32> {
    let (m, pairs) = (shape.m, shape.k.div_ceil(2));
    let block_pairs = block_pairs(shape.k);
    let micro_panels = m.div_ceil(MR);
    let mut words = vec![0u32; pairs.div_ceil(block_pairs) * micro_panels * MR * block_pairs];
    words
        .par_chunks_mut(MR * block_pairs)
        .enumerate()
        .for_each(|(i, chunk)| {
            let (pair0, row0) = (i / micro_panels * block_pairs, i % micro_panels * MR);
            let (block, rows) = (block_pairs.min(pairs - pair0), MR.min(m - row0));
            debug_assert_eq!(
                packed_lhs_offset(m, block_pairs, pair0, row0),
                i * chunk.len()
            );
            // SAFETY: the caller's contract.
            unsafe { pack_lhs_block(shape, lhs, row0, rows, pair0, block, chunk, block_pairs) }
        });
    words
}

/// `dst (+)= lhs rhs` on tiles `T` (see [`super::matmul_bf16`]; strides as in `shape`), with
/// `rhs` already in [`pack_whole_rhs`]'s layout where `prepacked_rhs` is given (then `rhs` is
/// not read).
///
/// # Safety
/// AVX512-BF16 present, and `T`'s instructions; the slices cover the extents in `shape`.
pub(super) unsafe fn matmul<T: Tiles>(
    shape: &Shape,
    dst: &mut [f32],
    lhs: Lhs,
    rhs: &[f32],
    prepacked_rhs: Option<&[u32]>,
    parallel: bool,
) {
    let Shape { m, n, k, .. } = *shape;
    let block_pairs = block_pairs(k);
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let (micro_panels, panels) = (m.div_ceil(MR), n.div_ceil(NR));
    let mut row_tiles = micro_panels.div_ceil(TILE_ROWS / MR);
    // Several rows of tiles: `rhs` packed once for all of them, and each tile spans every
    // column, so that its `lhs` rows are packed once too (packing per tile, a dense layer's
    // weights were packed once per 192 rows, its inputs once per 256 columns).
    let whole_rhs = row_tiles > 1 || prepacked_rhs.is_some();
    let mut col_tiles = if whole_rhs {
        1
    } else {
        panels.div_ceil(TILE_COLS / NR)
    };
    // Tiles only decide who computes what: a multiple of the threads where that is possible.
    while (row_tiles * col_tiles) % threads != 0 && col_tiles < panels && !whole_rhs {
        col_tiles += 1;
    }
    while (row_tiles * col_tiles) % threads != 0 && row_tiles < micro_panels {
        row_tiles += 1;
    }
    let own_rhs = (whole_rhs && prepacked_rhs.is_none()).then(|| {
        // SAFETY: the caller's contract.
        unsafe { pack_whole_rhs(shape, rhs, parallel) }
    });
    let packed_rhs = prepacked_rhs.or(own_rhs.as_deref());
    let dst_ptr = SharedMut(dst.as_mut_ptr());
    let run_tile = |tile: usize| {
        let rows = tile_range(tile / col_tiles, row_tiles, micro_panels, MR, m);
        let cols = tile_range(tile % col_tiles, col_tiles, panels, NR, n);
        // SAFETY: tiles are disjoint; the caller's contract.
        unsafe {
            compute_tile::<T>(
                shape,
                dst_ptr,
                lhs,
                rhs,
                packed_rhs,
                block_pairs,
                rows,
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
    if let Some(words) = own_rhs {
        super::avx512::PACKED_RHS_WHOLE.set(words);
    }
}

/// Pairs of `k` per panel of [`pack_whole_rhs`]: whole tile steps, zero past `k`.
fn whole_rhs_pairs(k: usize) -> usize {
    k.div_ceil(2).next_multiple_of(STEP_PAIRS)
}

/// All of `rhs` as panels of 32 columns, each [`whole_rhs_pairs`] pairs of 32 words (the
/// layout [`compute_tile`] packs a block at a time).
///
/// # Safety
/// AVX512-BF16 present; `rhs` covers the extents in `shape`.
unsafe fn pack_whole_rhs(shape: &Shape, rhs: &[f32], parallel: bool) -> Vec<u32> {
    let (pairs, panels) = (shape.k.div_ceil(2), shape.n.div_ceil(NR));
    let panel_words = whole_rhs_pairs(shape.k) * NR;
    let mut words = take_buffer(&super::avx512::PACKED_RHS_WHOLE, panels * panel_words);
    for panel in words[..panels * panel_words].chunks_exact_mut(panel_words) {
        panel[pairs * NR..].fill(0);
    }
    // SAFETY: the buffer holds every panel; the caller's contract.
    unsafe { pack_all_rhs_pairs(shape, rhs, &mut words, panel_words, parallel) };
    words
}

/// Computes the output tile of `rows` = (first, count) and `cols` over all of `k`, reading
/// `rhs` from `packed_rhs` ([`pack_whole_rhs`]) where given, else packing its blocks.
///
/// # Safety
/// As [`matmul`]; no other task writes this tile.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn compute_tile<T: Tiles>(
    shape: &Shape,
    dst: SharedMut<f32>,
    lhs: Lhs,
    rhs: &[f32],
    packed_rhs: Option<&[u32]>,
    block_pairs: usize,
    (row0, rows): (usize, usize),
    (col0, cols): (usize, usize),
) {
    let pairs = shape.k.div_ceil(2);
    let (panel0, panel1) = (col0 / NR, (col0 + cols).div_ceil(NR));
    let mut packed_lhs = take_buffer(&super::avx512::PACKED_LHS, MR * block_pairs);
    let mut own_rhs = take_buffer(
        &super::avx512::PACKED_RHS_BLOCK,
        if packed_rhs.is_some() {
            0
        } else {
            (panel1 - panel0) * block_pairs * NR
        },
    );
    let mut sums = [0f32; MR * NR];
    // SAFETY: the caller's contract.
    unsafe { T::begin() };
    let mut pair0 = 0;
    while pair0 < pairs {
        let block = block_pairs.min(pairs - pair0);
        let padded = block.next_multiple_of(STEP_PAIRS);
        // Where panel `p`'s pairs of this block start, and the stride of panels.
        let (rhs_words, first_panel, panel_words) = match packed_rhs {
            Some(whole) => (&whole[pair0 * NR..], 0, whole_rhs_pairs(shape.k) * NR),
            None => {
                let panel_words = padded * NR;
                let words = SharedMut(own_rhs.as_mut_ptr());
                // SAFETY: the buffer holds (panel1 - panel0) panels of `panel_words`; the
                // caller's contract.
                unsafe {
                    pack_rhs_pairs(
                        shape,
                        rhs,
                        pair0,
                        pair0 + block,
                        panel0,
                        panel1,
                        words,
                        panel_words,
                    )
                };
                let own = &mut own_rhs[..(panel1 - panel0) * panel_words];
                for panel in own.chunks_exact_mut(panel_words) {
                    panel[block * NR..].fill(0);
                }
                (&own_rhs[..], panel0, panel_words)
            }
        };
        for i in (0..rows).step_by(MR) {
            let micro_rows = MR.min(rows - i);
            // 32 rows of packed pairs, zero past `block` up to `padded`, and their stride.
            let (lhs_rows, lhs_row_words) = match lhs {
                Lhs::Packed(words) => {
                    let at = packed_lhs_offset(shape.m, block_pairs, pair0, row0 + i);
                    (words[at..at + MR * block_pairs].as_ptr(), block_pairs)
                }
                Lhs::Floats(lhs) => {
                    let lhs_words = &mut packed_lhs[..MR * padded];
                    if micro_rows < MR || padded > block {
                        lhs_words.fill(0);
                    }
                    // SAFETY: the caller's contract.
                    unsafe {
                        pack_lhs_block(
                            shape,
                            lhs,
                            row0 + i,
                            micro_rows,
                            pair0,
                            block,
                            lhs_words,
                            padded,
                        )
                    };
                    (lhs_words.as_ptr(), padded)
                }
            };
            for j in (0..cols).step_by(NR) {
                let rhs_panel = &rhs_words[((col0 + j) / NR - first_panel) * panel_words..];
                // SAFETY: `padded` >= 16 pairs of 32 rows and of a panel are packed.
                unsafe {
                    T::micro_tile(
                        padded / STEP_PAIRS,
                        lhs_rows,
                        lhs_row_words * 4,
                        rhs_panel.as_ptr(),
                        sums.as_mut_ptr(),
                    )
                };
                let out = dst.0.wrapping_add((row0 + i) * shape.dst_rs + col0 + j);
                let load_dst = shape.accumulate || pair0 > 0;
                // SAFETY: the tile is this task's; extents checked by `matmul_bf16`.
                unsafe {
                    add_sums(
                        &sums,
                        out,
                        shape.dst_rs,
                        micro_rows,
                        NR.min(cols - j),
                        load_dst,
                    )
                };
            }
        }
        pair0 += block;
    }
    // SAFETY: as `begin`.
    unsafe { T::end() };
    super::avx512::PACKED_LHS.set(packed_lhs);
    super::avx512::PACKED_RHS_BLOCK.set(own_rhs);
}

/// `dst = sums (+ dst when load_dst)` for the `rows` x `cols` corner of the 32 x 32 `sums`.
///
/// # Safety
/// `dst` covers `rows` rows of `cols` floats, `dst_rs` apart.
#[inline(always)]
unsafe fn add_sums(
    sums: &[f32; MR * NR],
    dst: *mut f32,
    dst_rs: usize,
    rows: usize,
    cols: usize,
    load_dst: bool,
) {
    for (r, row_sums) in sums.chunks_exact(NR).take(rows).enumerate() {
        // SAFETY: the caller's contract.
        let row = unsafe { std::slice::from_raw_parts_mut(dst.add(r * dst_rs), cols) };
        if load_dst {
            row.iter_mut().zip(row_sums).for_each(|(d, &s)| *d += s);
        } else {
            row.copy_from_slice(&row_sums[..cols]);
        }
    }
}
