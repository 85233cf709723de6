#!/bin/bash
# runs/demo31: a DIAGNOSIS, never shipped (RULE.md): runs/demo30 (test photos at 25% of the
# draws) continued the same way for 700 more steps, to see whether seeing the test scenes longer
# keeps paying. Images no run has drawn (--data-offset 77000 in 64-image batches: images
# 4,928,000-4,972,799). Resumable (full.pt every 100 steps): rerun this script.
set -e
cd "$(dirname "$0")/../.."
P=.venv/bin/python
S="benchmarks/demo_seen_scenes.py --photos board,building,smarties,starry_night --share 0.25 --base-weights runs/demo24/photo_weights.json --"
A="--out runs/demo31 --data-offset 77000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 700 --full-lr 2e-4 --interp-steps-per-stage 120 --interp-penalty 3.5 --finetune-steps 0 --stem-blocks 4 --ema-decay 0.998 --amp bf16"
$P $S $A --phase full --init-backbone runs/demo30/seen_scenes_diagnosis.safetensors --init-interpreters runs/demo30/seen_scenes_diagnosis.safetensors
$P $S $A --phase export --export-to runs/demo31/seen_scenes_diagnosis.safetensors
$P benchmarks/demo_error_analysis.py runs/demo31/seen_scenes_diagnosis.safetensors --images 1000 --by-image --against runs/demo30/seen_scenes_diagnosis.safetensors > runs/demo31/errors_by_image.md 2>&1
echo DONE
