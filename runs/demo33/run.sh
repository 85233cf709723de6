#!/bin/bash
# runs/demo33: runs/demo32 (shipped) continued as runs/demo32 continued runs/demo24 (averaged
# weights, --ema-decay 0.998, no stochastic depth, no label smoothing, its interpreters kept, the
# same photo weights), with one change: the cosine schedule peaks at 1e-4 instead of 2e-4 (a
# gentler anneal of weights that every continuation so far moved only by noise). float32
# (--amp none): this machine has no bf16 instructions. 700 steps at 224 px on images no run has
# drawn (--data-offset 78700, batches of 64: 78700-79399), a 200-step fine-tune (same draws as
# earlier runs), export and the ship decision. Resumable (full.pt every 100 steps).
set -e
cd "$(dirname "$0")/../.."
A="--out runs/demo33 --data-offset 78700 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 700 --full-lr 1e-4 --interp-steps-per-stage 120 --interp-penalty 3.5 --finetune-steps 200 --finetune-lr 5e-5 --stem-blocks 4 --ema-decay 0.998 --amp none --photo-weights runs/demo24/photo_weights.json --drop-path 0 --label-smoothing 0"
P=.venv/bin/python
$P -m iared_edge.demo.train $A --phase full --init-backbone runs/demo32/iared_digits_tiny.safetensors --init-interpreters runs/demo32/iared_digits_tiny.safetensors
$P -m iared_edge.demo.train $A --phase finetune
$P -m iared_edge.demo.train $A --phase export --export-to runs/demo33/iared_digits_tiny.safetensors
$P benchmarks/demo_operating_points.py demo runs/demo33/iared_digits_tiny.safetensors \
    --images 1500 --ratios 0.45 --val-seed 17 > runs/demo33/op_points.md 2>&1
echo DONE
