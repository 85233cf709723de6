#!/bin/bash
# runs/demo24: runs/demo22 (shipped) continued as runs/demo22 continued runs/demo20 (averaged
# weights, --ema-decay 0.998, bf16, lr 2e-4 cosine, its interpreters kept), but with the training
# photos drawn by how badly runs/demo22 reads them (--photo-weights: photo_weights.json, written by
# benchmarks/demo_photo_weights.py, half uniform, half in proportion to each photo's loss): 1,300
# steps at 224 px on images no run has drawn (--data-offset 43000), a 200-step fine-tune (same
# weights), export and the ship decision. Resumable (full.pt every 100 steps).
set -e
cd "$(dirname "$0")/../.."
A="--out runs/demo24 --data-offset 43000 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 1300 --full-lr 2e-4 --interp-steps-per-stage 120 --interp-penalty 3.5 --finetune-steps 200 --finetune-lr 5e-5 --stem-blocks 4 --ema-decay 0.998 --amp bf16 --photo-weights runs/demo24/photo_weights.json"
P=.venv/bin/python
# photo_weights.json: .venv/bin/python benchmarks/demo_photo_weights.py runs/demo22/iared_digits_tiny.safetensors --out runs/demo24/photo_weights.json
$P -m iared_edge.demo.train $A --phase full --init-backbone runs/demo22/iared_digits_tiny.safetensors --init-interpreters runs/demo22/iared_digits_tiny.safetensors
$P -m iared_edge.demo.train $A --phase finetune
$P -m iared_edge.demo.train $A --phase export --export-to runs/demo24/iared_digits_tiny.safetensors
$P benchmarks/demo_operating_points.py demo runs/demo24/iared_digits_tiny.safetensors \
    --images 1500 --ratios 0.45 --val-seed 11 > runs/demo24/op_points.md 2>&1
echo DONE
