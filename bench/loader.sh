#!/usr/bin/env bash
# Streaming loader throughput (issue 23 item 5): images/s decoded (JPEG), resized, randomly
# cropped and flipped by ldmscale_data::PrefetchLoader at 256 and 512 px, over one pass of a
# generated WebDataset (sources 3/2 of the output side, 4:3, written to a temp folder first and
# not timed), on 1 worker and on every core. One run per row, this machine; other load on it
# shows directly in the numbers, so compare rows of one run only.
# Then the consumption side: images/s a training step (forward, backward, AdamW) takes at batch
# TRAIN_BATCH on this CPU, timed with unet-bench on the small family at widths TRAIN_WIDTHS on
# latents of size/8 (the SD VAE's factor); and what one GPU step of the paper's family would
# take, estimated from the step's multiply-adds (unet-bench's count: forward x 3 for forward +
# backward) at a sustained GPU_TFLOPS (default 400: an H100's 989 dense bf16 TFLOP/s at 40%
# utilisation), and the loader workers (at the one-worker rate above) that would feed it.
# Usage: bench/loader.sh   (IMAGES=512 per pass, SIZES="256 512", WORKERS="1 $(nproc)",
# BATCH=16, CAPACITY=4 batches held ahead; TRAIN_WIDTHS="64 128 320", TRAIN_BATCH=8,
# TRAIN_REPS=1, GPU_TFLOPS=400, PAPER_WIDTHS="64 128 320"; TRAIN_WIDTHS="" skips the CPU steps)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release -q -p ldmscale-bench --bin loader-bench --bin unet-bench \
  --manifest-path "$root/Cargo.toml"
bin="${CARGO_TARGET_DIR:-$root/target}/release/loader-bench"
unet="${CARGO_TARGET_DIR:-$root/target}/release/unet-bench"
images="${IMAGES:-512}"; sizes="${SIZES:-256 512}"; workers="${WORKERS:-1 $(nproc)}"
batch="${BATCH:-16}"; capacity="${CAPACITY:-4}"
train_widths="${TRAIN_WIDTHS-64 128 320}"; train_batch="${TRAIN_BATCH:-8}"
train_reps="${TRAIN_REPS:-1}"; gpu_tflops="${GPU_TFLOPS:-400}"
paper_widths="${PAPER_WIDTHS:-64 128 320}"
declare -A one_worker
printf '%-6s %-11s %-8s %8s %10s\n' size source workers images "images/s"
for size in $sizes; do
  for w in $workers; do
    row="$("$bin" --size "$size" --images "$images" --workers "$w" --batch "$batch" \
      --capacity "$capacity" | python3 -c 'import json, sys
r = json.load(sys.stdin)
src = "x".join(map(str, r["source"]))
print("%-6s %-11s %-8s %8d %10.1f" % (r["size"], src, r["workers"], r["images"], r["images_per_s"]))')"
    echo "$row"
    [ "$w" = 1 ] && one_worker[$size]="$(echo "$row" | awk '{print $5}')"
  done
done

echo
echo "training step on this CPU (small family, batch $train_batch, latent size/8):"
printf '%-6s %-6s %12s %14s %10s\n' size width params "step ms" "images/s"
for size in $sizes; do
  for w in $train_widths; do
    "$unet" --width "$w" --batch "$train_batch" --latent $((size / 8)) --reps "$train_reps" \
      --skip-cfg | python3 -c 'import json, sys
r = json.load(sys.stdin)
print("%-6s %-6s %12d %14.0f %10.2f" % (sys.argv[1], r["width"], r["params"], r["train_step_ms"],
      r["batch"] / (r["train_step_ms"] / 1e3)))' "$size"
  done
done

echo
echo "one GPU step of the paper's family at $gpu_tflops sustained TFLOP/s (estimated from its" \
  "multiply-adds), and the loader workers it needs at the one-worker rate above:"
printf '%-6s %-6s %12s %18s %12s %10s\n' size width params "GFLOP/image (train)" "images/s" workers
for size in $sizes; do
  for w in $paper_widths; do
    "$unet" --paper --width "$w" --batch 1 --latent $((size / 8)) --tokens 77 --reps 0 \
      --skip-cfg --skip-train | python3 -c 'import json, sys
r = json.load(sys.stdin)
train = 3 * r["gflops_per_sample_forward"]
rate = float(sys.argv[2]) * 1e3 / train
print("%-6s %-6s %12d %18.1f %12.0f %10.1f" % (sys.argv[1], r["width"], r["params"], train, rate,
      rate / float(sys.argv[3])))' "$size" "$gpu_tflops" "${one_worker[$size]:-nan}"
  done
done
echo "$(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPU cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
