"""How the interpreter heatmap is made from the per-stage keep probabilities, compared on demo
VALIDATION images (the choice is made here, not on test): the survival probability per patch as
it is, and smoothed over the patch grid with 3x3 kernels, normalised at the border or zero-padded.

    .venv/bin/python benchmarks/demo_heatmap_variants.py [MODEL] [--images 500] [--curves 100]

Pointing game and energy in the box on `--images` validation images (generator seed 0, indices
0..); deletion / insertion AUC (plain backbone, 15 points) on `--curves` further ones (indices
1000..). Zero padding lowers the border patches: a pull towards the image centre, which suits
this task (digits lie inside the image) but not a camera, so the model does not use it; it is
listed to show how much of a gain such a prior would be. Prints a markdown table.

`--heads` adds rows built from each interpreter's per-head probabilities (the keep probability is
their mean): each head alone, all heads agreeing (their product), the least sure head (their
minimum) and their geometric mean, each as a survival product over the stages, smoothed as the
model smooths; and, for reference on the same images, raw attention and rollout. They answer
whether another reading of the same scores would beat the baselines.

`--every-token` adds rows read from the forward that drops nothing (policy "all"): there every
interpreter scores every patch, so stages 2 and 3 also score the patches the threshold forward
drops. Not free at inference (it is the plain backbone's cost), but the same interpreters: their
survival product, each stage alone, and the last two stages' product, smoothed as the model
smooths; with raw attention and rollout on the same images.
"""
import argparse

import numpy as np
import torch
import torch.nn.functional as F

from iared_edge.checkpoint import resolve_model
from iared_edge.demo.digits import DigitsInClutter
from iared_edge.demo.train import to_input
from iared_edge.explain import attention_heatmap, attention_maps, auc, rollout_heatmap, box_overlap, deletion_insertion, energy_in_box, pointing_hit
from iared_edge.model import heatmap_from_scores, survival_probability


def smooth(h: torch.Tensor, k1, normalised: bool) -> torch.Tensor:
    k = torch.outer(torch.tensor(k1, dtype=h.dtype), torch.tensor(k1, dtype=h.dtype))[None, None]
    p = k.shape[-1] // 2
    out = F.conv2d(h[:, None], k, padding=p)[:, 0]
    den = F.conv2d(torch.ones(1, 1, *h.shape[1:]), k, padding=p)[:, 0] if normalised else k.sum()
    return out / den


def odds(p: torch.Tensor) -> torch.Tensor:
    """P / (1 - P): a softmax over patches of logit(P), as attention weights are a softmax of
    logits, so the mass goes to the patches the interpreters are surest of."""
    return p / (1 - p).clamp(min=1e-6)


def head_probs(model, x):
    """Every stage's per-head keep probabilities [B, S, H, N] over the patch tokens in the threshold
    forward (masked execution: the same decisions as packed), 0 where a patch was dropped before
    that stage."""
    logits = []
    hooks = [it.register_forward_hook(lambda mod, inp, _: logits.append(mod.head_logits(inp[0])))
             for it in model.interpreters]
    try:
        out = model(x, policy="threshold", execution="masked")
    finally:
        for h in hooks:
            h.remove()
    probs = torch.sigmoid(torch.stack(logits, 1)[..., model.num_prefix:])
    scored = torch.cat([torch.ones_like(out.keep_masks[:, :1]), out.keep_masks[:, :-1]], 1)
    return probs * scored[:, :, None]


def head_variants(model, x):
    """Each reading goes through the model's own recipe (survival product, smoothing)."""
    hp, g = head_probs(model, x), model.grid_size
    yield "mean over heads (the model's heatmap, masked execution)", heatmap_from_scores(hp.mean(2), g)
    for h in range(hp.shape[2]):
        yield f"head {h} alone", heatmap_from_scores(hp[:, :, h], g)
    yield "all heads agree (product over heads)", heatmap_from_scores(hp.prod(2), g)
    yield "least sure head (minimum over heads)", heatmap_from_scores(hp.amin(2), g)
    yield "geometric mean over heads", heatmap_from_scores(hp.prod(2).pow(1.0 / hp.shape[2]), g)


def every_token_variants(model, x):
    """Readings of the interpreters' scores when no patch is dropped (policy "all")."""
    sc, g = model(x, policy="all").scores, model.grid_size
    yield "every token kept: survival product over the stages", heatmap_from_scores(sc, g)
    for s in range(sc.shape[1]):
        yield f"every token kept: stage {s + 1} alone", heatmap_from_scores(sc[:, s:s + 1], g)
    yield "every token kept: stages 2-3 product", heatmap_from_scores(sc[:, 1:], g)


def variants(model, x, heads: bool = False, every_token: bool = False):
    out = model(x, policy="threshold")
    raw = survival_probability(out.scores).view(-1, *model.grid_size)
    yield "survival probability, unsmoothed (before)", raw
    yield "binomial 3x3, normalised (the model's heatmap)", out.heatmap
    yield "box 3x3, normalised", smooth(raw, (1.0, 1.0, 1.0), True)
    yield "binomial 5x5, normalised", smooth(raw, (1.0, 4.0, 6.0, 4.0, 1.0), True)
    yield "binomial 3x3, zero-padded (centre prior)", smooth(raw, (1.0, 2.0, 1.0), False)
    yield "odds of survival, unsmoothed", odds(raw)
    yield "odds of survival, binomial 3x3, normalised", smooth(odds(raw), (1.0, 2.0, 1.0), True)
    yield "odds of the smoothed survival", odds(out.heatmap)
    if heads:
        yield from head_variants(model, x)
    if every_token:
        yield from every_token_variants(model, x)
    if heads or every_token:
        att = attention_maps(model, x)  # one backbone pass for both baselines
        yield "(baseline) raw class-token attention, last block", attention_heatmap(model, x, maps=att)
        yield "(baseline) attention rollout", rollout_heatmap(model, x, maps=att)


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default="demo")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--curves", type=int, default=100)
    ap.add_argument("--heads", action="store_true", help="also the per-head readings of the scores")
    ap.add_argument("--every-token", action="store_true", help='also the readings of the forward that drops nothing (policy "all")')
    args = ap.parse_args()
    if args.images < 1 or args.curves < 1:
        ap.error(f"--images and --curves must be >= 1, got {args.images} and {args.curves}")
    torch.manual_seed(0)
    model = resolve_model(args.model).float().eval()
    gen = DigitsInClutter("val", seed=0)
    imgs, _, boxes = gen.batch(range(args.images))
    x = to_input(imgs)
    stats = {}
    for i in range(0, args.images, 50):
        for name, maps in variants(model, x[i:i + 50], args.heads, args.every_token):
            r = stats.setdefault(name, {"pointing": [], "energy": [], "deletion": [], "insertion": []})
            for j, h in enumerate(maps):
                ov = box_overlap(boxes[i + j], model.grid_size, model.vit.patch_embed.patch_size)
                r["pointing"].append(pointing_hit(h, ov))
                r["energy"].append(energy_in_box(h, ov))
    cimgs, clabels, _ = gen.batch(range(1000, 1000 + args.curves))
    cx = to_input(cimgs)
    for name, maps in variants(model, cx, args.heads, args.every_token):
        for j, h in enumerate(maps):
            d, ins = deletion_insertion(model, cx[j], h, int(clabels[j]))
            stats[name]["deletion"].append(auc(d))
            stats[name]["insertion"].append(auc(ins))
    print(f"# {args.model}: {args.images} validation images (pointing, energy), {args.curves} more (curves)")
    print("| heatmap | pointing game | energy in box | deletion AUC (lower better) | insertion AUC (higher better) |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in stats.items():
        print(f"| {name} | {np.mean(r['pointing']):.1%} | {np.mean(r['energy']):.3f} | "
              f"{np.mean(r['deletion']):.3f} | {np.mean(r['insertion']):.3f} |")


if __name__ == "__main__":
    main()
