#!/usr/bin/env bash
# The shipped default model (shapes, digits and ~1,900 emoji concepts; docs/default_model.md),
# stage by stage, on CPU: about 12 hours on 2 cores in all, stage 4 the longest. Every command
# resumes after a kill, so a stage runs in pieces: re-run the script with the same STAGE.
# STAGE=all runs every stage in order. The first shipped model (shapes and digits only) is
# scripts/train_shapes_model.sh.
#
#   STAGE=1  image tokenizers: 8x8 (n_down 2, 2048 codes) and 16x16 (n_down 1, 1024 codes) grids
#            on shapes + digits x2 + emoji x4 (train splits), one core each, ~40 min
#   STAGE=2  text tokenizer: BPE 4096 on shapes + digits + emoji captions (seconds)
#   STAGE=3  token shards with the chosen grid (GRID=8 or 16): emoji with every caption template,
#            shapes and digits as for the shipped model
#   STAGE=4  text-to-image transformer on the mixture, DDP on both cores (configs/emoji-t2i.json)
#   STAGE=5  shards for the other two jobs, with the same tokenizers: image-to-text rows (one
#            caption template per emoji; shapes; digits) and super-resolution rows (32 px -> 64 px:
#            8x8 codes, then the 16x16 codes of the 64 px render)
#   STAGE=6  one multi-task transformer: stage 4's weights continued on text-to-image and
#            image-to-text rows together, DDP (configs/emoji-multitask.json)
#   STAGE=6b text-to-image from stage 6 on emoji x2 + all shapes + digits (configs/emoji-t2i-balance.json)
#   STAGE=6c the captioner: stage 6's weights on image-to-text rows only, caption tokens weighted
#            10x (configs/emoji-caption.json)
#   STAGE=6d the captioner 4,000 steps more from 6c (configs/emoji-caption-more.json)
#   STAGE=6f the captioner 4,000 steps more from 6d at half its peak (configs/emoji-caption-more2.json)
#   STAGE=6h the captioner 4,000 steps more from 6f at half 6f's peak, emoji x4 (configs/emoji-caption-more3.json;
#            shipped until 2026-12-04)
#   STAGE=capgpu the shipped captioner: a larger one (320 x 8 layers, 11.9M parameters) from scratch
#            on 6h's rows, 5,500 steps of 256 (configs/emoji-caption-gpu-m.json): 6 min on one H200
#            beside the 384 x 9 one (-l.json, 1-3 points better, but its 37 MB file is over the
#            house's 30 MB per file) (benchmarks/gpu_session.py); on this CPU, DDP in fp32, about a day
#   STAGE=6e text-to-image 10,000 steps more from 6b at half its peak, emoji x3 (configs/emoji-t2i-more.json)
#   STAGE=6i text-to-image 6,000 steps more from 6g, shapes x3, digits x4 (configs/emoji-t2i-more3.json;
#            alone, emoji fell 6 / 2 points for shapes and digits: shipped only in the mean, 6gi)
#   STAGE=6j the captioner 8,000 steps more from 6h at 6f's peak, shapes x2 (configs/emoji-caption-more4.json;
#            measured, not shipped: train emoji named 63% / 83.5% of 200, 6h 68% / 88%)
#   STAGE=6k the captioner 6,000 steps more from 6h with every zh template of the train emoji
#            (configs/emoji-caption-more5.json; measured, not shipped: en captions broke, 88% -> 62%)
#   STAGE=6gi the shipped transformer: the mean of 6g's and 6i's weights (cogview average, seconds)
#   STAGE=6g text-to-image 7,000 steps more from 6e at half 6e's peak, shapes x2 (configs/emoji-t2i-more2.json)
#   STAGE=7  the super-resolution transformer with cell inputs, DDP (configs/emoji-sr.json)
#   STAGE=7b super-resolution 4,000 steps more from 7, shapes x3 (configs/emoji-sr-more.json)
#   STAGE=dec  the 8x8 tokenizer's decoder trained further, encoder and codebook frozen (codes
#            unchanged, so the transformers need nothing new; configs/tokenizer-emoji-8x8-decoder.json)
#   STAGE=assemble  the model folder (scripts/assemble_emoji_model.py): the transformers of stages
#            6gi, capgpu and 7b, best of 4 by the joint score, captions re-ranked from a beam of 8, the text
#            tokenizer and the decoder-trained image tokenizer, weights in
#            fp16, into DEST (default runs/emoji/assembled; cogview/assets/default is the shipped one),
#            then the skin-tone modifiers learned from the train split's pairs (scripts/learn_modifiers.py,
#            seconds; docs/generation.md, "Modifiers")
#   probe    the recall probe: 200 emoji, 20 epochs, one core (configs/emoji-probe200.json)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs}
GRID=${GRID:-8}
STAGE=${STAGE:-all}
TOK="$OUT/tokenizer-emoji$([ "$GRID" = 8 ] && echo -8x8)/model"
TEXT="$OUT/emoji/text_tokenizer"
SHARDS="$OUT/emoji/shards$GRID"
run() { [ "$STAGE" = all ] || [ "$STAGE" = "$1" ]; }

if run 1; then
  "$PY" -m cogview train-tokenizer --config configs/tokenizer-emoji-8x8.json --out "$OUT/tokenizer-emoji-8x8" --resume &
  "$PY" -m cogview train-tokenizer --config configs/tokenizer-emoji.json --out "$OUT/tokenizer-emoji" --resume
  wait
  for t in "$OUT/tokenizer-emoji-8x8/model" "$OUT/tokenizer-emoji/model"; do
    "$PY" -m cogview roundtrip --tokenizer "$t" --datasets shapes,digits,emoji -n 483 --out "$t/../roundtrip"
  done
fi
if run 2; then
  "$PY" -c "from cogview.tokenizers.text import EMOJI_DATASETS, EMOJI_VOCAB_SIZE, train_default
train_default('$TEXT', EMOJI_DATASETS, EMOJI_VOCAB_SIZE)"
fi
prep() {
  "$PY" -m cogview prepare --image-tokenizer "$TOK" --text-tokenizer "$TEXT" --text-budget 24 --resume \
    --no-progress "$@"
}
if run 3; then
  prep --dataset emoji --split train --out "$SHARDS/emoji-train" --dataset-option all_templates=true
  prep --dataset shapes --split train --out "$SHARDS/shapes-train" --max-examples 4000
  prep --dataset digits --split train --out "$SHARDS/digits-train" --max-examples 4000
fi
if [ "$STAGE" = probe ]; then  # a measurement, not part of STAGE=all
  prep --dataset emoji --split train --out "$SHARDS/emoji-probe200" --dataset-option all_templates=true \
    --max-examples 800
  "$PY" -m cogview train --config configs/emoji-probe200.json --out "$OUT/emoji/probe200" --resume
fi
if run 4; then
  # INIT=DIR starts a machine without runs/emoji/t2i from weights DIR (no optimizer state) for the last
  # 3,400 steps of the schedule. Stages 4, 6, 6b and 6c are done (models/emoji-wip/README.md).
  extra=()
  if [ -n "${INIT:-}" ] && [ ! -d "$OUT/emoji/t2i/checkpoints" ]; then
    extra=(--set init_from="$INIT" steps=3400)
  fi
  "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m cogview train \
    --config configs/emoji-t2i.json --out "$OUT/emoji/t2i" --resume "${extra[@]}"  # data: runs/emoji/shards8
fi
if run 5; then
  # 23 text tokens + [EOT]: the rows are as long as the text-to-image rows (92), so one run mixes them
  # (every caption of one template fits: the longest has 22 tokens).
  i2t=(--tasks image_to_text --text-budget 23)
  # Every shapes scene for stage 6: with the 4,000 of stage 3, shapes stayed at 18-38% aligned
  # after 15 epochs (the prompts combine colour, shape, background and position freely).
  prep --dataset shapes --split train --out "$SHARDS/shapes-train20k"
  prep --dataset emoji --split train --out "$SHARDS/emoji-train-i2t" "${i2t[@]}"
  prep --dataset shapes --split train --out "$SHARDS/shapes-train-i2t" "${i2t[@]}" --max-examples 4000
  prep --dataset digits --split train --out "$SHARDS/digits-train-i2t" "${i2t[@]}" --max-examples 4000
  prep --dataset emoji --split train --out "$SHARDS/emoji-train-sr" --tasks super_resolution --sr-window "$GRID"
  prep --dataset shapes --split train --out "$SHARDS/shapes-train-sr" --tasks super_resolution --sr-window "$GRID" \
    --max-examples 4000
  prep --dataset digits --split train --out "$SHARDS/digits-train-sr" --tasks super_resolution --sr-window "$GRID" \
    --max-examples 4000
fi
ddp() { "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m cogview train "$@"; }
# stage NAME CONFIG RUN INIT: when STAGE is NAME (or all), train CONFIG into $OUT/emoji/RUN from the
# weights INIT (an earlier stage's model folder; the environment's INIT overrides it).
stage() {
  if run "$1"; then
    ddp --config "$2" --out "$OUT/emoji/$3" --resume --set init_from="${INIT:-$4}"
  fi
}
if run 6; then
  ddp --config configs/emoji-multitask.json --out "$OUT/emoji/multitask" --resume \
    --set init_from="$OUT/emoji/t2i/model"
fi
# Text-to-image again, emoji twice and every shapes scene: stage 6 lifted shapes (16-30% -> 48-58%)
# but emoji fell (56-68% -> 30%) with a quarter of the rows and the learning-rate restart.
stage 6b configs/emoji-t2i-balance.json t2i-balance "$OUT/emoji/multitask/model"
# The captioner, trained on from stage 6: in the multi-task mixture caption tokens were ~4% of
# the loss and emoji names were right 1-2% of the time at step 4,000 of 9,000 (docs/emoji_model.md).
# On a machine without runs/emoji/multitask: INIT=DIR with stage 6's weights (git history, c44eb3b).
stage 6c configs/emoji-caption.json caption "$OUT/emoji/multitask/model"
# The captioner, 4,000 steps more from 6c at a lower peak (its caption loss was still falling).
# On a machine without runs/emoji/caption: INIT=models/emoji-wip/caption.
stage 6d configs/emoji-caption-more.json caption-more "$OUT/emoji/caption/model"
# The captioner on from 6d (train emoji named 60% / 77%, floor 80%), at half 6d's peak.
# On a machine without runs/emoji/caption-more: INIT=cogview/assets/default/caption.
stage 6f configs/emoji-caption-more2.json caption-more2 "$OUT/emoji/caption-more/model"
# The captioner on from 6f (train emoji named 72% / 84%, floor 80%; its loss still falling).
# On a machine without runs/emoji/caption-more2: INIT=cogview/assets/default/caption.
stage 6h configs/emoji-caption-more3.json caption-more3 "$OUT/emoji/caption-more2/model"
if run capgpu; then
  # The captioner again, larger and from scratch: 6h named 74% / 90.5% of train emoji as shipped (zh
  # floor 80%); this one 97% / 95% (docs/emoji_model.md, item 25). Trained on a lent H200 in bf16
  # (both captioner configs of the GPU session ran at once); on a machine without one, DDP in fp32.
  if "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    "$PY" -m cogview train --config configs/emoji-caption-gpu-m.json --out "$OUT/emoji/caption-gpu" --resume \
      --set steps=5500
  else
    ddp --config configs/emoji-caption-gpu-m.json --out "$OUT/emoji/caption-gpu" --resume \
      --set steps=5500 device=cpu precision=fp32 strategy=ddp batch_size=128 threads=1
  fi
fi
if [ "$STAGE" = 6j ]; then  # a measurement, not part of STAGE=all
  # The captioner on from 6h (train emoji named 75% / 89%, zh 68% on 200; zh shapes captions fell
  # 40% -> 29%): twice as long at 6f's peak, shapes captions twice. It named fewer (63% / 83.5%).
  # On a machine without runs/emoji/caption-more3: INIT=cogview/assets/default/caption.
  ddp --config configs/emoji-caption-more4.json --out "$OUT/emoji/caption-more4" --resume \
    --set init_from="${INIT:-$OUT/emoji/caption-more3/model}"
fi
if [ "$STAGE" = 6k ]; then  # a measurement, not part of STAGE=all
  # The captioner on from 6h with every template of every train emoji in Chinese (13,844 rows) beside
  # the one-template rows: zh names 68% -> 71% greedy, but English captions stopped after a piece
  # (`an emoji of g`: 88% -> 62%) and zh shapes fell 29% -> 11%.
  prep --dataset emoji --split train --out "$SHARDS/emoji-train-i2t-zh" --tasks image_to_text --text-budget 23 \
    --languages zh --dataset-option all_templates=true
  ddp --config configs/emoji-caption-more5.json --out "$OUT/emoji/caption-more5" --resume \
    --set init_from="${INIT:-$OUT/emoji/caption-more3/model}"
fi
# Text-to-image on from 6b, whose loss was still falling (0.42 -> 0.37), at half its peak with emoji
# three times: 6b left train emoji at 63.5% / 71.5% and shapes at 74.5% / 78% (floors 80 and 90).
# On a machine without runs/emoji/t2i-balance: INIT=models/emoji-wip/t2i-balance.
stage 6e configs/emoji-t2i-more.json t2i-more "$OUT/emoji/t2i-balance/model"
# Text-to-image on from 6e (train emoji 88% / 92%, shapes 80.5% / 82.5% with the shape field at 83%,
# floor 90), at half 6e's peak with every shapes scene twice.
# On a machine without runs/emoji/t2i-more: INIT=cogview/assets/default/transformer.
stage 6g configs/emoji-t2i-more2.json t2i-more2 "$OUT/emoji/t2i-more/model"
# Text-to-image on from 6g (shapes 84% / 87.5%, floor 90; digits fell to 94.5% / 97% with digit
# rows 2% of 6g's mixture): shapes three times, digits four times, same peak as 6g.
# On a machine without runs/emoji/t2i-more2: INIT=cogview/assets/default/transformer.
stage 6i configs/emoji-t2i-more3.json t2i-more3 "$OUT/emoji/t2i-more2/model"
if run 6gi; then
  # The shipped transformer: the mean of 6g's and 6i's weights (a model soup; seconds). 6g leant to
  # emoji, 6i to shapes and digits; the mean kept both (docs/emoji_model.md, item 16).
  "$PY" -m cogview average "$OUT/emoji/t2i-more2/model" "$OUT/emoji/t2i-more3/model" \
    --out "$OUT/emoji/t2i-soup/model"
fi
if run 7; then
  ddp --config configs/emoji-sr.json --out "$OUT/emoji/sr" --resume
fi
# Super-resolution, 4,000 steps more from stage 7 at a lower peak, shapes three times: after
# stage 7 it beat bicubic by 0.6 dB on emoji and lost 5 dB on shapes, its loss still falling.
stage 7b configs/emoji-sr-more.json sr-more "$OUT/emoji/sr/model"
if run dec; then
  "$PY" -m cogview train-tokenizer --config configs/tokenizer-emoji-8x8-decoder.json \
    --out "$OUT/tokenizer-emoji-8x8-decoder" --resume
fi
if run assemble; then
  # The shipped folder: stages 6gi, capgpu and 7b. Best of 4 by default: 64 codes per image make four
  # candidates cost about what two did with the first model's 256; scored by captioner + generator.
  # Captions: the likely ones of a beam of 8, re-ranked by the same two scores (docs/jobs.md).
  "$PY" scripts/assemble_emoji_model.py --transformer "${T2I:-$OUT/emoji/t2i-soup/model}" \
    --caption "${CAPTION:-$OUT/emoji/caption-gpu/model}" --super-resolution "${SR:-$OUT/emoji/sr-more/model}" \
    --candidates 4 --selection joint --caption-candidates 8 --out "${DEST:-$OUT/emoji/assembled}"
  "$PY" scripts/learn_modifiers.py --model "${DEST:-$OUT/emoji/assembled}"
fi
