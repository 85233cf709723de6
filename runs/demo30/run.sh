#!/bin/bash
# runs/demo30: a DIAGNOSIS, never shipped (RULE.md). runs/demo24 (shipped) continued exactly as
# runs/demo29 would have been without replay (averaged weights, --ema-decay 0.998, bf16, lr 2e-4
# cosine, its interpreters kept), except that the four TEST photos join the training photos and
# get 25% of the draws (benchmarks/demo_seen_scenes.py; the other 75% follow runs/demo24's photo
# weights). 1,000 steps at 224 px on images no run has drawn (--data-offset 76000 in 64-image
# batches: images 4,864,000-4,927,999). No fine-tune (the question is policy "all"). Then the
# error analysis on the usual test images, whose scenes the model has now seen.
# Resumable (full.pt every 100 steps): rerun this script.
set -e
cd "$(dirname "$0")/../.."
P=.venv/bin/python
S="benchmarks/demo_seen_scenes.py --photos board,building,smarties,starry_night --share 0.25 --base-weights runs/demo24/photo_weights.json --"
A="--out runs/demo30 --data-offset 76000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 1000 --full-lr 2e-4 --interp-steps-per-stage 120 --interp-penalty 3.5 --finetune-steps 0 --stem-blocks 4 --ema-decay 0.998 --amp bf16"
$P $S $A --phase full --init-backbone runs/demo24/iared_digits_tiny.safetensors --init-interpreters runs/demo24/iared_digits_tiny.safetensors
$P $S $A --phase export --export-to runs/demo30/seen_scenes_diagnosis.safetensors
$P benchmarks/demo_error_analysis.py runs/demo30/seen_scenes_diagnosis.safetensors --images 1000 --by-image > runs/demo30/errors_by_image.md 2>&1
echo DONE
