#!/bin/bash
# runs/demo25: runs/demo24 (shipped) continued as runs/demo24 continued runs/demo22 (averaged
# weights, --ema-decay 0.998, bf16, lr 2e-4 cosine, its interpreters kept, the same photo weights),
# with one change: 35% of the training backgrounds get small printed labels (--printed-text 0.35,
# capitals and digits 5-22 px tall): 1,200 steps at 224 px on images no run has drawn
# (--data-offset 45000), a 200-step fine-tune (same images), export and the ship decision.
# Resumable (full.pt every 100 steps).
set -e
cd "$(dirname "$0")/../.."
A="--out runs/demo25 --data-offset 45000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 1200 --full-lr 2e-4 --interp-steps-per-stage 120 --interp-penalty 3.5 --finetune-steps 200 --finetune-lr 5e-5 --stem-blocks 4 --ema-decay 0.998 --amp bf16 --photo-weights runs/demo24/photo_weights.json --printed-text 0.35"
P=.venv/bin/python
# --photo-weights: runs/demo24/photo_weights.json (runs/demo22's per-photo loss), as runs/demo24 drew them.
$P -m iared_edge.demo.train $A --phase full --init-backbone runs/demo24/iared_digits_tiny.safetensors --init-interpreters runs/demo24/iared_digits_tiny.safetensors
$P -m iared_edge.demo.train $A --phase finetune
$P -m iared_edge.demo.train $A --phase export --export-to runs/demo25/iared_digits_tiny.safetensors
$P benchmarks/demo_operating_points.py demo runs/demo25/iared_digits_tiny.safetensors \
    --images 1500 --ratios 0.45 --val-seed 12 > runs/demo25/op_points.md 2>&1
echo DONE
