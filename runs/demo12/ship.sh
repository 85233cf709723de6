#!/bin/bash
# Only if RULE.md's decision ships a candidate: bash runs/demo12/ship.sh runs/demo12{,r}/iared_digits_tiny.safetensors
# Puts it in place as the bundled demo model and re-measures everything docs/demo.md reports.
set -e
cd /work/main
cp "$1" iared_edge/assets/demo/iared_digits_tiny.safetensors
.venv/bin/iared-edge eval --model demo --data data/digits --out docs/demo_eval > runs/demo12/eval.log 2>&1
echo EVALDONE
.venv/bin/python benchmarks/demo_error_analysis.py demo > runs/demo12/errors.md 2>&1
.venv/bin/python benchmarks/bench_demo.py --images 48 --repeats 7 > runs/demo12/bench_demo.txt 2>&1
make demo > runs/demo12/make_demo.log 2>&1
.venv/bin/python benchmarks/demo_frames.py
.venv/bin/python -m pytest -q tests/test_demo.py > runs/demo12/test_demo.log 2>&1 || echo "TEST FAILED"
echo SHIPDONE
