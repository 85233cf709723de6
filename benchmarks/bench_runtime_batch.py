"""Several cameras through one Runtime: `rt.batch(frames)` (one forward; with policy "threshold"
each frame keeps its own number of tokens, packed together) against one `rt(frame)` call per frame,
side by side in one run.

Every repeat times both on the same frames back to back, so load changes hit both. The frames are
held-out demo-task images (digits in real photos, one per "camera"). Prints medians per set of
frames, the speed-up of the batch, and the FLOPs ratio beside it: the FLOPs are the same either
way (the same tokens are kept, tested in tests/test_runtime.py), so the FLOPs ratio is 1.00x and
any speed-up is per-call overhead saved and larger matrix products using the cores better.

    .venv/bin/python benchmarks/bench_runtime_batch.py [--cameras 2,4,8] [--repeats 15] [--threads 2]
"""

import argparse
import platform
import statistics

import numpy as np
import torch

from iared_edge import Runtime, ops
from iared_edge.bench import timed_ms
from iared_edge.demo import DigitsInClutter


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--cameras", default="2,4,8")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--policy", default="threshold", choices=["all", "threshold"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    counts = [int(c) for c in args.cameras.split(",")]
    imgs, _, _ = DigitsInClutter("test", seed=0).batch(range(max(counts)))
    frames = [np.ascontiguousarray(im[..., ::-1]) for im in imgs]  # BGR, as a camera gives them
    print(
        f"# Runtime({args.model!r}, policy={args.policy!r}); torch {torch.__version__}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}; ops backend {ops.backend('cpu')}; medians of "
        f"{args.repeats} repeats, alternating"
    )
    print("| cameras | per-frame calls ms | rt.batch ms | speed-up | FLOPs ratio | mean keep |")
    print("| --- | --- | --- | --- | --- | --- |")
    with Runtime(args.model, policy=args.policy) as rt:
        for n in counts:
            fs = frames[:n]
            for _ in range(2):  # warm-up
                rt.batch(fs)
                [rt(f) for f in fs]
            one, many = [], []
            for _ in range(args.repeats):
                one.append(timed_ms(lambda: [rt(f) for f in fs]))
                many.append(timed_ms(lambda: rt.batch(fs)))
            keep = float(np.mean([r.keep_ratio for r in rt.batch(fs)]))
            a, b = statistics.median(one), statistics.median(many)
            print(f"| {n} | {a:.1f} | {b:.1f} | {a / b:.2f}x | 1.00x | {keep:.0%} |")


if __name__ == "__main__":
    main()
