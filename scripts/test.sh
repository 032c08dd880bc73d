#!/usr/bin/env bash
# README command (b): install, then run the test suite (slow end-to-end tests included, at ci scale).
# One test process per core, at most 4 (pytest-xdist; RGALIGN_TEST_WORKERS=1 runs them in this process), each test file
# on one worker, so a file's module fixtures are built once.
set -euo pipefail
source "$(dirname "$0")/env.sh"
set +e
# (GNU nproc counts OMP_NUM_THREADS, which env.sh sets to 1 for the tests: count the cores without it)
cores="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
workers="${RGALIGN_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}"
if [ "$workers" -gt 1 ]; then
  python -m pytest -n "$workers" --dist loadfile "$@"
else
  python -m pytest "$@"
fi
rc=$?
[ "$rc" -eq 5 ] && { echo "pytest collected no tests"; exit 1; }
exit "$rc"
