"""Where a demo model's errors are: top-1 per photo, and with one split's digits drawn onto another
split's photos (so writers and scenes can be told apart), policy "all".

    .venv/bin/python benchmarks/demo_error_analysis.py [MODEL] [--images 400]

Rows: test/test, val/val, test digits on val photos, val digits on test photos, and train digits
on train photos shown as they are (not re-coloured: how well the model fits its own scenes).
Images from generator seed 1. Prints a markdown table.
"""
import argparse
from collections import defaultdict

import numpy as np
import torch

from iared_edge.checkpoint import resolve_model
from iared_edge.demo.digits import DigitsInClutter
from iared_edge.demo.train import to_input


@torch.no_grad()
def row(model, gen, n, bs=100):
    imgs, labels, _ = gen.batch(range(n))
    pred = torch.cat([model(to_input(imgs[i:i + bs]), policy="all").logits.argmax(-1)
                      for i in range(0, n, bs)]).numpy()
    per = defaultdict(list)
    for i, ok in enumerate(pred == labels):
        per[gen.background_of(i)].append(ok)
    photos = ", ".join(f"{k} {np.mean(v):.0%}" for k, v in sorted(per.items()))
    return f"{(pred == labels).mean():.1%}", photos


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="demo")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = resolve_model(args.model).float().eval()

    def gen(digits, photos, augment=None):
        g = DigitsInClutter(digits, seed=1, augment=augment)
        if photos != digits:
            p = DigitsInClutter(photos, seed=1)
            g.backgrounds, g.background_names = p.backgrounds, p.background_names
        return g

    print(f"# {args.model}: policy all, {args.images} images per row, generator seed 1")
    print("| digits / photos | top-1 | per photo |")
    print("| --- | --- | --- |")
    for name, g in [("test / test", gen("test", "test")), ("val / val", gen("val", "val")),
                    ("test digits / val photos", gen("test", "val")),
                    ("val digits / test photos", gen("val", "test")),
                    ("train / train photos, not re-coloured", gen("train", "train", augment=False))]:
        acc, photos = row(model, g, args.images)
        print(f"| {name} | {acc} | {photos} |", flush=True)


if __name__ == "__main__":
    main()
