"""The bundled demo model on held-out demo-task images: timm's plain forward against IA-RED²
(policy "threshold": each image keeps its own number of tokens), side by side in one run.

The timing is `iared-edge bench`'s (`iared_edge.bench.compare_speed`): for each batch size, every
repeat times the plain backbone (model.vit, timm's own forward) and the IA-RED² model on the same
batch back to back, so load changes hit both. Prints medians, the speed-up, the FLOPs bound it is
judged against (plain FLOPs / IA-RED² FLOPs from the real token counts, interpreters included) and
their level, plus top-1 of both on the images used (this script knows the labels).

    .venv/bin/python benchmarks/bench_demo.py [--images 64] [--repeats 5] [--threads 2]
"""

import argparse
import platform

import torch

from iared_edge import load_model, ops
from iared_edge.bench import compare_speed
from iared_edge.demo import DEMO_MODEL, DigitsInClutter
from iared_edge.preprocess import model_input


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEMO_MODEL)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    imgs, labels, _ = DigitsInClutter("test", seed=0).batch(range(args.images))
    x = torch.cat([model_input(model, im) for im in imgs])
    y = torch.from_numpy(labels)
    print(
        f"# demo model on {args.images} held-out test images; torch {torch.__version__}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}; ops backend {ops.backend('cpu')}; medians over "
        f"{args.repeats} passes of all images"
    )
    print(
        "| batch | timm ms / batch | IA-RED² ms / batch | speed-up | FLOPs bound | speed-up / bound | "
        "patch tokens kept per stage | top-1 timm / IA-RED² |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with torch.inference_mode():
        plain_acc = (model.vit(x).argmax(-1) == y).float().mean().item()
        ours_acc = (model(x, policy="threshold").logits.argmax(-1) == y).float().mean().item()
    for r in compare_speed(model, x, [int(b) for b in args.batches.split(",")], repeats=args.repeats):
        keep = " / ".join(f"{k:.2f}" for k in r["kept_per_stage"])
        print(
            f"| {r['batch']} | {r['plain_ms']:.2f} | {r['iared_ms']:.2f} | {r['speedup']:.2f}x | "
            f"{r['flops_bound']:.2f}x | {r['speedup'] / r['flops_bound']:.2f} | {keep} | "
            f"{plain_acc:.1%} / {ours_acc:.1%} |"
        )


if __name__ == "__main__":
    main()
