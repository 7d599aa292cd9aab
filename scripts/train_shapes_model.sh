#!/usr/bin/env bash
# Reproduce the first shipped model (shapes and digits; kept in models/shapes-v1, history in
# docs/shapes_model.md) from scratch on CPU (several hours on 2 cores; the three transformers can
# train at the same time, one core each): retrain its text tokenizer (576 pieces) and use its image
# tokenizer (16x16 codes, 512 entries; configs/tokenizer-small.json trains one like it), tokenise
# the train splits of shapes and digits (both languages), train
#   - the text-to-image transformer (configs/default-t2i.json, then default-t2i-continue.json, -continue2.json, -continue3.json),
#   - the captioning / scoring transformer (configs/default-caption.json from the first
#     text-to-image weights, then default-caption-continue.json and
#     default-caption-continue2.json; image-to-text rows),
#   - the super-resolution transformer (configs/default-sr.json, -sr-continue.json, then with cell
#     inputs and input noise -sr-cells.json, -sr-cells-continue.json; 8x8 -> 16x16 code windows
#     of shapes rendered at 32 and 64 px),
# and write the model folder (text-to-image, captioning, super-resolution). Every step resumes if
# re-run after a kill. Today's shipped model is made by scripts/train_default_model.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs}
TEXT="$OUT/shapes/text_tokenizer"
IMAGE=${IMAGE_TOKENIZER:-models/shapes-v1/image_tokenizer}
[ -f "$TEXT/spm.model" ] || "$PY" -c "from cogview.tokenizers.text import SHAPES_DATASETS, SHAPES_VOCAB_SIZE, train_default
train_default('$TEXT', SHAPES_DATASETS, SHAPES_VOCAB_SIZE)"
prep() {
  "$PY" -m cogview prepare --text-tokenizer "$TEXT" --image-tokenizer "$IMAGE" --text-budget 24 --resume \
    --no-progress "$@"
}
prep --dataset shapes --split train --out "$OUT/shards/shapes-train"
prep --dataset digits --split train --out "$OUT/shards/digits-train"
prep --dataset shapes --split train --out "$OUT/shards/shapes-train-i2t" --tasks image_to_text
prep --dataset digits --split train --out "$OUT/shards/digits-train-i2t" --tasks image_to_text
prep --dataset shapes --split train --out "$OUT/shards/shapes-train-sr" --tasks super_resolution --max-examples 12000
"$PY" -m cogview train --config configs/default-t2i.json --out "$OUT/default-t2i" --resume
"$PY" -m cogview train --config configs/default-t2i-continue.json --out "$OUT/default-t2i-continue" --resume \
  --set init_from="$OUT/default-t2i/model"
"$PY" -m cogview train --config configs/default-t2i-continue2.json --out "$OUT/default-t2i-continue2" --resume \
  --set init_from="$OUT/default-t2i-continue/model"
"$PY" -m cogview train --config configs/default-t2i-continue3.json --out "$OUT/default-t2i-continue3" --resume \
  --set init_from="$OUT/default-t2i-continue2/model"
"$PY" -m cogview train --config configs/default-caption.json --out "$OUT/default-caption" --resume \
  --set init_from="$OUT/default-t2i/model"
"$PY" -m cogview train --config configs/default-caption-continue.json --out "$OUT/default-caption-continue" --resume \
  --set init_from="$OUT/default-caption/model"
"$PY" -m cogview train --config configs/default-caption-continue2.json --out "$OUT/default-caption-continue2" --resume \
  --set init_from="$OUT/default-caption-continue/model"
"$PY" -m cogview train --config configs/default-sr.json --out "$OUT/default-sr" --resume
"$PY" -m cogview train --config configs/default-sr-continue.json --out "$OUT/default-sr-continue" --resume \
  --set init_from="$OUT/default-sr/model"
# Cell inputs + input noise (docs/jobs.md, super-resolution).
"$PY" -m cogview train --config configs/default-sr-cells.json --out "$OUT/default-sr-cells" --resume \
  --set init_from="$OUT/default-sr-continue/model"
# The last SR stage is data-parallel over both cores (strategy ddp in its config).
"$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m cogview train \
  --config configs/default-sr-cells-continue.json --out "$OUT/default-sr-cells-continue" --resume \
  --set init_from="$OUT/default-sr-cells/model"
"$PY" - <<PYEOF
from cogview.pipeline import CogViewPipeline
from cogview.generation.text_to_image import DEFAULT_SAMPLING
models = {
    "text_to_image": "$OUT/default-t2i-continue3/model",
    "image_to_text": "$OUT/default-caption-continue2/model",
    "super_resolution": "$OUT/default-sr-cells-continue/model",
}
# Post-selection, best of 2 by caption likelihood, is the shipped text-to-image default (docs/shapes_model.md).
pipe = CogViewPipeline.from_components(models, "$TEXT", "$IMAGE", sampling=DEFAULT_SAMPLING, candidates=2)
pipe.save_pretrained("${DEST:-$OUT/shapes/model}")
PYEOF
