#!/usr/bin/env bash
# Reproduce the shipped default text-to-image model from scratch on CPU (about an hour on 2 cores):
# tokenise the train splits of shapes and digits (both languages) with the shipped tokenizers,
# train the transformer with configs/default-t2i.json, and write the model folder that
# CogViewPipeline.from_pretrained() loads by default. Every step resumes if re-run after a kill.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs}
"$PY" -m cogview prepare --dataset shapes --split train --out "$OUT/shards/shapes-train" --text-budget 24 --resume
"$PY" -m cogview prepare --dataset digits --split train --out "$OUT/shards/digits-train" --text-budget 24 --resume
"$PY" -m cogview train --config configs/default-t2i.json --out "$OUT/default-t2i" --resume
"$PY" - <<PYEOF
from cogview.pipeline import CogViewPipeline
CogViewPipeline.from_components("$OUT/default-t2i/model").save_pretrained("${DEST:-cogview/assets/default}")
PYEOF
