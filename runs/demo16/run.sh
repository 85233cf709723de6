#!/bin/bash
# Resumable across sessions: every phase goes on from its checkpoint in runs/demo16 (full.pt every
# 100 steps; not in git, so a new machine starts the phase again from runs/demo15's export).
# The lever runs/demo15 left untried: far longer training on the 34 varied training photos.
set -e
cd "$(dirname "$0")/../.."
A="--out runs/demo16 --data-offset 28000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 3000 --full-lr 2e-4 --interp-steps-per-stage 120 --interp-penalty 3.5 --finetune-steps 200 --finetune-lr 5e-5"
P=.venv/bin/python
$P -m iared_edge.demo.train $A --phase full --init-backbone runs/demo15/iared_digits_tiny.safetensors --init-interpreters runs/demo15/iared_digits_tiny.safetensors
$P -m iared_edge.demo.train $A --phase finetune
$P -m iared_edge.demo.train $A --phase export --export-to runs/demo16/iared_digits_tiny.safetensors
$P benchmarks/demo_operating_points.py demo runs/demo16/iared_digits_tiny.safetensors \
    --images 1500 --ratios 0.45 --val-seed 4 > runs/demo16/op_points.md 2>&1
echo DONE
