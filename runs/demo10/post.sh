#!/bin/bash
# After training: the weight-average candidate, then the ship decision's comparison (RULE.md).
cd /work/main
while ! grep -q DONE runs/demo10/log.txt; do sleep 20; done
.venv/bin/python benchmarks/demo_weight_average.py runs/demo9/iared_digits_tiny.safetensors \
    runs/demo10/iared_digits_tiny.safetensors --out runs/demo10/soup.safetensors > runs/demo10/soup.log 2>&1
echo SOUPDONE >> runs/demo10/post.log
.venv/bin/python benchmarks/demo_operating_points.py demo runs/demo10/iared_digits_tiny.safetensors \
    runs/demo10/soup.safetensors --images 1500 --ratios 0.45 > runs/demo10/op_points.md 2>&1
echo OPDONE >> runs/demo10/post.log
