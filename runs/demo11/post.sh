#!/bin/bash
# After training: the ship decision's comparison (RULE.md), then the error analysis.
cd /work/main
while ! grep -q DONE runs/demo11/log_r.txt 2>/dev/null; do sleep 20; done
.venv/bin/python benchmarks/demo_operating_points.py demo runs/demo11/iared_digits_tiny.safetensors \
    runs/demo11r/iared_digits_tiny.safetensors --images 1500 --ratios 0.45 > runs/demo11/op_points.md 2>&1
echo OPDONE >> runs/demo11/post.log
