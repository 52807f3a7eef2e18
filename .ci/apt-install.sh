#!/usr/bin/env bash
# Installs the named Debian packages that are not installed yet (root, non-interactive),
# fetching the package lists first when a CI image deleted them.
#   .ci/apt-install.sh slurm-wlm munge
set -euo pipefail
missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -type f -name '*Packages*' 2>/dev/null | head -1)" ]; then
    apt-get update -q
fi
# Stale lists name files the mirror no longer has: refresh once and retry.
apt-get install -y -q --no-install-recommends "${missing[@]}" ||
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; }
