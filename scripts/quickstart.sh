#!/usr/bin/env bash
# Set up, then run the main job offline: encode a multilingual sample and score query/passage pairs.
# Until the trained default model lands, the model is a small seeded random checkpoint in the
# BAAI/bge-m3 layout (real tokenizer, random weights): the pipeline is real, the scores are not.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${M3EMBED_SHARED:-../shared}
scripts/setup.sh
MODEL=.cache/demo-model
[ -f "$MODEL/config.json" ] || .venv/bin/m3embed random-checkpoint "$MODEL" --tokenizer "$SHARED/reference/xlmr-tokenizer"
.venv/bin/m3embed encode examples/sample.jsonl .cache/sample.npz --model "$MODEL" --sparse --colbert
.venv/bin/python examples/quickstart.py "$MODEL"
