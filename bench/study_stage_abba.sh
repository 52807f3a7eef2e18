#!/usr/bin/env bash
# Times one training stage of a finished study with two ldmscale binaries in the order before,
# after, after, before (ABBA, so a machine that drifts in speed biases neither), each on a fresh
# copy of the study without that stage's results, and prints each run's wall time and a hash
# of the weights it wrote (equal hashes: the change kept every trained value).
# Usage: bench/study_stage_abba.sh BEFORE_BIN AFTER_BIN STUDY_DIR STAGE [ROUNDS]
#   STAGE: family, super-res, distill or dreambooth; ROUNDS: ABBA rounds (default 1).
#   Example: bench/study_stage_abba.sh /tmp/ldmscale-old target/release/ldmscale study-quick family
set -euo pipefail
[ $# -ge 4 ] || { sed -n 2,8p "$0" >&2; exit 2; }
before="$1"; after="$2"; study="$3"; stage="$4"; rounds="${5:-1}"
case "$stage" in
  family) dir=models ;; super-res) dir=super_res ;; distill) dir=distill ;; dreambooth) dir=dreambooth ;;
  *) echo "stage '$stage': expected family, super-res, distill or dreambooth" >&2; exit 2 ;;
esac
for f in "$before" "$after"; do [ -x "$f" ] || { echo "$f: not an executable" >&2; exit 2; }; done
[ -f "$study/stages.json" ] || { echo "$study: no stages.json (not a study directory)" >&2; exit 2; }
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
run() { # $1: label, $2: binary
  local out="$work/$1"; rm -rf "$out"; cp -r "$study" "$out"; rm -rf "${out:?}/$dir"
  python3 - "$out/stages.json" "$stage" <<'PY'
import json, sys
path, stage = sys.argv[1], sys.argv[2]
stages = json.load(open(path)); stages["stages"].pop(stage, None); json.dump(stages, open(path, "w"))
PY
  local start end
  start=$(date +%s.%N)
  "$2" study --config "$out/study.toml" --out "$out" --only "$stage" -q
  end=$(date +%s.%N)
  local hash
  hash=$(find "$out/$dir" -name '*.safetensors' | sort | xargs cat | sha256sum | cut -c1-16)
  printf '%-7s %8.1f s  weights %s\n' "$1" "$(python3 -c "print($end - $start)")" "$hash"
  rm -rf "$out"
}
for _ in $(seq "$rounds"); do
  run before "$before"; run after "$after"; run after "$after"; run before "$before"
done
