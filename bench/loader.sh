#!/usr/bin/env bash
# Streaming loader throughput (issue 23 item 5): images/s decoded (JPEG), resized, randomly
# cropped and flipped by ldmscale_data::PrefetchLoader at 256 and 512 px, over one pass of a
# generated WebDataset (sources 3/2 of the output side, 4:3, written to a temp folder first and
# not timed), on 1 worker and on every core. One run per row, this machine; other load on it
# shows directly in the numbers, so compare rows of one run only.
# Usage: bench/loader.sh   (IMAGES=512 per pass, SIZES="256 512", WORKERS="1 $(nproc)",
# BATCH=16, CAPACITY=4 batches held ahead)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release -q -p ldmscale-bench --bin loader-bench --manifest-path "$root/Cargo.toml"
bin="${CARGO_TARGET_DIR:-$root/target}/release/loader-bench"
images="${IMAGES:-512}"; sizes="${SIZES:-256 512}"; workers="${WORKERS:-1 $(nproc)}"
batch="${BATCH:-16}"; capacity="${CAPACITY:-4}"
printf '%-6s %-11s %-8s %8s %10s\n' size source workers images "images/s"
for size in $sizes; do
  for w in $workers; do
    "$bin" --size "$size" --images "$images" --workers "$w" --batch "$batch" --capacity "$capacity" \
      | python3 -c 'import json, sys
r = json.load(sys.stdin)
src = "x".join(map(str, r["source"]))
print("%-6s %-11s %-8s %8d %10.1f" % (r["size"], src, r["workers"], r["images"], r["images_per_s"]))'
  done
done
echo "$(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPU cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
