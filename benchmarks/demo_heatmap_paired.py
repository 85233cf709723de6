"""Paired comparison of heatmap methods from one `iared-edge eval --out X` run (its X.json keeps
every image's pointing hit and deletion / insertion AUC, in the same image order for all methods).

For each method against the reference (default: the interpreter heatmap), per image differences,
their mean and a 95% bootstrap interval over images (seeded, resampling images, so both methods
stay paired), and for the pointing game the discordant images (hit by one method only). An
interval that excludes 0 is a difference this many images can tell; one that spans 0 is not.

    .venv/bin/iared-edge eval --model demo --data data/digits --methods interpreter,rollout,attention \\
        --curve-images 1000 --out runs/eval1000 --quiet
    .venv/bin/python benchmarks/demo_heatmap_paired.py runs/eval1000.json
"""
import argparse
import json

import numpy as np


def bootstrap_interval(diff: np.ndarray, resamples: int, seed: int):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(resamples, len(diff)))
    means = diff[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("report", help="the .json written by `iared-edge eval --out`")
    ap.add_argument("--reference", default="interpreter")
    ap.add_argument("--resamples", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with open(args.report) as f:
        summary = json.load(f)
    methods = summary["methods"]
    if args.reference not in methods:
        raise SystemExit(f"{args.report}: no method {args.reference!r}; it has {sorted(methods)}")
    ref = methods[args.reference]
    if "pointing_hits" not in ref:
        raise SystemExit(f"{args.report}: no per-image values (written before they were kept): run eval again")
    print(f"# {args.report}: {summary['images']} images of split `{summary['split']}`; reference "
          f"{args.reference}; differences are other minus reference, 95% bootstrap intervals "
          f"({args.resamples} resamples of images, seed {args.seed})")
    print()
    print("| method | pointing: hit by it only / by the reference only | pointing difference | "
          "deletion AUC difference (negative: it is better) | insertion AUC difference (positive: it is better) | curve images |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in methods.items():
        if name == args.reference:
            continue
        a, b = np.array(r["pointing_hits"], float), np.array(ref["pointing_hits"], float)
        only_it, only_ref = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
        lo, hi = bootstrap_interval(a - b, args.resamples, args.seed)
        cells = [f"{only_it} / {only_ref}", f"{(a - b).mean():+.1%} [{lo:+.1%}, {hi:+.1%}]"]
        n = min(len(r["deletion_aucs"]), len(ref["deletion_aucs"]))
        for key in ("deletion_aucs", "insertion_aucs"):
            if n == 0:
                cells.append("not measured")
                continue
            d = np.array(r[key][:n]) - np.array(ref[key][:n])
            lo, hi = bootstrap_interval(d, args.resamples, args.seed)
            cells.append(f"{d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]")
        print(f"| {name} | " + " | ".join(cells) + f" | {n} |")


if __name__ == "__main__":
    main()
