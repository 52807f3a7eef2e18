#!/usr/bin/env bash
# Fuzzing the readers of untrusted bytes: the proptest properties in crates/{eval,model,data}/tests/
# fuzz.rs (restricted pickle reader, .npy / .npz, PyTorch zip archives, safetensors, WebDataset tars,
# UNet / autoencoder config.json) with many cases per property, for at most BUDGET seconds per crate.
# Each run draws new random inputs. A failing case is shrunk by proptest and printed: turn it into a
# named test in that crate's tests/hostile_inputs.rs.
# Usage: bench/fuzz.sh [CASES]   (default PROPTEST_CASES or 20000 per property; BUDGET=300 s per crate)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cases="${1:-${PROPTEST_CASES:-20000}}"
budget="${BUDGET:-300}"
crates=(eval model data)
for crate in "${crates[@]}"; do
  cargo test --release -q --no-run -p "ldmscale-$crate" --test fuzz --manifest-path "$root/Cargo.toml"
done
status=0
printf '%-8s %10s %8s  %s\n' crate cases seconds result
for crate in "${crates[@]}"; do
  log="$(mktemp)"
  start=$(date +%s)
  if PROPTEST_CASES="$cases" timeout "$budget" cargo test --release -q -p "ldmscale-$crate" \
      --test fuzz --manifest-path "$root/Cargo.toml" >"$log" 2>&1; then
    result="ok: $(grep -o '[0-9]* passed' "$log" | tail -1) properties"
  else
    rc=$?
    if [ "$rc" = 124 ]; then
      result="stopped at the time budget, no failure until then"
    else
      result="FAILED (output below)"; status=1; cat "$log"
    fi
  fi
  printf '%-8s %10s %8s  %s\n' "$crate" "$cases" "$(($(date +%s) - start))" "$result"
  rm -f "$log"
done
exit "$status"
