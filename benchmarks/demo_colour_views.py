"""Does a demo model misread the same test images under every re-colouring it was trained on?

    .venv/bin/python benchmarks/demo_colour_views.py [MODEL] [--images 1000]

The training photos are re-coloured (channel permutations, inversion, ...: `recolour` in
iared_edge/demo/digits.py), so a model should read an image the same whatever its channel order or
polarity. This reads the test / test images (generator seed 1, the images of
benchmarks/demo_error_analysis.py) in 12 views, the 6 channel orders each as is and inverted
(255 - x; the ink's polarity flips with the ground's, as the generator draws both), policy "all",
and prints top-1 per view and for the softmax averaged over views. If averaging lifted top-1, the
errors would be view-specific noise a teacher could average away; if not, they are the model's.
A diagnosis: it chose nothing.
"""
import argparse
import itertools

import numpy as np
import torch

from iared_edge.checkpoint import resolve_model
from iared_edge.demo.digits import DigitsInClutter
from iared_edge.demo.train import to_input


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="demo")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = resolve_model(args.model).float().eval()
    imgs, labels, _ = DigitsInClutter("test", seed=1).batch(range(args.images))

    probs = {}
    with torch.no_grad():
        for order in itertools.permutations(range(3)):
            for inverted in (False, True):
                def view(x):
                    x = x[..., list(order)]
                    return np.ascontiguousarray(255 - x if inverted else x)
                probs[(order, inverted)] = torch.cat([
                    model(to_input(view(imgs[i:i + 100])), policy="all").logits.softmax(-1)
                    for i in range(0, len(imgs), 100)]).numpy()

    def top1(keys):
        return (np.mean([probs[k] for k in keys], 0).argmax(1) == labels).mean()

    print(f"# {args.model}: test / test, {args.images} images, generator seed 1, policy all")
    print("| view | top-1 |")
    print("| --- | --- |")
    for (order, inverted) in probs:
        print(f"| channels {order}{', inverted' if inverted else ''} | {top1([(order, inverted)]):.1%} |")
    identity = ((0, 1, 2), False)
    orders = [k for k in probs if not k[1]]
    print(f"| mean of the 6 channel orders | {top1(orders):.1%} |")
    print(f"| mean of as is and inverted | {top1([identity, ((0, 1, 2), True)]):.1%} |")
    print(f"| mean of all 12 views | {top1(list(probs)):.1%} |")
    wrong = np.stack([probs[k].argmax(1) != labels for k in probs])
    print(f"\nImages misread as is: {wrong[0].sum()}; of them misread in every view: "
          f"{(wrong.all(0)).sum()}, in at least half: {(wrong.mean(0) >= 0.5)[wrong[0]].sum()}.")


if __name__ == "__main__":
    main()
