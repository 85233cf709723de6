"""DeiT-S packed inference at policy "ratio" against timm's own DeiT-S, side by side in one run.

Prints, per batch size and keep ratio, the median latencies, the speedup over timm and the exact
FLOPs-ratio bound (timm FLOPs / ours, counted with the real token counts, attention's quadratic
term and the interpreters included), and speedup / bound. Runs with the compiled ops and with the
pure-PyTorch reference ops to show the extension's end-to-end effect.

    .venv/bin/python benchmarks/bench_model.py [--repeats 15] [--threads 2]
"""
import argparse
import platform
import statistics
import time

import torch

from iared_edge import IARedViT, ops


def median_ms(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--ratios", default="1.0,0.7,0.5")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = IARedViT.from_timm(args.model).eval()
    print(f"# {args.model}, torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"median of {args.repeats}; ops backend {ops.backend('cpu')}")
    print("| batch | keep ρ | kept/stage | timm ms | ours ms (_C) | ours ms (torch ops) | speedup (_C) | FLOPs bound | speedup / bound |")
    print("|---|---|---|---|---|---|---|---|---|")
    full_flops = model.flops().item()
    for B in [int(b) for b in args.batches.split(",")]:
        x = torch.randn(B, 3, 224, 224)
        with torch.inference_mode():
            for rho in [float(r) for r in args.ratios.split(",")]:
                out = model(x, policy="ratio", ratio=rho)
                bound = full_flops / out.flops[0].item()
                # interleave the three so drift in machine load hits them alike
                runs = {"timm": lambda: model.vit(x), "ours": lambda: model(x, policy="ratio", ratio=rho)}
                res = {"timm": [], "ours": [], "ref": []}
                for _ in range(3):
                    res["timm"].append(median_ms(runs["timm"], args.repeats // 3 or 1))
                    ops.use_reference(False)
                    res["ours"].append(median_ms(runs["ours"], args.repeats // 3 or 1))
                    ops.use_reference(True)
                    res["ref"].append(median_ms(runs["ours"], args.repeats // 3 or 1))
                    ops.use_reference(False)
                t, o, r = (statistics.median(res[k]) for k in ("timm", "ours", "ref"))
                counts = "/".join(str(c) for c in out.kept_counts[0].tolist())
                print(f"| {B} | {rho} | {counts} | {t:.1f} | {o:.1f} | {r:.1f} | {t / o:.2f}x | {bound:.2f}x | {t / o / bound:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
