#!/bin/bash
# runs/demo13r only (runs/demo13 is done and shipped); judged against the shipped model (demo = runs/demo13)
set -e
cd /work/main
A="--data-offset 22000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 1200 --full-lr 2e-4 --interp-steps-per-stage 120 --finetune-lr 5e-5"
P=.venv/bin/python
$P -m iared_edge.demo.train --out runs/demo13r $A --finetune-steps 400 --interp-penalty 3.5 --phase interpreters
$P -m iared_edge.demo.train --out runs/demo13r $A --finetune-steps 400 --interp-penalty 3.5 --phase finetune
$P -m iared_edge.demo.train --out runs/demo13r $A --finetune-steps 400 --interp-penalty 3.5 --phase export --export-to runs/demo13r/iared_digits_tiny.safetensors
$P benchmarks/demo_operating_points.py demo runs/demo13r/iared_digits_tiny.safetensors --images 1500 --ratios 0.45 > runs/demo13r/op_points.md 2>&1
echo DONE
