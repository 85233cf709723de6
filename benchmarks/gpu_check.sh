#!/bin/bash
# The device check, prepared for a session that is lent a GPU (one `run` call, about 6-9 min on
# the H200 machine: its own python3 with torch, timm, pytest, hypothesis, onnxruntime, OpenCV):
#   1. build the extension for this GPU against that torch (in place: nothing is installed);
#   2. the whole test suite there, so the GPU tests that skip everywhere else run (CUDA ops
#      against the CPU ones, the Runtime's pinned memory / stream / CUDA graphs, TensorRT if any);
#   3. bench_model on the GPU (DeiT-S packed vs timm, batch 1 and 8, float32), and `iared-edge
#      bench` of the demo model in float32 and float16 (batch 1, 8, 32), for the record.
# Everything lands under $OUT (the device tool brings it back):
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=600)
set -o pipefail
OUT=${OUT:-out/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
{ nvidia-smi; $PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"; } \
    > "$OUT/machine.txt" 2>&1
cap=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || { echo "no GPU seen by torch"; exit 1; }
export TORCH_CUDA_ARCH_LIST=$cap MAX_JOBS=${MAX_JOBS:-16} CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
time $PY setup.py -q build_ext --inplace > "$OUT/build.txt" 2>&1 || { tail -40 "$OUT/build.txt"; exit 1; }
$PY -c "from iared_edge import ops, _build_info; print(_build_info.BUILT, '| ops:', ops.backend('cuda'))" | tee -a "$OUT/machine.txt"
timeout 330 $PY -m pytest -q -x -p no:cacheprovider tests -rs 2>&1 | tee "$OUT/pytest.txt" | tail -15
timeout 120 $PY benchmarks/bench_model.py --device cuda --repeats 21 2>&1 | tee "$OUT/bench_model_cuda.txt"
for p in fp32 fp16; do
    timeout 60 $PY -m iared_edge bench --device cuda --precision $p --batch 1,8,32 --count 64 --repeats 21 \
        --json "$OUT/bench_demo_cuda_$p.json" 2>&1 | tee "$OUT/bench_demo_cuda_$p.txt"
done
