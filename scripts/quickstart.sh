#!/usr/bin/env bash
# README command (a): install, then run the main job end to end on the embedded default: the Kubeflow
# training pipeline through kfp.local at ci scale (Feast -> reasoner -> Stage 1 + baseline -> RGA -> Stage 3 ->
# gate -> MLflow registry), then print the gate table, the registry and how to open the MLflow UI.
# kfp.local runs one step at a time: each step may use every core (OMP_NUM_THREADS, default: all of them).
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
source "$(dirname "$0")/env.sh"
rgalign pipeline run "$@"
