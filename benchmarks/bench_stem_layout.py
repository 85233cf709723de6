"""The demo model's convolutional stem on channels-last input (what ConvStem does on a CPU) against
the default NCHW layout, side by side in one run: the stem alone, the whole IA-RED² forward (policy
"threshold") and timm's plain forward, at batch 1 and 8. Same weights, same images; prints the
medians, the levels and the largest output difference.

    .venv/bin/python benchmarks/bench_stem_layout.py [--repeats 21] [--threads 2]
"""

import argparse
import platform
import statistics

import torch

from iared_edge import load_model
from iared_edge.bench import bench_images, timed_ms
from iared_edge.demo import model as demo_model


def logits(out):
    return out.logits if hasattr(out, "logits") else out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("demo").eval()
    x, _ = bench_images(model, 16)
    runs = {
        "stem": lambda c: model.vit.patch_embed(c),
        "IA-RED² forward": lambda c: model(c),
        "timm plain forward": lambda c: model.vit(c),
    }
    print(
        f"# demo model, torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}; "
        f"medians of {args.repeats}, NCHW and channels-last interleaved"
    )
    print("| batch | what | NCHW ms | channels-last ms | NCHW / channels-last | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    with torch.inference_mode():
        for bs in (1, 8):
            c = x[:bs]
            for name, fn in runs.items():
                outs, times = {}, {True: [], False: []}
                for layout in (True, False):  # warm-up, and the outputs to compare
                    demo_model.CHANNELS_LAST_ON_CPU = layout
                    fn(c)
                    outs[layout] = fn(c)
                for _ in range(args.repeats):
                    for layout in (True, False):
                        demo_model.CHANNELS_LAST_ON_CPU = layout
                        times[layout].append(timed_ms(lambda: fn(c)))
                demo_model.CHANNELS_LAST_ON_CPU = True
                a, b = statistics.median(times[False]), statistics.median(times[True])
                diff = (logits(outs[True]) - logits(outs[False])).abs().max().item()
                print(f"| {bs} | {name} | {a:.2f} | {b:.2f} | {a / b:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
