#!/usr/bin/env bash
# Create .venv with PyTorch's CPU build (torch==2.13.0, on local disk here; an unpinned torch
# pulls several GB of CUDA wheels) and m3embed installed editable with its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, transformers, m3embed; print('torch', torch.__version__, '| transformers', transformers.__version__, '| m3embed', m3embed.__version__)"
