#!/bin/bash
# runs/demo17 (if shipped) continued for 3,000 more steps at 224 px on images no run has drawn
# (--data-offset 34000), keeping a moving average of the weights (--ema-decay 0.998, about a
# 500-step horizon) that the phase hands on; its interpreters kept, then a 200-step fine-tune.
# Resumable across sessions (full.pt every 100 steps, not in git). Runs instead of runs/demo18
# when runs/demo17 has shipped (see RULE.md).
set -e
cd "$(dirname "$0")/../.."
A="--out runs/demo19 --data-offset 34000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 3000 --full-lr 2e-4 --interp-steps-per-stage 120 --interp-penalty 3.5 --finetune-steps 200 --finetune-lr 5e-5 --stem-blocks 4 --ema-decay 0.998"
P=.venv/bin/python
$P -m iared_edge.demo.train $A --phase full --init-backbone runs/demo17/iared_digits_tiny.safetensors --init-interpreters runs/demo17/iared_digits_tiny.safetensors
$P -m iared_edge.demo.train $A --phase finetune
$P -m iared_edge.demo.train $A --phase export --export-to runs/demo19/iared_digits_tiny.safetensors
$P benchmarks/demo_operating_points.py demo runs/demo19/iared_digits_tiny.safetensors \
    --images 1500 --ratios 0.45 --val-seed 7 > runs/demo19/op_points.md 2>&1
echo DONE
