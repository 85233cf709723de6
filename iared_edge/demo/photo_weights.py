"""Per training photo, how badly a demo model reads it, and sampling weights for training that
draw the hard photos more often (`python -m iared_edge.demo.train --photo-weights FILE`).

    python -m iared_edge.demo.photo_weights [MODEL] --out weights.json [--per-photo 80] [--uniform 0.5]

Images: the train split as training draws it (re-coloured, full clutter), generator seed 1 (not
training's seed 0), the first `--per-photo` images of each photo, policy "all". A photo's weight is
`uniform / P + (1 - uniform) * loss / sum(loss)` (P photos, loss: its mean cross-entropy), so every
photo keeps at least `uniform / P` of the draws. Prints a markdown table; writes
{"model", "per_photo", "uniform", "loss", "error", "weights"}.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import resolve_model
from .digits import DigitsInClutter
from .train import to_input


@torch.no_grad()
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default="demo")
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-photo", type=int, default=80)
    ap.add_argument("--uniform", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if not 0.0 <= args.uniform <= 1.0:
        raise SystemExit(f"--uniform must be in [0, 1], got {args.uniform}")
    torch.set_num_threads(args.threads)
    model = resolve_model(args.model).float().eval()
    gen = DigitsInClutter("train", seed=1)
    chosen, i = defaultdict(list), 0
    while min((len(chosen[n]) for n in gen.background_names), default=0) < args.per_photo:
        name = gen.background_of(i)
        if len(chosen[name]) < args.per_photo:
            chosen[name].append(i)
        i += 1
    loss, error = {}, {}
    for name in gen.background_names:
        imgs, labels, _ = gen.batch(chosen[name])
        logits = torch.cat([model(to_input(imgs[k : k + 40]), policy="all").logits for k in range(0, len(imgs), 40)])
        y = torch.from_numpy(labels)
        loss[name] = float(F.cross_entropy(logits.float(), y))
        error[name] = float((logits.argmax(-1) != y).float().mean())
        print(f"{name}: loss {loss[name]:.3f} error {error[name]:.1%}", flush=True)
    total, p = sum(loss.values()), len(loss)
    weights = {n: args.uniform / p + (1 - args.uniform) * loss[n] / total for n in loss}
    print(f"\n# {args.model}: train photos as trained (re-coloured), {args.per_photo} images each, generator seed 1")
    print("| photo | loss | error | weight (x uniform) |\n| --- | --- | --- | --- |")
    for n in sorted(loss, key=loss.get, reverse=True):
        print(f"| {n} | {loss[n]:.3f} | {error[n]:.1%} | {weights[n] * p:.2f} |")
    print(f"| all | {np.mean(list(loss.values())):.3f} | {np.mean(list(error.values())):.1%} | 1 |")
    with open(args.out, "w") as f:
        json.dump(
            {
                "model": args.model,
                "per_photo": args.per_photo,
                "uniform": args.uniform,
                "loss": loss,
                "error": error,
                "weights": weights,
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
