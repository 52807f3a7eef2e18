#!/usr/bin/env bash
# Lists the draws from burn's process-wide random generator that a test binary makes outside
# ldmscale_model::init::with_device_rng, by call site. A test that relies on seeded values
# (seeded_init, seeded) is reproducible only if no other test in its binary draws unlocked.
# Usage: tools/debug/unlocked-draws.sh TEST_BINARY [TEST_ARGS...]  (needs gdb; runs the tests
# one at a time, several times slower than without gdb).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 TEST_BINARY [TEST_ARGS...]" >&2; exit 2; }
binary=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
exec gdb -q -batch \
    -ex 'set pagination off' -ex 'set confirm off' -ex 'set breakpoint pending on' \
    -ex 'set print thread-events off' -ex starti -x "$here/unlocked_draws.py" -ex continue \
    --args "$binary" --test-threads=1 "$@" 2>&1 | grep -E '^(UNLOCKED|unlocked draw sites|test result)'
