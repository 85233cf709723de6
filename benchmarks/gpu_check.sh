#!/bin/bash
# The device check, for a session that is lent a GPU: one `run` call of at most 9 minutes on the
# device machine (its own python3 with torch, timm, pytest, hypothesis, onnxruntime, OpenCV; no
# TensorRT there, so TensorRT tests skip):
#   1. build the extension for this GPU against that torch, in place (nothing is installed), and
#      list the SASS and PTX it carries;
#   2. the GPU tests (marker gpu), then the rest of the suite, so nothing that skips elsewhere
#      is left unrun;
#   3. bench_model on the GPU (DeiT-S packed against timm, batch 1 and 8), `iared-edge bench` of
#      the demo model in fp32 and fp16, and a short latency-budget run on the bundled clip;
#   4. one JSON report of all of it: $OUT/gpu_check.json (benchmarks/gpu_report.py).
# Everything lands under $OUT (the device tool brings it back):
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=560)
set -o pipefail
OUT=${OUT:-out/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
T0=$(date +%s)
left() { echo $((520 - ($(date +%s) - T0))); }  # seconds left of the call's budget, with margin
{ nvidia-smi; $PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"; } \
    > "$OUT/machine.txt" 2>&1
cap=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || { echo "no GPU seen by torch"; exit 1; }
export TORCH_CUDA_ARCH_LIST="$cap+PTX" MAX_JOBS=${MAX_JOBS:-16} CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
{ time $PY setup.py -q build_ext --inplace; } > "$OUT/build.txt" 2>&1 || { tail -40 "$OUT/build.txt"; exit 1; }
$PY -c "from iared_edge import ops, _build_info; print(_build_info.BUILT, '| ops:', ops.backend('cuda'))" | tee -a "$OUT/machine.txt"
so=$(ls iared_edge/_C*.so)
{ cuobjdump --list-elf "$so"; cuobjdump --list-ptx "$so"; } > "$OUT/cuobjdump.txt" 2>&1 || true
timeout $(( $(left) / 3 )) $PY -m pytest -q -p no:cacheprovider tests -m gpu -rs 2>&1 | tee "$OUT/pytest_gpu.txt" | tail -15
timeout $(( $(left) / 2 )) $PY -m pytest -q -x -p no:cacheprovider tests -m "not gpu" 2>&1 | tee "$OUT/pytest_rest.txt" | tail -5
timeout 90 $PY benchmarks/bench_model.py --device cuda --repeats 21 2>&1 | tee "$OUT/bench_model_cuda.txt"
for p in fp32 fp16; do
    timeout 45 $PY -m iared_edge bench --device cuda --precision $p --batch 1,8,32 --count 64 --repeats 21 \
        --json "$OUT/bench_demo_cuda_$p.json" 2>&1 | tee "$OUT/bench_demo_cuda_$p.txt"
done
timeout $(( $(left) > 30 ? $(left) : 30 )) $PY benchmarks/gpu_report.py --out "$OUT" 2>&1 | tee "$OUT/report.txt"
