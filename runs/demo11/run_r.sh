#!/bin/bash
# The second candidate (RULE.md addendum): new REINFORCE interpreters on runs/demo11's backbone.
set -e
cd /work/main
while ! grep -q DONE runs/demo11/log.txt; do sleep 20; done
mkdir -p runs/demo11r && cp runs/demo11/full.pt runs/demo11r/
A="--out runs/demo11r --data-offset 16000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 1200 --full-lr 2e-4 --interp-steps-per-stage 120 --interp-penalty 4 --finetune-steps 200 --finetune-lr 5e-5"
.venv/bin/python -m iared_edge.demo.train $A --phase interpreters
.venv/bin/python -m iared_edge.demo.train $A --phase finetune
.venv/bin/python -m iared_edge.demo.train $A --phase export --export-to runs/demo11r/iared_digits_tiny.safetensors
echo DONE
