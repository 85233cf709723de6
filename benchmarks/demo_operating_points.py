"""Demo models side by side at several operating points: policy "all", "threshold" (the model's
own thresholds) and a few keep levels (policy "ratio" at `model.stage_ratios(level)`: the level at
every stage, or the model's keep_profile scaled to the same mean keep), on the same fixed
validation and test images. Compares two trainings at equal keep, which the thresholds alone
cannot (each keeps its own share).

    .venv/bin/python benchmarks/demo_operating_points.py MODEL.safetensors [MODEL ...] \\
        [--images 500] [--ratios 0.6 0.45 0.3]

Test images come from generator seed 1 (the REINFORCE report's), validation from seed 0
(`--val-seed`: other validation images, e.g. to decide on images no earlier decision saw).
Prints one markdown row per model and split: top-1 (with the exact count of correct images for
"all" and "threshold") and, for "threshold", the share of patch tokens kept after each stage and
their mean; the header gives each level's mean share kept over the stages.
"""
import argparse

import torch

from iared_edge.checkpoint import resolve_model
from iared_edge.demo.train import fixed_set
from iared_edge.train import summarize


@torch.no_grad()
def run(model, x, y, bs=50, **policy):
    preds, keep = [], []
    for i in range(0, len(x), bs):
        out = model(x[i:i + bs], **policy)
        preds.append(out.logits.argmax(-1))
        keep.append(out.keep_ratio.float())
    return summarize(torch.cat(preds), y, torch.cat(keep))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", help="saved .safetensors files (or demo)")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--ratios", type=float, nargs="*", default=[0.6, 0.45, 0.3])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--val-seed", type=int, default=0,
                    help="generator seed of the validation images (0: the images training monitors)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    splits = {"val": fixed_set("val", args.images, 224, args.val_seed), "test": fixed_set("test", args.images, 224, 1)}
    for i, path in enumerate(args.models):
        model = resolve_model(path).float().eval()
        S = model.num_stages
        if i == 0:
            means = [sum(r ** (s + 1) for s in range(S)) / S for r in args.ratios]
            print(f"# {args.images} images per split (validation seed {args.val_seed}, test seed 1); keep level rho (mean share kept over the stages)")
            print("| model | split | all | threshold (kept after stage 1 / 2 / 3) | "
                  + " | ".join(f"level {r} ({m:.2f})" for r, m in zip(args.ratios, means)) + " |")
            print("| --- | --- | --- | --- | " + " | ".join("---" for _ in args.ratios) + " |")
        print(f"# {path}: keep_profile {model.keep_profile}", flush=True)
        for name, (x, y) in splits.items():
            full = run(model, x, y, policy="all")
            thr = run(model, x, y, policy="threshold")
            kept = " / ".join(f"{thr[f'keep{k + 1}']:.2f}" for k in range(S))
            # exact counts beside the rounded percentages: ship rules compare them (">=")
            n = len(y)
            hits = lambda r: round(r["accuracy"] * n)
            mean_kept = sum(thr[f"keep{k + 1}"] for k in range(S)) / S
            cells = [f"{full['accuracy']:.1%} [{hits(full)}/{n}]",
                     f"{thr['accuracy']:.1%} [{hits(thr)}/{n}] ({kept}; mean {mean_kept:.3f})"]
            cells += [f"{run(model, x, y, policy='ratio', ratio=model.stage_ratios(r))['accuracy']:.1%}"
                      for r in args.ratios]
            print(f"| {path} | {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
