#!/bin/bash
# runs/demo23: runs/demo22 (shipped) continued as runs/demo22 continued runs/demo20: 1,400 more
# steps at 224 px on images no run has drawn (--data-offset 41000), lr 2e-4 cosine, bf16 autocast
# (AMD EPYC with AVX512-BF16), the weights averaged (--ema-decay 0.998), its interpreters kept;
# then a 200-step fine-tune, export and the ship decision on validation seed 10. Resumable
# (full.pt every 100 steps).
set -e
cd "$(dirname "$0")/../.."
A="--out runs/demo23 --data-offset 41000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 1400 --full-lr 2e-4 --interp-steps-per-stage 120 --interp-penalty 3.5 --finetune-steps 200 --finetune-lr 5e-5 --stem-blocks 4 --ema-decay 0.998 --amp bf16"
P=.venv/bin/python
$P -m iared_edge.demo.train $A --phase full --init-backbone runs/demo22/iared_digits_tiny.safetensors --init-interpreters runs/demo22/iared_digits_tiny.safetensors
$P -m iared_edge.demo.train $A --phase finetune
$P -m iared_edge.demo.train $A --phase export --export-to runs/demo23/iared_digits_tiny.safetensors
$P benchmarks/demo_operating_points.py demo runs/demo23/iared_digits_tiny.safetensors \
    --images 1500 --ratios 0.45 --val-seed 10 > runs/demo23/op_points.md 2>&1
echo DONE
