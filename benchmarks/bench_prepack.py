"""Weight traffic on a CPU: what each way of holding the linears' weights gives, side by side.

1. The linears alone: 24 distinct fc1-sized weights (DeiT-S, 1536 x 384, float32: 57 MB, more than
   the caches hold) at 3, 21 and 197 rows: torch's default GEMM, oneDNN-prepacked weights
   (iared_edge.prepack), bf16 weights, and dynamic int8 (torch.ao, per-tensor).
2. The whole DeiT-S forward at batch 1 and 8, keep levels 1.0 / 0.5 / 0.1: the default GEMM against
   prepacked linears (as the Runtime uses them on a CPU: up to 256 rows), and the largest logit
   difference between the two.

    .venv/bin/python benchmarks/bench_prepack.py [--repeats 11] [--threads 2]
"""

import argparse
import copy
import platform
import statistics
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from iared_edge import IARedViT
from iared_edge.bench import timed_ms
from iared_edge.prepack import prepack_linears


def median_ms(fn, repeats):
    fn()
    return statistics.median(timed_ms(fn) for _ in range(repeats))


def linears(repeats):
    torch.manual_seed(0)
    mods = [nn.Linear(384, 1536) for _ in range(24)]
    packed = copy.deepcopy(mods)
    for m in packed:
        prepack_linears(m, max_rows=1 << 20)
    bf16 = [copy.deepcopy(m).bfloat16() for m in mods]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = [
            torch.ao.quantization.quantize_dynamic(nn.Sequential(copy.deepcopy(m)), {nn.Linear}, dtype=torch.qint8)
            for m in mods
        ]
    mb = sum(m.weight.numel() * 4 for m in mods) / 1e6
    print(f"\n# the linears alone: 24 x Linear(384, 1536), {mb:.0f} MB float32; ms for all 24")
    print("| rows | default GEMM | prepacked | bf16 weights | dynamic int8 | prepacked speed-up |")
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        for rows in (3, 21, 197):
            x = torch.randn(rows, 384)
            xb = x.bfloat16()
            t = {
                "plain": median_ms(lambda: [F.linear(x, m.weight, m.bias) for m in mods], repeats),
                "packed": median_ms(lambda: [m(x) for m in packed], repeats),
                "bf16": median_ms(lambda: [m(xb) for m in bf16], repeats),
                "int8": median_ms(lambda: [m(x) for m in int8], repeats),
            }
            print(
                f"| {rows} | {t['plain']:.2f} | {t['packed']:.2f} | {t['bf16']:.2f} | {t['int8']:.2f} "
                f"| {t['plain'] / t['packed']:.2f}x |",
                flush=True,
            )


def whole_model(repeats):
    torch.manual_seed(0)
    model = IARedViT.from_timm("deit_small_patch16_224").eval()
    packed = copy.deepcopy(model)
    prepack_linears(packed.vit)
    print("\n# DeiT-S forward (random weights), policy level; ms; prepacked linears up to 256 rows")
    print("| batch | keep level | default GEMM | prepacked | speed-up | max logit difference |")
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        for B in (1, 8):
            x = torch.randn(B, 3, 224, 224)
            for level in (1.0, 0.5, 0.1):
                a = model(x, policy="level", level=level).logits
                b = packed(x, policy="level", level=level).logits
                times = {"plain": [], "packed": []}
                for _ in range(repeats):
                    times["plain"].append(timed_ms(lambda: model(x, policy="level", level=level)))
                    times["packed"].append(timed_ms(lambda: packed(x, policy="level", level=level)))
                p, q = statistics.median(times["plain"]), statistics.median(times["packed"])
                print(
                    f"| {B} | {level} | {p:.1f} | {q:.1f} | {p / q:.2f}x | {(a - b).abs().max().item():.1e} |",
                    flush=True,
                )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}")
    linears(args.repeats)
    whole_model(args.repeats)


if __name__ == "__main__":
    main()
