#!/usr/bin/env bash
# README command (b): install, then run the test suite (slow end-to-end tests included, at ci scale).
set -euo pipefail
source "$(dirname "$0")/env.sh"
set +e
python -m pytest "$@"
rc=$?
[ "$rc" -eq 5 ] && { echo "pytest collected no tests"; exit 1; }
exit "$rc"
