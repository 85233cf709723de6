"""Where a demo model's errors are: top-1 per photo, and with one split's digits drawn onto another
split's photos (so writers and scenes can be told apart), policy "all".

    .venv/bin/python benchmarks/demo_error_analysis.py [MODEL] [--images 400] [--grid errors.jpg]
        [--by-image] [--faint-grid faint_errors.jpg]

Rows: test/test, val/val, test digits on val photos, val digits on test photos, and train digits
on train photos shown as they are (not re-coloured: how well the model fits its own scenes).
Images from generator seed 1. Prints a markdown table. `--grid` also writes the first 48
misclassified test / test images, cropped around the digit, labelled true / predicted / confidence:
whether the errors are illegible digits or legible ones the model misreads (`--faint-grid`: the
same for those in the faintest third of ink contrast, below). `--by-image` also
prints test / test accuracy by thirds of four measures of each image: the digit's height (its
box), the ink's contrast (mean difference between the ink and the ground around it, 0-255),
the ground's busyness under the digit (standard deviation of the non-ink pixels in its box), and
the photo crop's side as a share of the photo's shorter side (how far the scene is zoomed in). The
ink mask is the same image drawn on black (clutter 0: same digit, same place). `--against OTHER`
also reads the test / test images with another model and compares the two image by image (paired
difference, 95% interval, McNemar's exact test), on all of them and on the faintest third of ink.
"""
import argparse
from collections import defaultdict

import cv2
import numpy as np
import torch

from iared_edge.checkpoint import resolve_model
from iared_edge.demo.digits import DigitsInClutter
from iared_edge.demo.train import to_input
from iared_edge.train.loop import paired_comparison


def image_measures(gen, imgs, boxes):
    """{measure: [n] values} for images 0..n-1 of `gen`, drawn as `imgs` with ink boxes `boxes`
    (see the module docstring)."""
    height, contrast, busy, share = [], [], [], []
    for i, (img, (x0, y0, x1, y1)) in enumerate(zip(imgs, boxes)):
        share.append(gen.crop_of(i)[1])
        ink = gen.sample(i, clutter=0.0)[0].max(2) > 60
        grey = img.astype(np.float32).mean(2)
        near = cv2.dilate(ink.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~ink
        ground = np.zeros_like(ink)
        ground[y0:y1, x0:x1] = True
        ground &= ~ink
        height.append(y1 - y0)
        contrast.append(abs(grey[ink].mean() - grey[near].mean()) if ink.any() and near.any() else 0.0)
        busy.append(grey[ground].std() if ground.any() else 0.0)
    return {"digit height (px)": np.array(height), "ink contrast": np.array(contrast),
            "ground busyness under the digit": np.array(busy),
            "photo crop (% of its shorter side; small: zoomed in)": 100 * np.array(share)}


def by_thirds(correct, measures):
    """Markdown rows: accuracy on each third of the images by each measure."""
    out = []
    for name, v in measures.items():
        cuts = np.quantile(v, [1 / 3, 2 / 3])
        part = np.digitize(v, cuts)
        cells = [f"{correct[part == k].mean():.1%} ({v[part == k].min():.0f}-{v[part == k].max():.0f})"
                 for k in range(3)]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


@torch.no_grad()
def row(model, gen, imgs, labels, boxes, bs=100, grids=()):
    """(top-1, per-photo top-1, per-image correctness) on images 0..n-1 of `gen`, drawn as `imgs`.
    `grids`: (path, mask) pairs; each writes the misread images among those `mask` selects (None: all)."""
    n = len(imgs)
    prob = torch.cat([model(to_input(imgs[i:i + bs]), policy="all").logits.softmax(-1)
                      for i in range(0, n, bs)])
    pred = prob.argmax(-1).numpy()
    per = defaultdict(list)
    for i, ok in enumerate(pred == labels):
        per[gen.background_of(i)].append(ok)
    photos = ", ".join(f"{k} {np.mean(v):.0%}" for k, v in sorted(per.items()))
    conf = prob.max(-1).values.numpy()
    for path, mask in grids:
        sel = np.ones(n, bool) if mask is None else mask
        write_grid(path, imgs[sel], labels[sel], boxes[sel], pred[sel], conf[sel])
    return f"{(pred == labels).mean():.1%}", photos, pred == labels


def write_grid(path, imgs, labels, boxes, pred, conf, n=48, cols=8, tile=128):
    tiles = []
    for i in np.flatnonzero(pred != labels)[:n]:
        x0, y0, x1, y1 = boxes[i]
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, 0.8 * max(x1 - x0, y1 - y0)
        crop = imgs[i][int(max(0, cy - r)):int(cy + r), int(max(0, cx - r)):int(cx + r), ::-1]  # RGB -> BGR
        t = cv2.copyMakeBorder(cv2.resize(np.ascontiguousarray(crop), (tile, tile)), 18, 2, 1, 1,
                               cv2.BORDER_CONSTANT, value=(255, 255, 255))
        cv2.putText(t, f"true {labels[i]} read {pred[i]} {conf[i]:.2f}", (3, 13), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, (0, 0, 200), 1, cv2.LINE_AA)
        tiles.append(t)
    if not tiles:
        return
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % cols)
    cv2.imwrite(path, np.vstack([np.hstack(tiles[k:k + cols]) for k in range(0, len(tiles), cols)]),
                [cv2.IMWRITE_JPEG_QUALITY, 80])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="demo")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grid", default=None, help="write the misread test / test digits to this image")
    ap.add_argument("--faint-grid", default=None, help="write the misread test / test digits in the faintest "
                    "third of ink contrast to this image")
    ap.add_argument("--by-image", action="store_true", help="also test / test accuracy by digit height, "
                    "ink contrast, the ground's busyness and the photo crop's zoom (thirds)")
    ap.add_argument("--against", default=None, help="another model: test / test compared image by image")
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
        first = name == "test / test"
        imgs, labels, boxes = g.batch(range(args.images))
        grids = []
        if first and (args.by_image or args.faint_grid or args.against):
            measures = image_measures(g, imgs, boxes)
            ink = measures["ink contrast"]
            faint = ink < np.quantile(ink, 1 / 3)
            grids = [(args.faint_grid, faint)] if args.faint_grid else []
        if first and args.grid:
            grids.append((args.grid, None))
        acc, photos, correct = row(model, g, imgs, labels, boxes, grids=grids)
        print(f"| {name} | {acc} | {photos} |", flush=True)
        if first and args.by_image:
            thirds = by_thirds(correct, measures)
        if first and args.against:
            other = resolve_model(args.against).float().eval()
            other_correct = row(other, g, imgs, labels, boxes)[2]
            paired = [(part, paired_comparison(correct[m], other_correct[m]))
                      for part, m in [("all", np.ones(len(imgs), bool)), ("faintest third of ink", faint)]]
    if args.against:
        print(f"\n# test / test, {args.model} (A) against {args.against} (B), image by image")
        print("| images | A | B | A - B [95% interval] | right by A only / B only | McNemar p |")
        print("| --- | --- | --- | --- | --- | --- |")
        for part, c in paired:
            print(f"| {part} ({c['images']}) | {c['accuracy_a']:.1%} | {c['accuracy_b']:.1%} | "
                  f"{100 * c['difference']:+.1f} points [{100 * c['ci95_low']:+.1f}, {100 * c['ci95_high']:+.1f}] | "
                  f"{c['only_a_right']} / {c['only_b_right']} | {c['mcnemar_p']:.2g} |")
    if args.by_image:
        print("\n# test / test by thirds of each measure (range in brackets)")
        print("| measure | lowest third | middle third | highest third |")
        print("| --- | --- | --- | --- |")
        print("\n".join(thirds))


if __name__ == "__main__":
    main()
