#!/usr/bin/env bash
# UNet sampling step (batched CFG forward) and training step (fwd+bwd+AdamW): ldmscale on burn
# flex vs the same model in PyTorch/diffusers, on this machine, in one run. Prints the ratios.
# Usage: bench/unet.sh [WIDTH ...]   (default 32 64); BATCH, LATENT, REPS override the sizes;
# BF16=1 adds a row per width with bf16 products on both sides (ldmscale --precision bf16 vs
# torch bf16 autocast). ROUNDS=N (default 1) runs each side N times, alternating which goes
# first (ours, torch; torch, ours; ...) so that a machine whose speed drifts favours neither:
# the times printed are the medians over rounds, and with two rounds or more the speedups get
# the range of the rounds' own ratios in brackets.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$(bash "$root/tools/setup-python.sh")"
cargo build --release -q -p ldmscale-bench --manifest-path "$root/Cargo.toml"
bin="${CARGO_TARGET_DIR:-$root/target}/release/unet-bench"
batch="${BATCH:-8}"; latent="${LATENT:-32}"; reps="${REPS:-3}"; rounds="${ROUNDS:-1}"
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS=$rounds: expected a positive integer" >&2; exit 2; }
widths=("$@"); [ ${#widths[@]} -gt 0 ] || widths=(32 64)
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
printf '%-11s %-10s %12s %12s %8s %12s %12s %8s %10s\n' width params "cfg ours ms" "cfg torch ms" speedup "train ours" "train torch" speedup "GFLOP/s"
precisions=(f32); [ "${BF16:-0}" = 1 ] && precisions+=(bf16)
for w in "${widths[@]}"; do
for precision in "${precisions[@]}"; do
  flag=(); [ "$precision" = bf16 ] && flag=(--bf16)
  ours() { "$bin" --width "$w" --batch "$batch" --latent "$latent" --reps "$reps" "${flag[@]}" "$@"; }
  peer() { "$venv/bin/python" "$root/bench/unet_torch.py" --model "$tmp/w$w" --batch "$batch" --latent "$latent" --reps "$reps" "${flag[@]}"; }
  runs="$tmp/runs"; : > "$runs"
  for round in $(seq "$rounds"); do
    # Ours first in odd rounds; the first writes the model the peer loads in every round.
    if (( round == 1 )); then o="$(ours --save "$tmp/w$w")"; p="$(peer)"
    elif (( round % 2 )); then o="$(ours)"; p="$(peer)"; else p="$(peer)"; o="$(ours)"; fi
    printf 'ours %s\npeer %s\n' "$o" "$p" >> "$runs"
  done
  python3 - "$runs" <<'PY'
import json, statistics, sys
runs = {"ours": [], "peer": []}
for line in open(sys.argv[1]):
    side, text = line.split(" ", 1)
    runs[side].append(json.loads(text))
o, p = runs["ours"], runs["peer"]
def median(side, key):
    return statistics.median(r[key] for r in side)
def speed(key):
    # torch time / ours, of the medians; with several rounds, the range of each round's ratio.
    s = f"{median(p, key) / median(o, key):7.2f}x"
    if len(o) > 1:
        ratios = [pr[key] / orr[key] for orr, pr in zip(o, p)]
        s += f" [{min(ratios):.2f}, {max(ratios):.2f}]"
    return s
first = o[0]
print(f"{str(first['width']) + ' ' + first['precision']:<11} {first['params']:<10} "
      f"{median(o, 'cfg_step_ms'):12.1f} {median(p, 'cfg_step_ms'):12.1f} {speed('cfg_step_ms')} "
      f"{median(o, 'train_step_ms'):12.1f} {median(p, 'train_step_ms'):12.1f} {speed('train_step_ms')} "
      f"{median(o, 'cfg_step_gflops_per_s'):10.1f}")
overhead = first.get("sampler_overhead_ms_per_step") or {}
if overhead:
    cfg = median(o, "cfg_step_ms")
    print("       sampler overhead per step (everything but the UNet, batch as above): " + ", ".join(
        f"{k} {v:.2f} ms ({100 * v / cfg:.2f}%)" for k, v in overhead.items()))
PY
done
done
echo "speedup = torch time / ldmscale time (>1 means ldmscale is faster), of the medians over $rounds round(s); GFLOP/s of our CFG step (nproc: $(nproc))"
