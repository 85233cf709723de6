#!/bin/bash
# runs/demo29: runs/demo24 (shipped) continued as runs/demo24 continued runs/demo22 (averaged
# weights, --ema-decay 0.998, bf16, lr 2e-4 cosine, its interpreters kept, the same photo weights),
# with one change: hard-example replay (--hard-replay 16 --replay-uses 3: each step trains on 48
# fresh images plus the 16 of the step before with the highest loss, each back at most 3 times).
# 1,000 steps at 224 px on images no run has drawn (--data-offset 100000 counts 48-image batches
# here: images 4,800,000-4,847,999; earlier runs stopped below 4,613,000), a 200-step fine-tune
# (same draws as earlier runs), export and the ship decision. Resumable (full.pt every 100 steps).
set -e
cd "$(dirname "$0")/../.."
A="--out runs/demo29 --data-offset 100000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 1000 --full-lr 2e-4 --interp-steps-per-stage 120 --interp-penalty 3.5 --finetune-steps 200 --finetune-lr 5e-5 --stem-blocks 4 --ema-decay 0.998 --amp bf16 --photo-weights runs/demo24/photo_weights.json --hard-replay 16 --replay-uses 3"
P=.venv/bin/python
$P -m iared_edge.demo.train $A --phase full --init-backbone runs/demo24/iared_digits_tiny.safetensors --init-interpreters runs/demo24/iared_digits_tiny.safetensors
$P -m iared_edge.demo.train $A --phase finetune
$P -m iared_edge.demo.train $A --phase export --export-to runs/demo29/iared_digits_tiny.safetensors
$P benchmarks/demo_operating_points.py demo runs/demo29/iared_digits_tiny.safetensors \
    --images 1500 --ratios 0.45 --val-seed 15 > runs/demo29/op_points.md 2>&1
echo DONE
