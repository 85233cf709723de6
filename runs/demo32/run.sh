#!/bin/bash
# runs/demo32: runs/demo24 (shipped) continued as runs/demo24 continued runs/demo22 (averaged
# weights, --ema-decay 0.998, lr 2e-4 cosine, its interpreters kept, the same photo weights), with
# one change: no stochastic depth and no label smoothing (--drop-path 0 --label-smoothing 0).
# float32 (--amp none): this machine has no bf16 instructions. 700 steps at 224 px on images no
# run has drawn (--data-offset 78000, batches of 64: 78000-78699), a 200-step fine-tune (same
# draws as earlier runs), export and the ship decision. Resumable (full.pt every 100 steps).
set -e
cd "$(dirname "$0")/../.."
A="--out runs/demo32 --data-offset 78000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 700 --full-lr 2e-4 --interp-steps-per-stage 120 --interp-penalty 3.5 --finetune-steps 200 --finetune-lr 5e-5 --stem-blocks 4 --ema-decay 0.998 --amp none --photo-weights runs/demo24/photo_weights.json --drop-path 0 --label-smoothing 0"
P=.venv/bin/python
$P -m iared_edge.demo.train $A --phase full --init-backbone runs/demo24/iared_digits_tiny.safetensors --init-interpreters runs/demo24/iared_digits_tiny.safetensors
$P -m iared_edge.demo.train $A --phase finetune
$P -m iared_edge.demo.train $A --phase export --export-to runs/demo32/iared_digits_tiny.safetensors
$P benchmarks/demo_operating_points.py demo runs/demo32/iared_digits_tiny.safetensors \
    --images 1500 --ratios 0.45 --val-seed 16 > runs/demo32/op_points.md 2>&1
echo DONE
