"""The demo model in float32 and in reduced precision (the Runtime's `precision=`), side by side in
one run: accuracy on held-out test images and latency of timm's plain forward and of IA-RED²
(policy "threshold") per weight dtype.

Accuracy: top-1 with every token and with "threshold", agreement of the top-1 with float32's,
mean share of patch tokens kept. Latency: for each batch size, every repeat times all the
variants on the same batch back to back (so load changes hit all of them); medians. Printed
beside the levels: the FLOPs bound of IA-RED² against the plain forward, and the bound of a
precision against float32 where the CPU's instructions fix one (AVX512-BF16's dot product does
two multiply-adds per float32 lane, so at most 2x; AMX has no such simple bound and is named).

    .venv/bin/python benchmarks/bench_precision.py [--images 1000] [--time-images 48] [--repeats 5]
        [--precisions fp32,bf16] [--threads 2]
"""

import argparse
import copy
import platform
import statistics

import torch

from iared_edge import load_model, ops
from iared_edge.bench import timed_ms
from iared_edge.demo import DEMO_MODEL, DigitsInClutter
from iared_edge.devices import inference_dtype
from iared_edge.preprocess import model_input


def instruction_bound(name: str) -> str:
    if name == "fp32":
        return "1x"
    if name == "bf16" and torch.cpu._is_amx_tile_supported():
        return "AMX (no simple bound)"
    if name == "bf16" and torch.cpu._is_avx512_bf16_supported():
        return "2x (AVX512-BF16)"
    return "none: emulated on this CPU"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEMO_MODEL)
    ap.add_argument("--images", type=int, default=1000, help="test images for accuracy")
    ap.add_argument("--time-images", type=int, default=48, help="of those, the ones timed")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--seed", type=int, default=1, help="test-split generator seed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_model(args.model).eval()
    names = [p.strip() for p in args.precisions.split(",")]
    if names[0] != "fp32":
        names.insert(0, "fp32")
    models = {n: copy.deepcopy(base).to(inference_dtype("cpu", n)) for n in names}
    imgs, labels, _ = DigitsInClutter("test", seed=args.seed).batch(range(args.images))
    x = torch.cat([model_input(base, im) for im in imgs])
    y = torch.from_numpy(labels)
    print(
        f"# {args.model} on {args.images} held-out test images (generator seed {args.seed}); torch "
        f"{torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()} "
        f"(capability {torch.backends.cpu.get_cpu_capability()}, AVX512-BF16 "
        f"{torch.cpu._is_avx512_bf16_supported()}, AMX {torch.cpu._is_amx_tile_supported()}); ops backend "
        f"{ops.backend('cpu')}"
    )
    print()
    print("| weights | top-1 all | top-1 threshold | top-1 agrees with fp32 (all / threshold) | mean keep |")
    print("| --- | --- | --- | --- | --- |")
    ref = {}
    with torch.inference_mode():
        for n, m in models.items():
            pa, pt, keep = [], [], []
            for i in range(0, len(x), 50):
                pa.append(m(x[i : i + 50], policy="all").logits.float().argmax(-1))
                o = m(x[i : i + 50], policy="threshold")
                pt.append(o.logits.float().argmax(-1))
                keep.append(o.keep_ratio.mean(1))
            pa, pt, keep = torch.cat(pa), torch.cat(pt), torch.cat(keep)
            ref.setdefault("all", pa)
            ref.setdefault("thr", pt)
            print(
                f"| {n} | {(pa == y).float().mean():.1%} | {(pt == y).float().mean():.1%} | "
                f"{(pa == ref['all']).float().mean():.1%} / {(pt == ref['thr']).float().mean():.1%} | "
                f"{keep.mean():.3f} |"
            )
    print()
    print(f"Latency, medians over {args.repeats} passes of {args.time_images} images (ms per batch):")
    print()
    print(
        "| batch | weights | timm ms | IA-RED² ms | IA-RED² speed-up over timm (same weights) | FLOPs bound | "
        "IA-RED² speed-up over fp32 IA-RED² | instruction bound |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    xt = x[: args.time_images]
    full_flops = base.flops()[0].item()
    with torch.inference_mode():
        bound = full_flops / base(xt, policy="threshold").flops.mean().item()
        for bs in [int(b) for b in args.batches.split(",")]:
            chunks = [xt[i : i + bs] for i in range(0, len(xt) - bs + 1, bs)]
            times = {n: ([], []) for n in names}
            for m in models.values():  # warm-up
                for c in chunks[:2]:
                    m.vit(c.to(next(m.parameters()).dtype))
                    m(c, policy="threshold")
            for _ in range(args.repeats):
                for c in chunks:
                    for n, m in models.items():
                        cd = c.to(next(m.parameters()).dtype)
                        times[n][0].append(timed_ms(lambda: m.vit(cd)))
                        times[n][1].append(timed_ms(lambda: m(c, policy="threshold")))
            ours32 = statistics.median(times["fp32"][1])
            for n in names:
                a, b = statistics.median(times[n][0]), statistics.median(times[n][1])
                print(
                    f"| {bs} | {n} | {a:.2f} | {b:.2f} | {a / b:.2f}x | {bound:.2f}x | {ours32 / b:.2f}x | "
                    f"{instruction_bound(n)} |"
                )


if __name__ == "__main__":
    main()
