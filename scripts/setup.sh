#!/usr/bin/env bash
# Create .venv with PyTorch's CPU build (torch==2.13.0, on local disk here; an unpinned torch
# pulls several GB of CUDA wheels) and m3embed installed editable with its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# pip's exit status must survive the filter of its noise (a failed install stops the script)
pipi() {
    local out
    out=$(.venv/bin/python -m pip install -q "$@" 2>&1) || { echo "$out" >&2; return 1; }
    echo "$out" | grep -v "^WARNING: Location" || true
}
pipi --upgrade pip
pipi "torch==2.13.0"
pipi -e ".[dev]"
.venv/bin/python -c "import torch, transformers, m3embed; print('torch', torch.__version__, '| transformers', transformers.__version__, '| m3embed', m3embed.__version__)"
