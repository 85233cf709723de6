#!/bin/bash
# Resumable: every phase goes on from its checkpoint in runs/demo13 (and runs/demo13r).
set -e
cd "$(dirname "$0")/../.."
A="--data-offset 22000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 1200 --full-lr 2e-4 --interp-steps-per-stage 120 --finetune-lr 5e-5"
P=.venv/bin/python
$P -m iared_edge.demo.train --out runs/demo13 $A --finetune-steps 200 --interp-penalty 4 --phase full --init-backbone runs/demo12/iared_digits_tiny.safetensors --init-interpreters demo
$P -m iared_edge.demo.train --out runs/demo13 $A --finetune-steps 200 --interp-penalty 4 --phase finetune
$P -m iared_edge.demo.train --out runs/demo13 $A --finetune-steps 200 --interp-penalty 4 --phase export --export-to runs/demo13/iared_digits_tiny.safetensors
mkdir -p runs/demo13r && { [ -f runs/demo13r/full.pt ] || cp runs/demo13/full.pt runs/demo13r/; }
$P -m iared_edge.demo.train --out runs/demo13r $A --finetune-steps 400 --interp-penalty 3.5 --phase interpreters
$P -m iared_edge.demo.train --out runs/demo13r $A --finetune-steps 400 --interp-penalty 3.5 --phase finetune
$P -m iared_edge.demo.train --out runs/demo13r $A --finetune-steps 400 --interp-penalty 3.5 --phase export --export-to runs/demo13r/iared_digits_tiny.safetensors
$P benchmarks/demo_operating_points.py demo runs/demo13/iared_digits_tiny.safetensors \
    runs/demo13r/iared_digits_tiny.safetensors --images 1500 --ratios 0.45 > runs/demo13/op_points.md 2>&1
echo DONE
