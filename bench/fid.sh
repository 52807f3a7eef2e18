#!/usr/bin/env bash
# FID feature extraction throughput: `ldmscale fid` (burn flex) vs pytorch-fid 0.3.0 / clean-fid
# 0.1.35 (PyTorch) on the same generated images, same weights, this machine, one run.
# Both sides decode, resize, run the Inception to pool3 and take mean/covariance.
# Usage: bench/fid.sh [IMAGES]   (default 100; SIZE=256 image side, BATCH=50, MODES="pytorch-fid clean")
# Needs the Inception asset (tools/fetch-assets.sh inception).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$(bash "$root/tools/setup-python.sh")"
cargo build --release -q -p ldmscale-cli --manifest-path "$root/Cargo.toml"
bin="${CARGO_TARGET_DIR:-$root/target}/release/ldmscale"
count="${1:-100}"; size="${SIZE:-256}"; batch="${BATCH:-50}"; modes="${MODES:-pytorch-fid clean}"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
"$venv/bin/python" - "$tmp/images" "$count" "$size" <<'PY'
import sys, numpy as np
from pathlib import Path
from PIL import Image
out, n, s = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
out.mkdir(parents=True)
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:s, 0:s] / s
for i in range(n):
    f = rng.uniform(2, 12, 3)
    img = np.stack([128 + 100 * np.sin(f[c] * xx + c + i) * np.cos(f[(c + 1) % 3] * yy) for c in range(3)], -1)
    img += rng.normal(0, 8, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out / f"{i:05d}.png")
PY
printf '%-12s %8s %14s %14s %9s\n' mode images "ours img/s" "torch img/s" speedup
for mode in $modes; do
  ours="$("$bin" fid "$tmp/images" --mode "$mode" --batch "$batch" --save-stats "$tmp/ours.npz" 2>&1 >/dev/null \
    | sed -n 's/.* images in .* s (\([0-9.]*\) images\/s)$/\1/p')"
  peer="$("$venv/bin/python" "$root/bench/fid_torch.py" --dir "$tmp/images" --mode "$mode" --batch "$batch" 2>/dev/null | tail -n 1)"
  python3 - "$mode" "$count" "$ours" "$peer" <<'PY'
import json, sys
mode, n, ours, peer = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
print(f"{mode:<12} {n:>8} {ours:14.2f} {peer['images_per_s']:14.2f} {ours / peer['images_per_s']:8.2f}x")
PY
done
echo "speedup = ldmscale images/s / PyTorch images/s (>1 means ldmscale is faster); $(nproc) CPU cores"
