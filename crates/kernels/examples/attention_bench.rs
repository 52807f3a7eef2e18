//! Times the fused attention kernels on the UNet's attention shapes; `bench/attention.sh` runs
//! it beside PyTorch's `scaled_dot_product_attention` on the same shapes.
//! `cargo run --release -p ldmscale-kernels --example attention_bench [reps]` prints one JSON
//! line per shape: the minimum over `reps` (default 7) forward and backward times, and the
//! forward without log-sum-exps (sampling) with bf16 products on (`--precision bf16`).

mod common;

use common::{min_ms, reps_arg};
use ldmscale_kernels::bf16::{engine, set_products_in_bf16};
use ldmscale_kernels::{AttentionShape, attention_backward, attention_forward};

/// (batch, heads, queries, keys, head_dim): self-attention at 32x32 and 16x16 latents and at
/// the middle block, then cross-attention over 77 text tokens, for width-128 heads of 8.
pub const SHAPES: [(usize, usize, usize, usize, usize); 5] = [
    (16, 8, 1024, 1024, 16),
    (16, 8, 256, 256, 32),
    (16, 8, 64, 64, 32),
    (16, 8, 1024, 77, 16),
    (16, 8, 256, 77, 32),
];

fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn main() {
    let reps = reps_arg(7);
    for (batch, heads, queries, keys, head_dim) in SHAPES {
        let s = AttentionShape {
            batch,
            heads,
            queries,
            keys,
            head_dim,
        };
        let w = s.width();
        let q = pseudo_random(batch * queries * w, 1);
        let k = pseudo_random(batch * keys * w, 2);
        let v = pseudo_random(batch * keys * w, 3);
        let d_out = pseudo_random(batch * queries * w, 4);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut out = vec![0f32; q.len()];
        let mut lse = vec![0f32; batch * heads * queries];
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; q.len()],
            vec![0f32; k.len()],
            vec![0f32; v.len()],
        );
        let forward = min_ms(reps, || {
            attention_forward(&q, &k, &v, s, scale, &mut out, Some(&mut lse))
        });
        let backward = min_ms(reps, || {
            attention_backward(
                &q, &k, &v, &out, &lse, &d_out, s, scale, &mut dq, &mut dk, &mut dv,
            )
        });
        // Sampling (no log-sum-exps) with bf16 products, as `--precision bf16` runs it.
        set_products_in_bf16(true);
        let sampling_bf16 = min_ms(reps, || {
            attention_forward(&q, &k, &v, s, scale, &mut out, None)
        });
        set_products_in_bf16(false);
        println!(
            "{{\"shape\":[{batch},{heads},{queries},{keys},{head_dim}],\"forward_ms\":{forward},\"backward_ms\":{backward},\"sampling_bf16_ms\":{sampling_bf16},\"bf16_engine\":\"{:?}\"}}",
            engine()
        );
    }
}
