#!/usr/bin/env bash
# README command (a): install, then run the main job end to end on the embedded default.
set -euo pipefail
source "$(dirname "$0")/env.sh"
rgalign quickstart "$@"
