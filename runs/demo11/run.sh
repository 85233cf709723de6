#!/bin/bash
set -e
cd /work/main
A="--out runs/demo11 --data-offset 16000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 1200 --full-lr 2e-4 --interp-steps-per-stage 120 --interp-penalty 4 --finetune-steps 200 --finetune-lr 5e-5"
.venv/bin/python -m iared_edge.demo.train $A --phase full --init-backbone demo --init-interpreters demo
.venv/bin/python -m iared_edge.demo.train $A --phase finetune
.venv/bin/python -m iared_edge.demo.train $A --phase export --export-to runs/demo11/iared_digits_tiny.safetensors
echo DONE
