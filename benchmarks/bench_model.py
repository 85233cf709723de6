"""DeiT-S packed inference at policy "level" against timm's own DeiT-S, side by side in one run.

Prints, per batch size and keep level, the median latencies, the speedup over timm and the exact
FLOPs-ratio bound (timm FLOPs / ours, counted with the real token counts, attention's quadratic
term and the interpreters included), and speedup / bound. Runs with the compiled ops and with the
pure-PyTorch reference ops to show the extension's end-to-end effect, and the effective
GFLOP/s of both (where it falls with fewer tokens, the CPU's GEMMs are less efficient on fewer rows).

"timm at these counts" is the floor a token-dropping model can reach with torch's own kernels:
timm's blocks run densely on exactly our kept-token counts per stage (the tokens are just cut, no
scoring, no compaction). speedup / bound is judged against the FLOPs bound, as the issue asks;
ours / floor tells how much of the gap to it is our code and how much the CPU's GEMMs.

    .venv/bin/python benchmarks/bench_model.py [--repeats 15] [--threads 2] [--device cuda]

On a GPU (`--device cuda`, float32) every timed forward ends with a device synchronise.
"""

import argparse
import platform
import statistics

import torch

from iared_edge import IARedViT, ops
from iared_edge.bench import timed_ms


def timm_at_counts(model, x, counts):
    """timm's forward with each stage's tokens simply cut to our counts (the first patch tokens):
    the same blocks and GEMM shapes as ours, with nothing spent on choosing or moving tokens."""
    P = model.num_prefix
    t = model._embed(x)
    for s, n in enumerate(counts):
        t = t[:, : P + n]
        for blk in model.stage_blocks(s):
            t = blk(t)
    return model._head(t[:, :P])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--levels", default="1.0,0.7,0.5")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = IARedViT.from_timm(args.model).eval().to(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{args.threads} threads, {platform.processor() or platform.machine()}"
    )
    print(
        f"# {args.model}, torch {torch.__version__}, {where}, "
        f"median of {args.repeats}; ops backend {ops.backend(device.type)}"
    )
    print(
        "| batch | keep level | kept/stage | timm ms | ours ms (_C) | ours ms (torch ops) | timm at these counts ms | speedup (_C) | FLOPs bound | speedup / bound | ours / floor | GFLOP/s timm / ours |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    full_flops = model.flops().item()
    levels = [float(r) for r in args.levels.split(",")]
    for B in [int(b) for b in args.batches.split(",")]:
        x = torch.randn(B, 3, 224, 224, device=device)
        with torch.inference_mode():  # the counts the floor runs on, and the FLOPs bound
            outs = {level: model(x, policy="level", level=level) for level in levels}
        runs = {"timm": lambda: model.vit(x)}
        for level in levels:
            runs[("ours", level)] = lambda level=level: model(x, policy="level", level=level)
            runs[("ref", level)] = lambda level=level: model(x, policy="level", level=level)
            counts = outs[level].kept_counts[0].tolist()
            runs[("floor", level)] = lambda c=counts: timm_at_counts(model, x, c)
        times = {k: [] for k in runs}
        with torch.inference_mode():
            for fn in runs.values():  # warm-up
                fn()
            for _ in range(args.repeats):  # interleaved, so drift in machine load hits all alike
                for k, fn in runs.items():
                    ops.use_reference(k[0] == "ref" if isinstance(k, tuple) else False)
                    times[k].append(timed_ms(fn, sync))
            ops.use_reference(False)
            t = statistics.median(times["timm"])
            for level in levels:
                out = outs[level]
                bound = full_flops / out.flops[0].item()
                o, r = statistics.median(times[("ours", level)]), statistics.median(times[("ref", level)])
                f = statistics.median(times[("floor", level)])
                counts = "/".join(str(c) for c in out.kept_counts[0].tolist())
                print(
                    f"| {B} | {level} | {counts} | {t:.1f} | {o:.1f} | {r:.1f} | {f:.1f} | {t / o:.2f}x | {bound:.2f}x | "
                    f"{t / o / bound:.2f} | {o / f:.2f} | {B * full_flops / t / 1e6:.0f} / {out.flops.sum().item() / o / 1e6:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
