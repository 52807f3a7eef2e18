#!/usr/bin/env bash
# The device check of burn's CUDA backend: parity of one UNet forward on the GPU against the CPU,
# data parallelism on the GPU, and the CFG sampling step and training step of the paper's widths
# in ldmscale and in PyTorch/diffusers on the same GPU in the same run, as ratios.
#
#   bench/gpu.sh prepare   here, no GPU needed: builds gpu-check with `--features cuda` and lays
#                          it, with the diffusers wheel the GPU machine lacks, in target/gpu-payload
#   bench/gpu.sh run       on the GPU machine (no cargo, no network there): the check itself
#   bench/gpu.sh smoke     here: the `run` half on the CPU at tiny sizes (checks the script)
#
# The device call (the lent machine's `run` tool), after `bench/gpu.sh prepare`:
#   command:   bash bench/gpu.sh run
#   carry:     ["target/gpu-payload"]
#   timeout_s: 480
# It prints a table last and writes gpu.log, results.jsonl and summary.md under $OUT. Widths
# 64 and 128 come first (their first steps are mostly kernel compilation and autotuning); 320
# (SD 2.1's UNet) runs only if at least 150 s of BUDGET_S (default 300 s) are left then. Each
# finished width is in results.jsonl at once, so a run stopped at its limit still reports.
#
# Why a binary travels: the machine has no Rust toolchain, and burn 0.22's CUDA backend links
# LLVM (cubecl compiles kernels to PTX with it), whose build script would download a prebuilt
# LLVM from outside the package registries. `prepare` installs LLVM 23.1.1 from PyPI instead
# (mlc-llvm-static: static libraries and llvm-config; the bundle wanted is 23.1.0) where that
# build script looks for it. The first build takes about 45 minutes on 2 cores; the payload is
# about 43 MB (xz), which with the working tree (~11 MB) fits the 64 MiB a call carries. CUDA itself is loaded at run time (cudarc's dynamic loading of libcuda and
# libnvrtc), so the binary built here runs there; CUDARC_CUDA_VERSION picks the CUDA API level
# (13.0, the machine's toolkit and driver).
#
# Environment: WIDTHS ("64 128 320"), BATCH (8), LATENT (32), TOKENS (77), CONTEXT (1024),
# NORM_GROUPS (32), WARMUP (2), REPS (5), DEVICE (cuda:0), BUDGET_S (300), PYTHON (python3),
# CUDA_TARGET_DIR (target/cuda), CUDARC_CUDA_VERSION (13000).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
payload="$root/target/gpu-payload"
mode="${1:-}"

llvm_version="23.1.1.post0"   # mlc-llvm-static: LLVM 23.1, as tracel-llvm-bundler 23.1.0-4 wants
diffusers_version="0.42.1"     # tools/requirements.txt
importlib_metadata_version="10.2.0"

prepare() {
  local py tracel tmp target
  py="$(bash "$root/tools/setup-python.sh")/bin/python"
  tracel="${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-23.1.0-4"
  if [ ! -f "$tracel/.tracel-llvm-installed" ]; then
    tmp="$(mktemp -d)"
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux_2_28_x86_64 -d "$tmp" \
      "mlc-llvm-static==$llvm_version" "mlc-llvm-static-extra-targets==$llvm_version"
    (cd "$tmp" && for w in *.whl; do unzip -q -o "$w"; done)
    mkdir -p "$tracel"
    cp -a "$tmp/mlc_llvm_static/static/." "$tracel/"
    chmod +x "$tracel/bin/llvm-config"
    "$tracel/bin/llvm-config" --link-static --version >/dev/null
    touch "$tracel/.tracel-llvm-installed"
    rm -rf "$tmp"
  fi
  target="${CUDA_TARGET_DIR:-$root/target/cuda}"
  CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}" CARGO_TARGET_DIR="$target" \
    nice -n 19 cargo build --release -p ldmscale-bench --features cuda --bin gpu-check \
    --manifest-path "$root/Cargo.toml"
  rm -rf "$payload"; mkdir -p "$payload"
  strip -o "$payload/gpu-check" "$target/release/gpu-check"
  xz -T1 -6 "$payload/gpu-check"
  "$py" -m pip download -q --no-deps --only-binary=:all: -d "$payload" \
    "diffusers==$diffusers_version" "importlib_metadata==$importlib_metadata_version"
  du -sh "$payload"; ls -l "$payload"
  echo "ready: run 'bash bench/gpu.sh run' on the device with carry [\"target/gpu-payload\"]"
}

# The check: one JSON line per implementation and width in results.jsonl, a table at the end.
check() {
  local bin="$1" py="$2" device="$3" torch_device="$4" out="$5"
  local start=$SECONDS budget="${BUDGET_S:-300}" models results="$out/results.jsonl"
  models="$(mktemp -d)"; : > "$results"
  local batch="${BATCH:-8}" latent="${LATENT:-32}" tokens="${TOKENS:-77}"
  local common=(--batch "$batch" --latent "$latent" --tokens "$tokens"
                --context-dim "${CONTEXT:-1024}" --norm-groups "${NORM_GROUPS:-32}"
                --warmup "${WARMUP:-2}" --reps "${REPS:-5}")
  local peer=(--batch "$batch" --latent "$latent" --tokens "$tokens" --device "$torch_device"
              --warmup "${WARMUP:-2}" --reps "${REPS:-5}")
  local first=1
  for w in ${WIDTHS:-64 128 320}; do
    local left=$((budget - (SECONDS - start)))
    # 320 is SD 2.1's UNet (865M parameters): start it only with 150 s of the budget left.
    if [ "$w" -ge 320 ] && [ "$left" -lt 150 ]; then
      echo "== width $w skipped: ${left}s of the ${budget}s budget left"; continue
    fi
    echo "== width $w ($((SECONDS - start)) s in)"
    local dp=(); [ "$first" = 1 ] && dp=(--dp-check); first=0
    if timeout 240 "$bin" --device "$device" --widths "$w" --save "$models" "${common[@]}" "${dp[@]}" >"$models/ours.json"; then
      cat "$models/ours.json" | tee -a "$results"
    else
      echo "ldmscale failed at width $w (exit $?)"
      [ -d "$models/w$w" ] || continue   # the peer still runs on the saved model
    fi
    for mode in fp32 tf32; do
      local flag=(); [ "$mode" = tf32 ] && flag=(--tf32)
      if timeout 120 "$py" "$root/bench/gpu_torch.py" --model "$models/w$w" "${peer[@]}" "${flag[@]}" >"$models/torch.json"; then
        tee -a "$results" <"$models/torch.json"
      else
        echo "torch ($mode) failed at width $w (exit $?)"
      fi
    done
    rm -rf "${models:?}/w$w"
  done
  rm -rf "$models"
  "$py" - "$results" "$out/summary.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ours = {r["width"]: r for r in rows if r["impl"] == "ldmscale"}
lines = ["| width | params | parity rel L2 | DP split / with CPU rel L2 | cfg ours ms | cfg torch fp32 | cfg torch tf32 | speed vs fp32 | train ours ms (fwd+bwd / opt) | train torch fp32 (fwd+bwd / opt) | train torch tf32 | speed vs fp32 | ours TFLOP/s cfg / train | warm-up s ours / torch |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
peers = [r for r in rows if r["impl"].startswith("torch")]
order = [r["width"] for r in rows if r["impl"] == "ldmscale"]
by = lambda w, tf32: next((p for p in peers if p["width"] == w and p["tf32"] == tf32), None)
fmt = lambda v, f="{:.1f}": "-" if v is None else f.format(v)
for w in order:
    o, p32, p16 = ours[w], by(w, False), by(w, True)
    dp = "-" if o.get("dp_split_rel_l2") is None else f'{o["dp_split_rel_l2"]:.1e} / {o["dp_with_cpu_rel_l2"]:.1e}'
    par = "-" if o.get("parity_rel_l2") is None else f'{o["parity_rel_l2"]:.1e}'
    lines.append("| " + " | ".join([
        str(w), f'{o["params"]/1e6:.0f}M', par, dp,
        fmt(o["cfg_step_ms"]), fmt(p32 and p32["cfg_step_ms"]), fmt(p16 and p16["cfg_step_ms"]),
        fmt(p32 and p32["cfg_step_ms"] / o["cfg_step_ms"], "{:.2f}x"),
        f'{o["train_step_ms"]:.1f} ({o["train_fwd_bwd_ms"]:.1f} / {o["train_optimizer_ms"]:.1f})',
        "-" if not p32 else f'{p32["train_step_ms"]:.1f} ({p32["train_fwd_bwd_ms"]:.1f} / {p32["train_optimizer_ms"]:.1f})',
        fmt(p16 and p16["train_step_ms"]),
        fmt(p32 and p32["train_step_ms"] / o["train_step_ms"], "{:.2f}x"),
        f'{o["cfg_step_tflops_per_s"]:.2f} / {o["train_step_tflops_per_s"]:.2f}',
        f'{o["train_warmup_s"]:.0f} / ' + fmt(p32 and p32["train_warmup_s"], "{:.0f}"),
    ]) + " |")
gpu = next((p["gpu"] for p in peers if p.get("gpu")), None)
first = ours[order[0]] if order else {}
head = [f"device: {gpu or first.get('device', '?')}; batch {first.get('batch', '?')}, "
        f"latent {first.get('latent', '?')}, {first.get('tokens', '?')} tokens; "
        "speed = torch fp32 time / ldmscale time (>1: ldmscale faster); medians of the timed reps", ""]
text = "\n".join(head + lines) + "\n"
open(sys.argv[2], "w").write(text)
print(text)
PY
  echo "total $((SECONDS - start)) s"
}

case "$mode" in
  prepare) prepare ;;
  run)
    export PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    # cudarc opens libcuda and libnvrtc at run time: put the toolkit's or PyTorch's nvrtc in view.
    nvrtc="$(ldconfig -p | grep -o '/.*libnvrtc\.so.*' | head -1 || true)"
    for d in /usr/local/cuda /usr/local /opt; do
      [ -n "$nvrtc" ] || nvrtc="$(find "$d" -name 'libnvrtc.so*' -print -quit 2>/dev/null || true)"
    done
    if [ -n "$nvrtc" ]; then export LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
    echo "nvrtc: ${nvrtc:-not found}"
    PY="${PYTHON:-python3}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$payload"/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    bin=/tmp/gpu-check; xz -dc "$payload/gpu-check.xz" >"$bin"; chmod +x "$bin"
    dev="${DEVICE:-cuda:0}"
    out="${OUT:-$root/target/gpu-out}"; mkdir -p "$out"
    check "$bin" "$PY" "$dev" "$dev" "$out" 2>&1 | tee "$out/gpu.log"
    ;;
  smoke)
    venv="$(bash "$root/tools/setup-python.sh")"
    out="${OUT:-$root/target/gpu-smoke}"; mkdir -p "$out"
    nice -n 19 cargo build --release -q -p ldmscale-bench --bin gpu-check --manifest-path "$root/Cargo.toml"
    WIDTHS="${WIDTHS:-32}" BATCH="${BATCH:-2}" LATENT="${LATENT:-8}" TOKENS="${TOKENS:-8}" \
      CONTEXT="${CONTEXT:-64}" NORM_GROUPS="${NORM_GROUPS:-8}" WARMUP="${WARMUP:-1}" REPS="${REPS:-2}" \
      check "${CARGO_TARGET_DIR:-$root/target}/release/gpu-check" "$venv/bin/python" cpu cpu \
      "$out" 2>&1 | tee "$out/gpu.log"
    ;;
  *) echo "usage: bench/gpu.sh prepare|run|smoke" >&2; exit 2 ;;
esac
