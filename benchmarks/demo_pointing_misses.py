"""Where the interpreter heatmap's pointing game misses, against attention rollout's, on a demo
model: are the misses on misread images, next to the box or far from it, on the border, and near
ties (the best patch in the box almost as hot as the peak)?

    .venv/bin/python benchmarks/demo_pointing_misses.py [MODEL] [--images 1000] [--split test]

Images from generator seed 1 (the test split's generator, not the `iared-edge eval` files), policy
"threshold". A diagnosis: it chooses nothing. Prints a few lines.
"""
import argparse

import numpy as np
import torch

from iared_edge.checkpoint import resolve_model
from iared_edge.demo.digits import DigitsInClutter
from iared_edge.demo.train import to_input
from iared_edge.explain import box_overlap, pointing_hit, rollout_heatmap


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default="demo")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--split", default="test")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    model = resolve_model(a.model).float().eval()
    gen = DigitsInClutter(a.split, seed=a.seed)
    patch, (gh, gw) = tuple(model.vit.patch_embed.patch_size), model.grid_size
    hit_i, hit_r, right, dist, border, ratio, box_kept = [], [], [], [], [], [], []
    for s in range(0, a.images, 100):
        imgs, labels, boxes = gen.batch(range(s, min(s + 100, a.images)))
        x = to_input(imgs)
        out = model(x, policy="threshold")
        roll = rollout_heatmap(model, x)
        for j in range(len(labels)):
            ov = box_overlap(boxes[j], (gh, gw), patch)  # to_input neither resizes nor crops
            heat = out.heatmap[j]
            hit_i.append(pointing_hit(heat, ov))
            hit_r.append(pointing_hit(roll[j], ov))
            right.append(int(out.logits[j].argmax()) == int(labels[j]))
            inside = ov > 0
            box_kept.append(float((out.keep_masks[j, -1].view(gh, gw) & inside).sum() / inside.sum()))
            if not hit_i[-1]:
                gy, gx = divmod(int(heat.flatten().argmax()), gw)
                ys, xs = torch.nonzero(inside, as_tuple=True)
                dist.append(int(torch.maximum((ys - gy).abs(), (xs - gx).abs()).min()))
                border.append(gy in (0, gh - 1) or gx in (0, gw - 1))
                ratio.append(float((heat * inside).max() / heat.max()))
    hi, hr, ok = np.array(hit_i), np.array(hit_r), np.array(right)
    n = len(hi)
    print(f"# {a.model}: {n} {a.split} images (generator seed {a.seed}), policy threshold; top-1 {ok.mean():.1%}")
    print(f"pointing: interpreter {hi.mean():.1%}, rollout {hr.mean():.1%}")
    print(f"interpreter misses: {(~hi).sum()} ({(~hi & ok).sum()} on images read right); rollout misses: "
          f"{(~hr).sum()} ({(~hr & ok).sum()} read right); both miss {(~hi & ~hr).sum()}")
    if dist:
        print("interpreter misses by distance to the box in patches (1 = touching):",
              {int(d): int(c) for d, c in zip(*np.unique(dist, return_counts=True))})
        print(f"  peak on the border: {np.mean(border):.0%}; best in-box patch / peak: median "
              f"{np.median(ratio):.2f}, 10-90% {np.percentile(ratio, 10):.2f}-{np.percentile(ratio, 90):.2f}")
    bk = np.array(box_kept)
    on_misses = f" (on interpreter misses {bk[~hi].mean():.2f})" if (~hi).any() else ""
    print(f"share of the box's patches kept through stage 3: {bk.mean():.2f}{on_misses}")


if __name__ == "__main__":
    main()
