#!/bin/bash
# runs/demo14: runs/demo13r's export (backbone and its penalty-3.5 interpreters) continued for 600
# more steps at 224 px on images no earlier run drew, then a 200-step fine-tune under those
# interpreters. Resumable: each phase goes on from its checkpoint in runs/demo14. Rule: RULE.md.
set -e
cd "$(dirname "$0")/../.."
A="--out runs/demo14 --data-offset 25000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 600 --full-lr 2e-4 --interp-steps-per-stage 120 --interp-penalty 3.5 --finetune-steps 200 --finetune-lr 5e-5"
P=.venv/bin/python
$P -m iared_edge.demo.train $A --phase full --init-backbone runs/demo13r/iared_digits_tiny.safetensors --init-interpreters runs/demo13r/iared_digits_tiny.safetensors
$P -m iared_edge.demo.train $A --phase finetune
$P -m iared_edge.demo.train $A --phase export --export-to runs/demo14/iared_digits_tiny.safetensors
$P benchmarks/demo_operating_points.py demo runs/demo13r/iared_digits_tiny.safetensors runs/demo14/iared_digits_tiny.safetensors \
    --images 1500 --ratios 0.45 --val-seed 2 > runs/demo14/op_points.md 2>&1
echo DONE
