#!/usr/bin/env bash
# Creates the virtual environment that fixture scripts and peer benchmarks use.
# It lives outside the repository (in LDMSCALE_CACHE, default ~/.cache/ldmscale) and is reused.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${LDMSCALE_CACHE:-$HOME/.cache/ldmscale}"
venv="$cache/pyenv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "$venv"; exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip >&2
"$venv/bin/pip" install -q -r "$here/requirements.txt" >&2
echo "$want" > "$stamp"
echo "$venv"
