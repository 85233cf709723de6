#!/bin/bash
# runs/demo16's recipe exactly (same start, same images, same steps), plus four residual blocks in
# the convolutional stem that start as the identity (--stem-blocks 4): an A/B against runs/demo16
# at matched steps. Resumable across sessions like runs/demo16 (full.pt every 100 steps, not in git).
# Run it when runs/demo16 is done: two trainings at once on 2 cores only slow each other down.
set -e
cd "$(dirname "$0")/../.."
A="--out runs/demo17 --data-offset 28000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 3000 --full-lr 2e-4 --interp-steps-per-stage 120 --interp-penalty 3.5 --finetune-steps 200 --finetune-lr 5e-5 --stem-blocks 4"
P=.venv/bin/python
$P -m iared_edge.demo.train $A --phase full --init-backbone runs/demo15/iared_digits_tiny.safetensors --init-interpreters runs/demo15/iared_digits_tiny.safetensors
$P -m iared_edge.demo.train $A --phase finetune
$P -m iared_edge.demo.train $A --phase export --export-to runs/demo17/iared_digits_tiny.safetensors
$P benchmarks/demo_operating_points.py demo runs/demo17/iared_digits_tiny.safetensors \
    --images 1500 --ratios 0.45 --val-seed 5 > runs/demo17/op_points.md 2>&1
echo DONE
