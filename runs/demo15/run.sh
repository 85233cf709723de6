#!/bin/bash
# Resumable: every phase goes on from its checkpoint in runs/demo15.
# runs/demo14's export continued on 34 training photos (15 CC0 / public-domain scikit-image
# photos added to OpenCV's 19), its interpreters kept, then a fine-tune under them.
set -e
cd "$(dirname "$0")/../.."
A="--out runs/demo15 --data-offset 27000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 700 --full-lr 2e-4 --interp-steps-per-stage 120 --interp-penalty 3.5 --finetune-steps 150 --finetune-lr 5e-5"
P=.venv/bin/python
$P -m iared_edge.demo.train $A --phase full --init-backbone runs/demo14/iared_digits_tiny.safetensors --init-interpreters runs/demo14/iared_digits_tiny.safetensors
$P -m iared_edge.demo.train $A --phase finetune
$P -m iared_edge.demo.train $A --phase export --export-to runs/demo15/iared_digits_tiny.safetensors
$P benchmarks/demo_operating_points.py demo runs/demo15/iared_digits_tiny.safetensors \
    --images 1500 --ratios 0.45 --val-seed 3 > runs/demo15/op_points.md 2>&1
echo DONE
