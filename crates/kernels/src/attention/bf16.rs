//! Attention's forward pass with bf16 products on AMX tiles, f32 sums and an f32 softmax: what
//! PyTorch's bf16 autocast runs in `scaled_dot_product_attention`, here for sampling under
//! `--precision bf16`. Training keeps the f32 kernels: its backward pass recomputes the
//! probabilities in f32 from the forward's log-sum-exps, which must come from the same scores.
//!
//! A task takes a head of one batch entry and a run of query rows, as the f32 path does, and
//! packs the head's keys (scaled, in pairs of channels) and values (in pairs of keys) once into
//! B tiles of 16 x 16 pair words. Then, 16 query rows at a time:
//! - the query rows are rounded to bf16 rows (an A tile per 32 channels),
//! - the scores of each 64 keys are four C tiles (four independent sums keep the tile unit
//!   busy), stored into an f32 score block,
//! - each row's `exp(s - max)` is rounded to bf16 in one pass (a shorter polynomial than the
//!   f32 path's `exp`: its error stays far below bf16's rounding),
//! - their product with each 16 channels of the values is four partial C tiles over the keys,
//!   summed and scaled by the rows' reciprocal sums into the output.
//!
//! Channels are zero-padded to whole tile steps (32), keys to whole fours of tiles (64). Every
//! output row is computed by one task in the same order whichever thread runs it, so results
//! do not depend on threads. The tile arithmetic is [`Tiles::dot16_four`] and
//! [`Tiles::dot16_split`]: AMX where it runs, an emulation in tests elsewhere.

use rayon::prelude::*;

use super::{AttentionShape, FORWARD_TASK_ROWS, SharedMut, row_maxima_mv, score_stride};
use crate::bf16::amx::{B_TILE_BYTES, Tiles};
use crate::bf16::{pair_word, round_to_bf16};

/// Rows of an A or C tile; also the columns of a B or C tile.
const TILE: usize = 16;
/// bf16 values along `k` per tile step (16 pair words: a 64-byte tile row).
const STEP: usize = 32;
/// Words of a B tile.
const B_TILE_WORDS: usize = B_TILE_BYTES / 4;
/// Keys per [`Tiles::dot16_four`]: four groups of 16.
const CHUNK: usize = 4 * TILE;

#[derive(Default)]
struct Scratch {
    /// The head's keys: per 16 keys, per channel step, a B tile (`[channel pair][key]`).
    key_tiles: Vec<u32>,
    /// The head's values: per 16 channels, per key step, a B tile (`[key pair][channel]`).
    value_tiles: Vec<u32>,
    /// 16 query rows in bf16, `padded_d` apart.
    query_rows: Vec<u16>,
    /// 16 probability rows in bf16, `padded_keys` apart.
    probability_rows: Vec<u16>,
    /// The block's scores: 16 rows of [`scores_stride`].
    scores: Vec<f32>,
    row_max: Vec<f32>,
    inv_sum: Vec<f32>,
    out_tile: Vec<f32>,
}

/// `out = softmax(scale * q k^T) v` as [`super::attention_forward`] without log-sum-exps,
/// with bf16 products on tiles `T`.
///
/// # Safety
/// `T`'s instructions exist on this CPU (and AVX512-BF16, which rounds the rows); the buffers
/// have `shape`'s sizes (checked by the caller).
pub(super) unsafe fn forward<T: Tiles>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    scale: f32,
    out: &mut [f32],
) {
    let out_ptr = SharedMut(out.as_mut_ptr());
    let chunks = shape.queries.div_ceil(FORWARD_TASK_ROWS);
    (0..shape.batch * shape.heads * chunks)
        .into_par_iter()
        .for_each_init(Scratch::default, |s, task| {
            let (chunk, head) = (task % chunks, (task / chunks) % shape.heads);
            let b = task / (chunks * shape.heads);
            let out_base = out_ptr; // the whole wrapper, which is Sync
            let (keys, d, w) = (shape.keys, shape.head_dim, shape.width());
            let kv = b * keys * w + head * d;
            pack_pairs_of_channels(&k[kv..], shape, scale, s);
            pack_pairs_of_keys(&v[kv..], shape, s);
            let end = ((chunk + 1) * FORWARD_TASK_ROWS).min(shape.queries);
            // SAFETY: the caller's contract; this task alone writes these rows of this head.
            unsafe {
                T::begin();
                for row0 in (chunk * FORWARD_TASK_ROWS..end).step_by(TILE) {
                    let rows = TILE.min(end - row0);
                    let q_rows = &q[(b * shape.queries + row0) * w + head * d..];
                    let out_rows = out_base.0.add((b * shape.queries + row0) * w + head * d);
                    block::<T>(q_rows, rows, shape, out_rows, s);
                }
                T::end();
            }
        });
}

/// Channels of a head padded to whole tile steps.
fn padded_d(shape: &AttentionShape) -> usize {
    shape.head_dim.next_multiple_of(STEP)
}

/// Keys padded to whole chunks.
fn padded_keys(shape: &AttentionShape) -> usize {
    shape.keys.next_multiple_of(CHUNK)
}

/// Floats between the rows of a block's scores: every padded key, and an odd number of
/// cache lines (see [`score_stride`]).
fn scores_stride(shape: &AttentionShape) -> usize {
    score_stride(padded_keys(shape))
}

/// `groups` x `steps` B tiles into `tiles`, tile (`g`, `t`) at `g * steps + t`, its word
/// `(p, c)` = the pair `word(g, t, p, c)` rounded to bf16 (`None` for zero).
fn pack_b_tiles(
    tiles: &mut Vec<u32>,
    (groups, steps): (usize, usize),
    word: impl Fn(usize, usize, usize, usize) -> (Option<f32>, Option<f32>),
) {
    tiles.clear();
    tiles.resize(groups * steps * B_TILE_WORDS, 0);
    for (tile, words) in tiles.chunks_exact_mut(B_TILE_WORDS).enumerate() {
        let (group, step) = (tile / steps, tile % steps);
        for (i, w) in words.iter_mut().enumerate() {
            let (lo, hi) = word(group, step, i / TILE, i % TILE);
            *w = pair_word(lo.unwrap_or(0.0), hi.unwrap_or(0.0));
        }
    }
}

/// The head's keys (rows `w` apart from `k[0]`) times `scale` as the B tiles of the scores:
/// tile (key group `g`, channel step `t`) holds word `(p, c)` = channels `2p, 2p + 1` of the
/// step of key `16 g + c`.
fn pack_pairs_of_channels(k: &[f32], shape: AttentionShape, scale: f32, s: &mut Scratch) {
    let (keys, d, w) = (shape.keys, shape.head_dim, shape.width());
    let at = |key: usize, ch: usize| (key < keys && ch < d).then(|| scale * k[key * w + ch]);
    let grid = (padded_keys(&shape) / TILE, padded_d(&shape) / STEP);
    pack_b_tiles(&mut s.key_tiles, grid, |group, step, p, c| {
        let (key, ch) = (group * TILE + c, step * STEP + 2 * p);
        (at(key, ch), at(key, ch + 1))
    });
}

/// The head's values (rows `w` apart from `v[0]`) as the B tiles of the output: tile
/// (channel group `g`, key step `t`) holds word `(p, c)` = keys `2p, 2p + 1` of the step at
/// channel `16 g + c`.
fn pack_pairs_of_keys(v: &[f32], shape: AttentionShape, s: &mut Scratch) {
    let (keys, d, w) = (shape.keys, shape.head_dim, shape.width());
    let at = |key: usize, ch: usize| (key < keys && ch < d).then(|| v[key * w + ch]);
    let grid = (d.div_ceil(TILE), padded_keys(&shape) / STEP);
    pack_b_tiles(&mut s.value_tiles, grid, |group, step, p, c| {
        let (key, ch) = (step * STEP + 2 * p, group * TILE + c);
        (at(key, ch), at(key + 1, ch))
    });
}

/// Query rows `q_rows[r * w..][..d]` for `r < rows` (at most 16) into output rows at `out`.
///
/// # Safety
/// As [`forward`]; `out` covers `rows` rows of `d` floats, `w` apart, written by no one else.
unsafe fn block<T: Tiles>(
    q_rows: &[f32],
    rows: usize,
    shape: AttentionShape,
    out: *mut f32,
    s: &mut Scratch,
) {
    let (d, w) = (shape.head_dim, shape.width());
    let (pd, pk) = (padded_d(&shape), padded_keys(&shape));
    s.query_rows.resize(TILE * pd, 0);
    s.probability_rows.resize(TILE * pk, 0);
    s.scores.resize(TILE * scores_stride(&shape), 0.0);
    s.out_tile.resize(4 * TILE * TILE, 0.0);
    for r in 0..TILE {
        let src = (r < rows).then(|| &q_rows[r * w..r * w + d]);
        // SAFETY: AVX512-BF16 (the caller's contract); the row holds `pd` values.
        unsafe { round_row(src.unwrap_or(&[]), &mut s.query_rows[r * pd..][..pd]) };
    }
    // SAFETY: the caller's contract.
    unsafe { probabilities::<T>(rows, shape, s) };
    let k_steps = pk / STEP;
    for group in 0..d.div_ceil(TILE) {
        // SAFETY: the probability rows hold `k_steps` steps, the value tiles `k_steps` per
        // channel group; the partial sums are four 16 x 16 tiles.
        unsafe {
            T::dot16_split(
                k_steps,
                s.probability_rows.as_ptr().cast(),
                pk * 2,
                STEP * 2,
                s.value_tiles.as_ptr().add(group * k_steps * B_TILE_WORDS),
                s.out_tile.as_mut_ptr(),
            )
        };
        let cols = TILE.min(d - group * TILE);
        let [p0, p1, p2, p3]: [&[f32]; 4] = std::array::from_fn(|j| &s.out_tile[j * 256..]);
        for (r, &inv) in s.inv_sum.iter().enumerate() {
            // SAFETY: row `r < rows` of the output, columns inside the head (the caller's).
            let dst =
                unsafe { std::slice::from_raw_parts_mut(out.add(r * w + group * TILE), cols) };
            for (c, o) in dst.iter_mut().enumerate() {
                let i = r * TILE + c;
                *o = (((p0[i] + p1[i]) + p2[i]) + p3[i]) * inv;
            }
        }
    }
}

/// The block's unnormalised probabilities `exp(s - max)` as bf16 rows (zero past the keys and
/// in rows `rows..16`), and the rows' reciprocal sums: the scores four tiles at a time into
/// the block, then per row its maximum and one pass of exponentials rounded to bf16.
///
/// # Safety
/// As [`forward`]; the query rows and key tiles are packed.
unsafe fn probabilities<T: Tiles>(rows: usize, shape: AttentionShape, s: &mut Scratch) {
    let (keys, pk, ld) = (shape.keys, padded_keys(&shape), scores_stride(&shape));
    let (pd, d_steps) = (padded_d(&shape), padded_d(&shape) / STEP);
    for chunk in 0..pk / CHUNK {
        // SAFETY: the A rows hold `d_steps` steps, the B tiles `d_steps` per key group (whole
        // chunks of four), the scores 16 rows of `ld >= pk` floats.
        unsafe {
            T::dot16_four(
                d_steps,
                s.query_rows.as_ptr().cast(),
                pd * 2,
                STEP * 2,
                s.key_tiles.as_ptr().add(4 * chunk * d_steps * B_TILE_WORDS),
                s.scores.as_mut_ptr().add(chunk * CHUNK),
                ld * 4,
            )
        };
    }
    s.row_max.resize(rows, 0.0);
    row_maxima_mv(&s.scores[..rows * ld], ld, keys, &mut s.row_max);
    s.inv_sum.clear();
    s.probability_rows[rows * pk..].fill(0);
    for (r, &max) in s.row_max.iter().enumerate() {
        let row = &s.scores[r * ld..][..keys];
        let dst = &mut s.probability_rows[r * pk..][..pk];
        s.inv_sum.push(1.0 / rounded_exp(row, max, dst));
    }
}

/// `dst` = `exp(row - max)` rounded to bf16, zero past `row`; returns the sum of the f32
/// exponentials (as the f32 path's softmax normalises).
fn rounded_exp(row: &[f32], max: f32, dst: &mut [u16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::bf16::available() {
        // SAFETY: AVX512-BF16 (and so AVX-512F and BW) detected.
        return unsafe { rounded_exp_row(row, max, dst) };
    }
    let mut sum = 0.0;
    for (i, o) in dst.iter_mut().enumerate() {
        let p = row.get(i).map_or(0.0, |&x| (x - max).exp());
        sum += p;
        *o = round_to_bf16(p);
    }
    sum
}

/// `dst` = `exp(row - max)` rounded to bf16 (zero past `row`) in one pass; returns the sum of
/// the f32 exponentials (as the f32 path's softmax normalises).
///
/// # Safety
/// AVX-512F, AVX-512BW and AVX512-BF16 present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn rounded_exp_row(row: &[f32], max: f32, dst: &mut [u16]) -> f32 {
    use std::arch::x86_64::*;
    // `e^x` for x <= 0 to about 4e-5 relative, well inside bf16's rounding (2e-3): a degree-4
    // polynomial on the reduced argument, a third fewer instructions than the f32 path's.
    let exp_ps = |x: __m512| {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-100.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(std::f32::consts::LN_2), x);
        let mut p = _mm512_set1_ps(1.0 / 24.0);
        for c in [1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    };
    debug_assert!(dst.len().is_multiple_of(32) && row.len() <= dst.len());
    let mask = crate::bf16::column_mask;
    // SAFETY: masked loads stay inside `row`; whole 32-value stores inside `dst`.
    unsafe {
        let (shift, mut sum) = (_mm512_set1_ps(max), _mm512_setzero_ps());
        for at in (0..dst.len()).step_by(32) {
            let left = row.len().saturating_sub(at);
            let (m_lo, m_hi) = (mask(left), mask(left.saturating_sub(16)));
            let lo = _mm512_maskz_loadu_ps(m_lo, row.as_ptr().wrapping_add(at));
            let hi = _mm512_maskz_loadu_ps(m_hi, row.as_ptr().wrapping_add(at + 16));
            let p_lo = _mm512_maskz_mov_ps(m_lo, exp_ps(_mm512_sub_ps(lo, shift)));
            let p_hi = _mm512_maskz_mov_ps(m_hi, exp_ps(_mm512_sub_ps(hi, shift)));
            sum = _mm512_add_ps(sum, _mm512_add_ps(p_lo, p_hi));
            let words: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(p_hi, p_lo));
            _mm512_storeu_si512(dst.as_mut_ptr().add(at).cast(), words);
        }
        _mm512_reduce_add_ps(sum)
    }
}

/// `dst` = `src` rounded to bf16 (nearest, ties to even), zero past `src`.
///
/// # Safety
/// AVX512-BF16 present where the vector path is compiled.
unsafe fn round_row(src: &[f32], dst: &mut [u16]) {
    debug_assert!(src.len() <= dst.len());
    #[cfg(target_arch = "x86_64")]
    if crate::bf16::available() {
        // SAFETY: the caller's contract.
        unsafe { round_row_avx512(src, dst) };
        return;
    }
    for (i, o) in dst.iter_mut().enumerate() {
        *o = src.get(i).map_or(0, |&x| round_to_bf16(x));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn round_row_avx512(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let mask = crate::bf16::column_mask;
    for at in (0..dst.len()).step_by(32) {
        let left = src.len().saturating_sub(at);
        // SAFETY: masked loads stay inside `src`, the masked store inside `dst`.
        unsafe {
            let lo = _mm512_maskz_loadu_ps(mask(left), src.as_ptr().wrapping_add(at));
            let hi = _mm512_maskz_loadu_ps(
                mask(left.saturating_sub(16)),
                src.as_ptr().wrapping_add(at + 16),
            );
            let words: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            let n = (dst.len() - at).min(32);
            let store: __mmask32 = if n >= 32 { !0 } else { (1u32 << n) - 1 };
            _mm512_mask_storeu_epi16(dst.as_mut_ptr().add(at).cast(), store, words);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bf16::amx::{self, Amx, Emulated};
    use crate::bf16::bf16_to_f32;
    use crate::test_values::{max_rel_floor, on_threads, pseudo_random};

    /// Queries, keys and values of `s`.
    fn operands(s: AttentionShape, seed: u64) -> [Vec<f32>; 3] {
        let w = s.width();
        [
            pseudo_random(s.batch * s.queries * w, seed, 2.0, 0.0),
            pseudo_random(s.batch * s.keys * w, seed + 1, 2.0, 0.0),
            pseudo_random(s.batch * s.keys * w, seed + 2, 2.0, 0.0),
        ]
    }

    fn run<T: Tiles>(s: AttentionShape, [q, k, v]: &[Vec<f32>; 3]) -> Vec<f32> {
        let mut out = vec![f32::NAN; q.len()];
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        // SAFETY: `T` runs here (the callers check AMX); sizes from `s`.
        unsafe { forward::<T>(q, k, v, s, scale, &mut out) };
        out
    }

    /// f64 attention of `q`, `scale k` and `v` rounded to bf16 (the products' operands).
    fn reference(s: AttentionShape, [q, k, v]: &[Vec<f32>; 3]) -> Vec<f64> {
        let (w, d) = (s.width(), s.head_dim);
        let scale = 1.0 / (d as f32).sqrt();
        let r = |x: f32| bf16_to_f32(round_to_bf16(x)) as f64;
        let mut out = vec![0f64; q.len()];
        for (b, h) in (0..s.batch).flat_map(|b| (0..s.heads).map(move |h| (b, h))) {
            let at = |rows: usize, i: usize, c: usize| (b * rows + i) * w + h * d + c;
            for i in 0..s.queries {
                let scores: Vec<f64> = (0..s.keys)
                    .map(|j| {
                        (0..d)
                            .map(|c| r(q[at(s.queries, i, c)]) * r(scale * k[at(s.keys, j, c)]))
                            .sum()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..d {
                    out[at(s.queries, i, c)] = (0..s.keys)
                        .map(|j| e[j] * r(v[at(s.keys, j, c)]))
                        .sum::<f64>()
                        / sum;
                }
            }
        }
        out
    }

    fn shape(batch: usize, heads: usize, queries: usize, keys: usize, d: usize) -> AttentionShape {
        AttentionShape {
            batch,
            heads,
            queries,
            keys,
            head_dim: d,
        }
    }

    /// Query rows with a partial last tile, keys with a partial last tile and step (and
    /// enough for whole fours of steps), a single key, channels below, at and past one tile
    /// step (SD's 40 and 80, the UNet's 16 and 32).
    fn shapes() -> [AttentionShape; 7] {
        [
            shape(2, 2, 37, 53, 16),
            shape(1, 2, 40, 300, 32),
            shape(1, 3, 16, 32, 32),
            shape(1, 2, 21, 77, 40),
            shape(2, 1, 5, 1, 8),
            shape(1, 1, 33, 70, 80),
            shape(1, 1, 1030, 20, 16),
        ]
    }

    /// The packing, blocking and softmax, on emulated tiles (any CPU): close to attention of
    /// the bf16-rounded operands (the probabilities are rounded too), and not the f32 result.
    #[test]
    fn bf16_attention_matches_the_rounded_reference_emulated() {
        for s in shapes() {
            let operands = operands(s, 11);
            let got = run::<Emulated>(s, &operands);
            let err = max_rel_floor(&got, &reference(s, &operands), 1e-12);
            assert!(err < 4e-3, "{s:?}: max error {err} of the largest value");
            let mut exact = vec![0f32; got.len()];
            let [q, k, v] = &operands;
            let scale = 1.0 / (s.head_dim as f32).sqrt();
            super::super::attention_forward(q, k, v, s, scale, &mut exact, None);
            let exact: Vec<f64> = exact.iter().map(|&x| x as f64).collect();
            if s.keys > 1 {
                assert!(max_rel_floor(&got, &exact, 1e-12) > 1e-5, "{s:?} is bf16");
            }
        }
    }

    /// The AMX instructions agree with the emulation up to the order of their f32 sums (the
    /// hardware's is its own), and with the rounded reference; skipped (and says so) without
    /// AMX.
    #[test]
    fn bf16_attention_on_amx_matches_the_emulation() {
        if !amx::available() {
            eprintln!("skipped: {}", amx::unavailable_reason());
            return;
        }
        for s in shapes() {
            let operands = operands(s, 21);
            let tiles = run::<Amx>(s, &operands);
            let emulated: Vec<f64> = run::<Emulated>(s, &operands)
                .iter()
                .map(|&x| x as f64)
                .collect();
            let err = max_rel_floor(&tiles, &emulated, 1e-12);
            eprintln!("{s:?}: AMX vs emulation {err:e}");
            assert!(err < 1e-5, "{s:?}: AMX vs emulation {err}");
            let err = max_rel_floor(&tiles, &reference(s, &operands), 1e-12);
            assert!(err < 4e-3, "{s:?}: max error {err} of the largest value");
        }
    }

    /// The same bits on 1 and 3 threads (on AMX where it runs, else emulated).
    #[test]
    fn bf16_attention_does_not_depend_on_threads() {
        let s = shape(3, 2, 1100, 45, 32);
        let operands = operands(s, 31);
        let bits = |threads| {
            on_threads(threads, || {
                let out = if amx::available() {
                    run::<Amx>(s, &operands)
                } else {
                    run::<Emulated>(s, &operands)
                };
                out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            })
        };
        assert!(bits(1) == bits(3));
    }
}
