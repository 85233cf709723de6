#!/bin/bash
# runs/demo21: runs/demo20 continued with four more residual blocks in the convolutional stem, at
# 1/4 resolution (--stem-fine-blocks 4; 48 channels, 7.5 K parameters and 47 MFLOP each, starting
# as the identity so step 0 is runs/demo20 exactly), at 224 px on images no run has drawn
# (--data-offset 37000), bf16 autocast (this session's AMD EPYC has AVX512-BF16: 4 s a step), the
# weights averaged (--ema-decay 0.998), its interpreters kept; then a 200-step fine-tune, export and
# the ship decision. Resumable (full.pt every 100 steps).
set -e
cd "$(dirname "$0")/../.."
A="--out runs/demo21 --data-offset 37000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 1200 --full-lr 2e-4 --interp-steps-per-stage 120 --interp-penalty 3.5 --finetune-steps 200 --finetune-lr 5e-5 --stem-blocks 4 --stem-fine-blocks 4 --ema-decay 0.998 --amp bf16"
P=.venv/bin/python
$P -m iared_edge.demo.train $A --phase full --init-backbone runs/demo20/iared_digits_tiny.safetensors --init-interpreters runs/demo20/iared_digits_tiny.safetensors
$P -m iared_edge.demo.train $A --phase finetune
$P -m iared_edge.demo.train $A --phase export --export-to runs/demo21/iared_digits_tiny.safetensors
$P benchmarks/demo_operating_points.py demo runs/demo21/iared_digits_tiny.safetensors \
    --images 1500 --ratios 0.45 --val-seed 8 > runs/demo21/op_points.md 2>&1
echo DONE
