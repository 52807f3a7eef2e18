#!/usr/bin/env bash
# Fused attention (crates/kernels) vs PyTorch's scaled_dot_product_attention, forward and
# backward, on the UNet's attention shapes, on this machine, in one run. Prints the ratios.
# Usage: bench/attention.sh [REPS]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$(bash "$root/tools/setup-python.sh")"
reps="${1:-7}"
cargo build --release -q -p ldmscale-kernels --example attention_bench --manifest-path "$root/Cargo.toml"
ours="$("${CARGO_TARGET_DIR:-$root/target}/release/examples/attention_bench" "$reps")"
shapes="$(python3 -c 'import json,sys; print(json.dumps([json.loads(l)["shape"] for l in sys.stdin]))' <<<"$ours")"
peer="$("$venv/bin/python" "$root/bench/attention_torch.py" --shapes "$shapes" --reps "$reps")"
python3 - "$ours" "$peer" <<'PY'
import json, sys
ours = [json.loads(l) for l in sys.argv[1].splitlines()]
peer = [json.loads(l) for l in sys.argv[2].splitlines()]
print(f"{'batch,heads,q,k,d':<22} {'fwd ours':>9} {'fwd torch':>9} {'speed':>6} {'bwd ours':>9} {'bwd torch':>9} {'speed':>6} {'fwd GF/s':>8} {'bf16 ours':>9} {'bf16 torch':>10} {'speed':>6}")
for o, p in zip(ours, peer):
    b, h, q, k, d = o["shape"]
    flop = 2 * 2.0 * b * h * q * k * d
    print(f"{','.join(map(str, o['shape'])):<22} {o['forward_ms']:9.2f} {p['forward_ms']:9.2f} {p['forward_ms'] / o['forward_ms']:5.2f}x "
          f"{o['backward_ms']:9.2f} {p['backward_ms']:9.2f} {p['backward_ms'] / o['backward_ms']:5.2f}x {flop / o['forward_ms'] / 1e6:8.1f} "
          f"{o['sampling_bf16_ms']:9.2f} {p['forward_bf16_ms']:10.2f} {p['forward_bf16_ms'] / o['sampling_bf16_ms']:5.2f}x")
print(f"bf16: the forward without log-sum-exps (sampling) with bf16 products ({ours[0]['bf16_engine']} engine here) vs torch on bf16 inputs")
PY
echo "speed = torch time / ours (>1 means ours is faster)"
