#!/bin/bash
# Resumable: every phase goes on from its checkpoint in runs/demo12 (and runs/demo12r).
set -e
cd /work/main
A="--data-offset 19000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 1200 --full-lr 2e-4 --interp-steps-per-stage 120 --finetune-steps 200 --finetune-lr 5e-5"
.venv/bin/python -m iared_edge.demo.train --out runs/demo12 $A --interp-penalty 4 --phase full --init-backbone runs/demo11/iared_digits_tiny.safetensors --init-interpreters demo
.venv/bin/python -m iared_edge.demo.train --out runs/demo12 $A --interp-penalty 4 --phase finetune
.venv/bin/python -m iared_edge.demo.train --out runs/demo12 $A --interp-penalty 4 --phase export --export-to runs/demo12/iared_digits_tiny.safetensors
mkdir -p runs/demo12r && { [ -f runs/demo12r/full.pt ] || cp runs/demo12/full.pt runs/demo12r/; }
.venv/bin/python -m iared_edge.demo.train --out runs/demo12r $A --interp-penalty 3 --phase interpreters
.venv/bin/python -m iared_edge.demo.train --out runs/demo12r $A --interp-penalty 3 --phase finetune
.venv/bin/python -m iared_edge.demo.train --out runs/demo12r $A --interp-penalty 3 --phase export --export-to runs/demo12r/iared_digits_tiny.safetensors
.venv/bin/python benchmarks/demo_operating_points.py demo runs/demo12/iared_digits_tiny.safetensors \
    runs/demo12r/iared_digits_tiny.safetensors --images 1500 --ratios 0.45 > runs/demo12/op_points.md 2>&1
echo DONE
