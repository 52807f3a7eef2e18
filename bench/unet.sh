#!/usr/bin/env bash
# UNet sampling step (batched CFG forward) and training step (fwd+bwd+AdamW): ldmscale on burn
# flex vs the same model in PyTorch/diffusers, on this machine, in one run. Prints the ratios.
# Usage: bench/unet.sh [WIDTH ...]   (default 32 64); BATCH, LATENT, REPS override the sizes;
# BF16=1 adds a row per width with bf16 products on both sides (ldmscale --precision bf16 vs
# torch bf16 autocast).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$(bash "$root/tools/setup-python.sh")"
cargo build --release -q -p ldmscale-bench --manifest-path "$root/Cargo.toml"
bin="${CARGO_TARGET_DIR:-$root/target}/release/unet-bench"
batch="${BATCH:-8}"; latent="${LATENT:-32}"; reps="${REPS:-3}"
widths=("$@"); [ ${#widths[@]} -gt 0 ] || widths=(32 64)
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
printf '%-11s %-10s %12s %12s %8s %12s %12s %8s %10s\n' width params "cfg ours ms" "cfg torch ms" speedup "train ours" "train torch" speedup "GFLOP/s"
precisions=(f32); [ "${BF16:-0}" = 1 ] && precisions+=(bf16)
for w in "${widths[@]}"; do
for precision in "${precisions[@]}"; do
  flag=(); [ "$precision" = bf16 ] && flag=(--bf16)
  ours="$("$bin" --width "$w" --batch "$batch" --latent "$latent" --reps "$reps" --save "$tmp/w$w" "${flag[@]}")"
  peer="$("$venv/bin/python" "$root/bench/unet_torch.py" --model "$tmp/w$w" --batch "$batch" --latent "$latent" --reps "$reps" "${flag[@]}")"
  python3 - "$ours" "$peer" <<'PY'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{str(o['width']) + ' ' + o['precision']:<11} {o['params']:<10} {o['cfg_step_ms']:12.1f} {p['cfg_step_ms']:12.1f} {p['cfg_step_ms']/o['cfg_step_ms']:7.2f}x "
      f"{o['train_step_ms']:12.1f} {p['train_step_ms']:12.1f} {p['train_step_ms']/o['train_step_ms']:7.2f}x {o['cfg_step_gflops_per_s']:10.1f}")
overhead = o.get("sampler_overhead_ms_per_step") or {}
if overhead:
    print("       sampler overhead per step (everything but the UNet, batch as above): " + ", ".join(
        f"{k} {v:.2f} ms ({100 * v / o['cfg_step_ms']:.2f}%)" for k, v in overhead.items()))
PY
done
done
echo "speedup = torch time / ldmscale time (>1 means ldmscale is faster); GFLOP/s of our CFG step (nproc: $(nproc))"
