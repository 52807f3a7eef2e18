#!/usr/bin/env bash
# Peak RSS of the study's data path as the data grows 10x (issue 23 item 5): one process per
# stage (ldmscale study --only STAGE) on a generated WebDataset of 64 px JPEGs, for N training
# and N/10 evaluation images, N in SIZES: peak RSS from /usr/bin/time -v, and the peak of its
# anonymous part (RssAnon in /proc/PID/status, sampled every 0.1 s), the memory the process
# holds; the rest is file pages it maps (the binary, the latent cache's shards, which the page
# cache can drop). Streaming should keep each stage flat (within ~10%) from N to 10N. Also the
# latent cache's bytes per example.
# Short runs of the later stages (first stage 20 steps); their memory, not their quality, is
# what is measured. One run per row, this machine; compare rows of one run only.
# Usage: bench/data_rss.sh   (SIZES="10000 100000", STAGES="data first-stage ..." a leading part
# of the stage list, KEEP=1 keeps the work folder)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release -q -p ldmscale-bench --bin wds-gen --manifest-path "$root/Cargo.toml"
cargo build --release -q -p ldmscale-cli --bin ldmscale --manifest-path "$root/Cargo.toml"
bin="${CARGO_TARGET_DIR:-$root/target}/release"
sizes="${SIZES:-10000 100000}"
stages="${STAGES:-data first-stage text-encoder latents evaluator}"
work="$(mktemp -d)"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT

config() { # N, M, train pattern, eval pattern
  cat <<TOML
name = "rss"
train_dataset = "wds:$3"
eval_dataset = "wds:$4"
resolution = 64
train_examples = $1
val_examples = $2
text_encoder = "tiny-random"
family = "small"
widths = [8]
heads = 2
norm_groups = 4
fid_features = "in-domain"

[first_stage]
kind = "train"
factor = 4
latent_channels = 4
width = 16
steps = 20

[recipe]
steps = 10
batch_size = 8
learning_rate = 0.001

[sweep]
samplers = ["ddim"]
steps = [2]
cfg = [1.0]
samples_per_cell = 16
TOML
}

# Runs a command (output to the log file LOG) under /usr/bin/time -v; prints its peak RssAnon
# in kB, sampled.
peak_anon() { # LOG command...
  local log="$1"; shift
  /usr/bin/time -v -o "$work/time.txt" "$@" > "$log" 2>&1 & local pid=$! peak=0 kb child
  while kill -0 "$pid" 2>/dev/null; do
    child="$(pgrep -P "$pid" | head -n 1)"
    kb="$(awk '/^RssAnon/ {print $2}' "/proc/${child:-0}/status" 2>/dev/null || true)"
    [ -n "$kb" ] && [ "$kb" -gt "$peak" ] && peak="$kb"
    sleep 0.1
  done
  wait "$pid" && echo "$peak"
}

declare -A rss anon
for n in $sizes; do
  m=$((n / 10))
  train="$("$bin/wds-gen" --dir "$work/$n/train" --images "$n" --seed 1)"
  eval="$("$bin/wds-gen" --dir "$work/$n/eval" --images "$m" --seed 2)"
  config "$n" "$m" "$train" "$eval" > "$work/$n/study.toml"
  for stage in $stages; do
    anon[$stage,$n]="$(peak_anon "$work/$n/$stage.log" "$bin/ldmscale" study \
      --config "$work/$n/study.toml" --out "$work/$n/study" --only "$stage")" \
      || { cat "$work/$n/$stage.log"; exit 1; }
    rss[$stage,$n]="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/time.txt")"
  done
  cache="$work/$n/study/latents/train"
  [ -d "$cache" ] || continue
  bytes="$(find "$cache" -name '*.safetensors' -printf '%s\n' | awk '{s += $1} END {print s}')"
  echo "N=$n: latent cache $bytes bytes of shards, $((bytes / n)) bytes per example" \
    "($(du -sb "$cache" | cut -f1) bytes with the manifest)"
done

table() { # title, array name
  local -n values="$2"
  printf '%-13s' "$1"; for n in $sizes; do printf '%12s' "N=$n"; done; echo "  last/first"
  for stage in $stages; do
    printf '%-13s' "$stage"; local first="" last=""
    for n in $sizes; do
      kb="${values[$stage,$n]}"; printf '%12.1f' "$(echo "$kb / 1024" | bc -l)"
      first="${first:-$kb}"; last="$kb"
    done
    # A stage that ends before the first 0.1 s sample reads 0: no ratio.
    if [ "$first" -gt 0 ]; then printf '%12.3f\n' "$(echo "$last / $first" | bc -l)"; else
      printf '%12s\n' "n/a"; fi
  done
}
table "peak RSS MB" rss
table "anon MB" anon
echo "$(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPU cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
