#!/usr/bin/env bash
# README command (a): install, then run the main job end to end on the embedded default: the Kubeflow
# training pipeline through kfp.local at ci scale (Feast -> reasoner -> Stage 1 -> RGA -> Stage 3 -> gate ->
# MLflow registry), then print the registry and how to open the MLflow UI.
set -euo pipefail
source "$(dirname "$0")/env.sh"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
rgalign pipeline run "$@"
