"""onnxruntime (CPU) against the torch backend at each keep level, batch 1 and 8, side by side.

.venv/bin/python benchmarks/bench_onnx.py [--model deit_small_patch16_224] [--repeats 11]
"""

import argparse
import statistics
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch

from iared_edge import IARedViT
from iared_edge.bench import timing_session
from iared_edge.export import export_onnx


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--levels", default="1.0,0.8,0.6,0.4")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = IARedViT.from_timm(args.model).eval()
    tmp = tempfile.mkdtemp()
    print(
        f"# {args.model}, {args.threads} threads, onnxruntime {ort.__version__} (CPU), torch {torch.__version__}; "
        f"medians of {args.repeats}, interleaved"
    )
    print("| batch | keep level | torch ms | onnxruntime ms | onnxruntime speedup | max |Δlogits| |")
    print("|---|---|---|---|---|---|")
    for level in [float(v) for v in args.levels.split(",")]:
        path = f"{tmp}/k{level}.onnx"
        export_onnx(model, path, level)
        sess = timing_session(path, args.threads)
        for B in (1, 8):
            x = torch.randn(B, 3, 224, 224)
            run_t = lambda: model(x, policy="level", level=level)
            run_o = lambda: sess.run(None, {"images": x.numpy()})
            with torch.inference_mode():
                diff = np.abs(run_o()[0] - run_t().logits.numpy()).max()
                tt, to = [], []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    run_t()
                    tt.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    run_o()
                    to.append(time.perf_counter() - t0)
            a, b = statistics.median(tt) * 1e3, statistics.median(to) * 1e3
            print(f"| {B} | {level} | {a:.1f} | {b:.1f} | {a / b:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
