//! A stride-1 convolution's patches of one image, its im2col matrix `[c kh kw, h w]` (row
//! `(c, ky, kx)`, column `(y, x)`), rounded to bf16 and packed straight from the image into
//! [`super::pack_whole_rhs`]'s layout: the f32 im2col matrix is never written, which on the
//! AMX engine cost more than the products (a copy of the image per kernel tap, then its
//! packing).
//!
//! Row `(c, ky, kx)` is plane `c` shifted by `(ky - pad_y) w + kx - pad_x` with the pixels whose
//! source falls outside the plane zeroed; each 16 columns are one masked load (masked lanes
//! are not read, so the shifted address may leave the plane).

use std::arch::x86_64::*;
use std::cell::Cell;

use super::super::{NR, store_pair_words};
use super::whole_rhs_pairs;
use crate::conv::ConvShape;

/// Whether [`pack_patches`] packs `conv`'s patches: stride 1 and the image's size kept.
pub(crate) fn applies(conv: &ConvShape) -> bool {
    conv.stride == [1, 1] && conv.out_height() == conv.height && conv.out_width() == conv.width
}

/// One im2col row's source: the plane's first float, the shift of its pixels, and the
/// columns whose source row lies inside the plane.
struct PatchRow {
    plane: usize,
    shift: isize,
    kx: usize,
    rows: (usize, usize),
}

fn patch_row(conv: &ConvShape, r: usize) -> PatchRow {
    let (h, w) = (conv.height, conv.width);
    let taps = conv.kernel_h * conv.kernel_w;
    let (c, ky, kx) = (r / taps, r % taps / conv.kernel_w, r % conv.kernel_w);
    let dy = ky as isize - conv.padding[0] as isize;
    let dx = kx as isize - conv.padding[1] as isize;
    let first = (-dy).clamp(0, h as isize) as usize;
    let end = (h as isize - dy).clamp(0, h as isize) as usize;
    PatchRow {
        plane: c * h * w,
        shift: dy * w as isize + dx,
        kx,
        rows: (first * w, end.max(first) * w),
    }
}

/// Lanes `lo..hi` of the 16 starting at column `j0`.
fn range_mask(j0: usize, (lo, hi): (usize, usize)) -> u16 {
    let start = lo.saturating_sub(j0).min(16);
    let end = hi.saturating_sub(j0).min(16);
    let bits = |n: usize| ((1u32 << n) - 1) as u16;
    bits(end) & !bits(start)
}

/// Per kernel column `kx` and 16 columns, the lanes whose source column lies inside the plane.
fn column_masks(conv: &ConvShape) -> Vec<u16> {
    let (w, n) = (conv.width, conv.height * conv.width);
    let vectors = n.div_ceil(16);
    let mut masks = vec![0u16; conv.kernel_w * vectors];
    for (i, mask) in masks.iter_mut().enumerate() {
        let (kx, v) = (i / vectors, i % vectors);
        for lane in 0..16 {
            let j = 16 * v + lane;
            let x = (j % w + kx) as isize - conv.padding[1] as isize;
            if j < n && (0..w as isize).contains(&x) {
                *mask |= 1 << lane;
            }
        }
    }
    masks
}

thread_local! {
    /// The packed patches, kept between images and calls: a fresh buffer of several MiB was
    /// zeroed by the allocator for every image.
    pub(crate) static PACKED_PATCHES: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}

/// The im2col of image `x` (`[c, h, w]`) for `conv` ([`applies`]) into `words` (grown to
/// `h w / 32` panels of [`whole_rhs_pairs`] pairs of 32 words where shorter).
///
/// # Safety
/// AVX-512F, AVX-512BW and AVX512-BF16 present; `x` holds one image of `conv`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn pack_patches(x: &[f32], conv: &ConvShape, words: &mut Vec<u32>) {
    debug_assert!(applies(conv));
    let n = conv.height * conv.width;
    let k = conv.channels_in * conv.kernel_h * conv.kernel_w;
    assert!(x.len() >= conv.channels_in * n, "image too short");
    let (pairs, panels) = (k.div_ceil(2), n.div_ceil(NR));
    let panel_words = whole_rhs_pairs(k) * NR;
    if words.len() < panels * panel_words {
        words.resize(panels * panel_words, 0);
    }
    for panel in words[..panels * panel_words].chunks_exact_mut(panel_words) {
        panel[pairs * NR..].fill(0);
    }
    let masks = column_masks(conv);
    let vectors = n.div_ceil(16);
    // The 16 values of im2col row `row` at vector `v` (zero past the plane and `k`).
    let load = |row: Option<&PatchRow>, v: usize| match row {
        Some(row) => {
            let mask = masks[row.kx * vectors + v] & range_mask(16 * v, row.rows);
            let at = (row.plane + 16 * v) as isize + row.shift;
            // SAFETY: masked lanes are not read; the others lie inside the plane.
            unsafe { _mm512_maskz_loadu_ps(mask, x.as_ptr().wrapping_offset(at)) }
        }
        None => _mm512_setzero_ps(),
    };
    for q in 0..pairs {
        let lo = patch_row(conv, 2 * q);
        let hi = (2 * q + 1 < k).then(|| patch_row(conv, 2 * q + 1));
        for panel in 0..panels {
            // The panel's second 16 columns, where the image has them.
            let second = |row| match 2 * panel + 1 < vectors {
                true => load(row, 2 * panel + 1),
                false => _mm512_setzero_ps(),
            };
            let (lo_0, hi_0) = (load(Some(&lo), 2 * panel), load(hi.as_ref(), 2 * panel));
            let (lo_1, hi_1) = (second(Some(&lo)), second(hi.as_ref()));
            // SAFETY: the panel's 32 words of pair `q` lie inside `words` (resized above);
            // AVX512-BF16 (the caller's contract).
            unsafe {
                let out = words.as_mut_ptr().add(panel * panel_words + q * NR);
                store_pair_words(out, [lo_0, lo_1], [hi_0, hi_1]);
            }
        }
    }
}
