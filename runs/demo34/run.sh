#!/bin/bash
# runs/demo34 (a probe): runs/demo32 (shipped) continued as runs/demo32 continued runs/demo24
# (averaged weights, no stochastic depth, no label smoothing, its interpreters kept, the same photo
# weights, cosine peak 2e-4), with one change: --ink-weight 1 (the stem also learns where the pen
# strokes are: a 1x1 read-out of its 1/8-resolution features predicts each cell's share of ink,
# binary cross-entropy added to the loss; the read-out is not exported). 500 steps at 224 px on
# images no run has drawn (--data-offset 79400, batches of 64: 79400-79899). float32 (--amp none):
# this machine has no bf16 instructions. No fine-tune (a probe; see RULE.md): export, then the
# readings RULE.md names. Resumable (full.pt every 100 steps).
set -e
cd "$(dirname "$0")/../.."
A="--out runs/demo34 --data-offset 79400 --small-steps 3000 --small-black 0 --small-fade 1 --lr 4e-4 --warmup 50 --full-steps 500 --full-lr 2e-4 --interp-steps-per-stage 120 --interp-penalty 3.5 --finetune-steps 0 --stem-blocks 4 --ema-decay 0.998 --amp none --photo-weights runs/demo24/photo_weights.json --drop-path 0 --label-smoothing 0 --ink-weight 1"
P=.venv/bin/python
$P -m iared_edge.demo.train $A --phase full --init-backbone runs/demo32/iared_digits_tiny.safetensors --init-interpreters runs/demo32/iared_digits_tiny.safetensors
$P -m iared_edge.demo.train $A --phase export --export-to runs/demo34/ink_probe.safetensors
$P benchmarks/demo_operating_points.py demo runs/demo34/ink_probe.safetensors \
    --images 1500 --ratios 0.45 --val-seed 18 > runs/demo34/op_points.md 2>&1
$P benchmarks/demo_error_analysis.py runs/demo34/ink_probe.safetensors --images 1000 --by-image \
    --against demo > runs/demo34/errors_by_image.md 2>&1
echo DONE
