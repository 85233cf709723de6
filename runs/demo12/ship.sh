#!/bin/bash
# Only if a RULE.md decision ships a candidate: bash runs/demo12/ship.sh runs/demoN/iared_digits_tiny.safetensors
# Puts it in place as the bundled demo model and re-measures everything docs/demo.md reports;
# logs go beside the model.
set -e
cd "$(dirname "$0")/../.."   # the repository root; the model path is relative to it
D=$(dirname "$1")
cp "$1" iared_edge/assets/demo/iared_digits_tiny.safetensors
.venv/bin/iared-edge eval --model demo --data data/digits --out docs/demo_eval > "$D/eval.log" 2>&1
echo EVALDONE
.venv/bin/python benchmarks/demo_error_analysis.py demo > "$D/errors.md" 2>&1
.venv/bin/python benchmarks/bench_demo.py --images 48 --repeats 7 > "$D/bench_demo.txt" 2>&1
make demo > "$D/make_demo.log" 2>&1
.venv/bin/python benchmarks/demo_frames.py
.venv/bin/python -m pytest -q tests/test_demo.py > "$D/test_demo.log" 2>&1 || echo "TEST FAILED"
echo SHIPDONE
