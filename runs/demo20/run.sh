#!/bin/bash
# runs/demo19's question on a machine with bf16 (AMX) instructions: runs/demo17 continued at 224 px
# on images no run has drawn (--data-offset 34000) with a moving average of the weights
# (--ema-decay 0.998), its interpreters kept, then a 200-step fine-tune. Differences from
# runs/demo19: bf16 autocast (--amp bf16; about 2 s a step here against 6.5 s in float32 on the
# AVX2 machine) and 2,000 steps instead of 3,000, so that it finishes inside one session
# (runs/demo19's step-1,600 checkpoint went with its machine). Resumable (full.pt every 100 steps).
set -e
cd "$(dirname "$0")/../.."
A="--out runs/demo20 --data-offset 34000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 2000 --full-lr 2e-4 --interp-steps-per-stage 120 --interp-penalty 3.5 --finetune-steps 200 --finetune-lr 5e-5 --stem-blocks 4 --ema-decay 0.998 --amp bf16"
P=.venv/bin/python
$P -m iared_edge.demo.train $A --phase full --init-backbone runs/demo17/iared_digits_tiny.safetensors --init-interpreters runs/demo17/iared_digits_tiny.safetensors
$P -m iared_edge.demo.train $A --phase finetune
$P -m iared_edge.demo.train $A --phase export --export-to runs/demo20/iared_digits_tiny.safetensors
$P benchmarks/demo_operating_points.py demo runs/demo20/iared_digits_tiny.safetensors \
    --images 1500 --ratios 0.45 --val-seed 7 > runs/demo20/op_points.md 2>&1
echo DONE
