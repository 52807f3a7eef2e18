#!/usr/bin/env bash
# RealESRGAN degradation throughput (HR 256 px -> LR 64 px, x4plus settings, kernels drawn per
# image): ldmscale_data::degrade vs Real-ESRGAN's own pipeline (BasicSR 1.4.2's functions as
# RealESRGANModel.feed_data calls them) on CPU torch at batch 1 and batch 16, this machine, one
# run, interleaved round by round so that load from other processes hits both sides alike.
# Ours spreads images over the threads (as `ldmscale degrade` does); torch uses its intra-op
# threads. Prints each round and the median ratios.
# Usage: bench/degrade.sh   (SIZE=256 HR side, IMAGES=32 per measurement (a multiple of 16),
# ROUNDS=3, THREADS=all cores; ONE_THREAD=1 adds ours vs torch batch 16 on one thread each)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$(bash "$root/tools/setup-python.sh")"
cargo build --release -q -p ldmscale-bench --bin degrade-bench --manifest-path "$root/Cargo.toml"
bin="${CARGO_TARGET_DIR:-$root/target}/release/degrade-bench"
size="${SIZE:-256}"; images="${IMAGES:-32}"; rounds="${ROUNDS:-3}"; threads="${THREADS:-$(nproc)}"
ours() { "$bin" --size "$size" --images "$images" --threads "$1" | sed -n 's/.*"images_per_s":\([0-9.e+-]*\).*/\1/p'; }
torch() {
  "$venv/bin/python" "$root/bench/degrade_torch.py" --size "$size" --images "$images" --batch "$1" --threads "$2" \
    | tail -n 1 | sed -n 's/.*"images_per_s": \([0-9.e+-]*\).*/\1/p'
}
results="$(mktemp)"; trap 'rm -f "$results"' EXIT
printf '%-6s %-22s %12s %12s %9s\n' round comparison "ours img/s" "torch img/s" ratio
for round in $(seq "$rounds"); do
  a="$(ours "$threads")"; b1="$(torch 1 "$threads")"
  b="$(ours "$threads")"; b16="$(torch 16 "$threads")"
  echo "$round b1 $a $b1" >> "$results"; echo "$round b16 $b $b16" >> "$results"
  if [ "${ONE_THREAD:-0}" = 1 ]; then
    c="$(ours 1)"; t1="$(torch 16 1)"; echo "$round 1t $c $t1" >> "$results"
  fi
done
python3 - "$results" "$threads" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
names = {"b1": f"{sys.argv[2]} threads, torch b1", "b16": f"{sys.argv[2]} threads, torch b16", "1t": "1 thread, torch b16"}
ratios = {}
for rnd, kind, ours, peer in rows:
    ours, peer = float(ours), float(peer)
    ratios.setdefault(kind, []).append(ours / peer)
    print(f"{rnd:<6} {names[kind]:<22} {ours:12.2f} {peer:12.2f} {ours / peer:8.2f}x")
for kind, values in ratios.items():
    print(f"median {names[kind]:<22} {'':12} {'':12} {statistics.median(values):8.2f}x  (min {min(values):.2f}x, max {max(values):.2f}x)")
PY
echo "ratio = ldmscale images/s / Real-ESRGAN (BasicSR, CPU torch) images/s (>1: ldmscale is faster); HR ${size} px, $(nproc) CPU cores"
