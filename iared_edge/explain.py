"""Heatmaps that explain a prediction, and how well they point at the object.

Methods (each: model, images [B, 3, H, W] -> [B, gh, gw] on the patch grid, float, >= 0):
  interpreter  the IA-RED² interpreters' keep probabilities (free: computed by the forward anyway)
  attention    raw class-token attention of one block, mean over heads (last block by default)
  rollout      attention rollout (Abnar & Zuidema 2020): per block 0.5 A + 0.5 I, multiplied through
  gradcam      Grad-CAM (the `grad-cam` package) on the last block's norm1 tokens, pooled to the grid

Metrics against a ground-truth box (pixels of the model input):
  pointing     the heatmap's maximum patch overlaps the box
  energy       share of the heatmap's mass on the box (patches weighted by their overlap)
  deletion     AUC of the true class's probability as the most salient patches are blurred away
               (lower is better)
  insertion    AUC as they are put back into a blurred image (higher is better)
"""

from __future__ import annotations

import json
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

METHODS = ("interpreter", "attention", "rollout", "gradcam")


def _require_images(model, images: torch.Tensor) -> None:
    want = tuple(model.input_size)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(
            f"images must be a [B, {want[0]}, {want[1]}, {want[2]}] tensor, got "
            f"{getattr(images, 'shape', type(images).__name__)}"
        )


@torch.no_grad()
def interpreter_heatmap(model, images: torch.Tensor) -> torch.Tensor:
    _require_images(model, images)
    return model(images, policy="threshold").heatmap


@torch.no_grad()
def attention_maps(model, images: torch.Tensor) -> List[torch.Tensor]:
    """Every block's attention [B, heads, L, L] of the plain backbone (all tokens)."""
    vit = model.vit
    t = model._embed(images)
    maps = []
    for blk in vit.blocks:
        a = blk.attn
        B, L, _ = t.shape
        qkv = a.qkv(blk.norm1(t)).reshape(B, L, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k = a.q_norm(qkv[0]), a.k_norm(qkv[1])
        maps.append(((q * a.scale) @ k.transpose(-2, -1)).softmax(-1))
        t = blk(t)
    return maps


def attention_heatmap(
    model, images: torch.Tensor, block: int = -1, maps: Optional[List[torch.Tensor]] = None
) -> torch.Tensor:
    """`maps`: `attention_maps(model, images)` when the caller has them already (one pass for
    this and `rollout_heatmap`)."""
    _require_images(model, images)
    att = (attention_maps(model, images) if maps is None else maps)[block]
    P = model.num_prefix
    return att[:, :, 0, P:].mean(1).view(-1, *model.grid_size)


def rollout_heatmap(model, images: torch.Tensor, maps: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
    """`maps`: as for `attention_heatmap`."""
    _require_images(model, images)
    maps = attention_maps(model, images) if maps is None else maps
    L = maps[0].shape[-1]
    eye = torch.eye(L, dtype=maps[0].dtype)
    joint = eye.expand(images.shape[0], L, L)
    for att in maps:
        a = 0.5 * att.mean(1) + 0.5 * eye
        joint = (a / a.sum(-1, keepdim=True)) @ joint
    return joint[:, 0, model.num_prefix :].reshape(-1, *model.grid_size)


def gradcam_heatmap(model, images: torch.Tensor, targets: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Grad-CAM on the last block (tokens reshaped to the grid), for `targets` (default: the
    predicted class), average-pooled back to the patch grid."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    _require_images(model, images)
    vit, P, (gh, gw) = model.vit, model.num_prefix, model.grid_size

    def reshape(t):
        return t[:, P:].reshape(t.shape[0], gh, gw, t.shape[-1]).permute(0, 3, 1, 2)

    tg = None if targets is None else [ClassifierOutputTarget(int(c)) for c in targets]
    was_training = vit.training
    vit.eval()
    with (
        torch.enable_grad(),
        GradCAM(model=vit, target_layers=[vit.blocks[-1].norm1], reshape_transform=reshape) as cam,
    ):
        maps = cam(input_tensor=images, targets=tg)  # [B, H, W] in [0, 1]
    vit.train(was_training)
    return F.adaptive_avg_pool2d(torch.from_numpy(maps)[:, None].float(), (gh, gw))[:, 0]


HEATMAPS: Dict[str, Callable] = {
    "interpreter": interpreter_heatmap,
    "attention": attention_heatmap,
    "rollout": rollout_heatmap,
    "gradcam": gradcam_heatmap,
}


def box_overlap(box: Sequence[float], grid: Tuple[int, int], patch: Tuple[int, int]) -> torch.Tensor:
    """[gh, gw] fraction of each patch covered by box (x0, y0, x1, y1)."""
    gh, gw = grid
    ph, pw = patch
    x0, y0, x1, y1 = [float(v) for v in box]
    ys = torch.arange(gh, dtype=torch.float64) * ph
    xs = torch.arange(gw, dtype=torch.float64) * pw
    oy = ((ys + ph).clamp(max=y1) - ys.clamp(min=y0)).clamp(min=0) / ph
    ox = ((xs + pw).clamp(max=x1) - xs.clamp(min=x0)).clamp(min=0) / pw
    return oy[:, None] * ox[None, :]


def pointing_hit(heatmap: torch.Tensor, overlap: torch.Tensor) -> bool:
    return bool(overlap.flatten()[int(heatmap.flatten().argmax())] > 0)


def energy_in_box(heatmap: torch.Tensor, overlap: torch.Tensor) -> float:
    h = heatmap.double().clamp(min=0)
    total = h.sum()
    return float((h * overlap).sum() / total) if total > 0 else 0.0


def _blur(images: torch.Tensor, sigma: float = 8.0) -> torch.Tensor:
    r = int(3 * sigma)
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=images.dtype) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    C = images.shape[1]
    x = F.conv2d(F.pad(images, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


@torch.no_grad()
def deletion_insertion(
    model, image: torch.Tensor, heatmap: torch.Tensor, label: int, steps: int = 14
) -> Tuple[np.ndarray, np.ndarray]:
    """Curves (steps + 1 points each) of the true class's probability (plain backbone) as patches
    go in heatmap order: deletion blurs the most salient first; insertion un-blurs them first."""
    gh, gw = model.grid_size
    ph, pw = model.vit.patch_embed.patch_size
    order = torch.argsort(heatmap.flatten(), descending=True, stable=True)
    n = gh * gw
    counts = [round(n * i / steps) for i in range(steps + 1)]
    blurred = _blur(image[None])[0]
    masks = torch.zeros(steps + 1, n)
    for i, c in enumerate(counts):
        masks[i, order[:c]] = 1.0
    m = masks.view(-1, 1, gh, gw).repeat_interleave(ph, 2).repeat_interleave(pw, 3)
    deleted = image * (1 - m) + blurred * m
    inserted = blurred * (1 - m) + image * m
    probs = model(torch.cat([deleted, inserted]), policy="all").logits.softmax(-1)[:, label]
    return probs[: steps + 1].numpy(), probs[steps + 1 :].numpy()


def auc(curve: np.ndarray) -> float:
    """Area under a curve sampled evenly on [0, 1] (trapezoids)."""
    c = np.asarray(curve, dtype=np.float64)
    return float(((c[1:] + c[:-1]) / 2).mean())


def map_box(
    box: Sequence[float], image_hw: Tuple[int, int], size: Tuple[int, int], crop_pct: float
) -> Tuple[float, ...]:
    """A box in image pixels -> model-input pixels under preprocess.to_tensor's resize + centre crop."""
    h, w = image_hw
    scale = max(size) / crop_pct / min(h, w)
    nh, nw = max(size[0], round(h * scale)), max(size[1], round(w * scale))
    top, left = (nh - size[0]) // 2, (nw - size[1]) // 2
    sy, sx = nh / h, nw / w
    x0, y0, x1, y1 = box
    return (x0 * sx - left, y0 * sy - top, x1 * sx - left, y1 * sy - top)


def evaluate_boxes(
    model,
    root: str,
    split: str = "test",
    limit: Optional[int] = None,
    methods: Sequence[str] = METHODS,
    policies: Sequence[str] = ("all", "threshold"),
    curve_images: int = 100,
    batch: int = 32,
    progress: bool = True,
) -> Dict:
    """Accuracy and keep per policy, and per heatmap method the pointing game, energy in the box
    and deletion/insertion AUC (on `curve_images` images evenly spaced over the split's sorted
    files, so every class folder is among them), for a dataset written by
    `iared-edge make-digits` (ImageFolder + boxes.json)."""
    from .demo.digits import read_boxes
    from .preprocess import load_rgb, model_input, model_normalization

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (None: every image), got {limit}")
    if curve_images < 0:
        raise ValueError(f"curve_images must be >= 0 (0: no deletion/insertion curves), got {curve_images}")
    unknown = set(methods) - set(HEATMAPS)
    if unknown:
        raise ValueError(f"unknown heatmap method(s) {sorted(unknown)}; known: {list(HEATMAPS)}")
    boxes = read_boxes(root)
    items = sorted(k for k in boxes if k.startswith(split + "/"))
    if not items:
        raise ValueError(f"{root}: no images of split {split!r} in boxes.json")
    if limit is not None:
        items = items[:limit]
    names = model.class_names()
    _, _, crop_pct = model_normalization(model)
    size = tuple(model.input_size[1:])
    model.eval()
    res: Dict = {
        "images": len(items),
        "split": split,
        "policies": {p: {"correct": 0, "keep": np.zeros(model.num_stages), "flops": 0.0} for p in policies},
        "methods": {m: {"pointing": [], "energy": 0.0, "deletion": [], "insertion": []} for m in methods},
    }
    full_flops = model.flops()[0].item()
    it = range(0, len(items), batch)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="eval", dynamic_ncols=True)
    # evenly spaced, not the first N: the files sort by class, so the first 100 were all one digit
    curve_at = (
        set(np.linspace(0, len(items) - 1, min(curve_images, len(items))).round().astype(int).tolist())
        if curve_images
        else set()
    )
    done = 0
    for start in it:
        chunk = items[start : start + batch]
        xs, ys, bxs = [], [], []
        for rel in chunk:
            rgb = load_rgb(os.path.join(root, rel))
            label = rel.split("/")[1]
            if label not in names:
                raise ValueError(f"{rel}: class folder {label!r} is not one of the model's labels {names}")
            xs.append(model_input(model, rgb)[0])
            ys.append(names.index(label))
            bxs.append(map_box(boxes[rel], rgb.shape[:2], size, crop_pct))
        x, y = torch.stack(xs), torch.tensor(ys)
        with torch.no_grad():
            for p in policies:
                out = model(x, policy=p)
                r = res["policies"][p]
                r["correct"] += int((out.logits.argmax(-1) == y).sum())
                r["keep"] += out.keep_ratio.sum(0).numpy()
                r["flops"] += float(out.flops.sum())
        patch = tuple(model.vit.patch_embed.patch_size)
        att = attention_maps(model, x) if {"attention", "rollout"} & set(methods) else None  # one pass for both
        for m in methods:
            if m == "gradcam":
                maps = gradcam_heatmap(model, x, y.tolist())
            elif m in ("attention", "rollout"):
                maps = HEATMAPS[m](model, x, maps=att)
            else:
                maps = HEATMAPS[m](model, x)
            r = res["methods"][m]
            for i in range(len(chunk)):
                ov = box_overlap(bxs[i], model.grid_size, patch)
                r["pointing"].append(bool(pointing_hit(maps[i], ov)))
                r["energy"] += energy_in_box(maps[i], ov)
                if done + i in curve_at:
                    d, ins = deletion_insertion(model, x[i], maps[i], int(y[i]))
                    r["deletion"].append(d)
                    r["insertion"].append(ins)
        done += len(chunk)
    n = len(items)
    summary = {
        "images": n,
        "split": split,
        "files": items,
        "curve_files": [items[k] for k in sorted(curve_at)],
        "full_flops": full_flops,
        "policies": {},
        "methods": {},
    }
    for p, r in res["policies"].items():
        keep = r["keep"] / n
        summary["policies"][p] = {
            "accuracy": r["correct"] / n,
            "keep_per_stage": keep.tolist(),
            "keep_mean": float(np.dot(keep, model.groups) / sum(model.groups)),
            "flops_ratio": full_flops / (r["flops"] / n),
        }
    for m, r in res["methods"].items():
        curves = bool(r["deletion"])  # None where no curve was asked for (curve_images=0)
        summary["methods"][m] = {
            "pointing": sum(r["pointing"]) / n,
            "energy": r["energy"] / n,
            "deletion_auc": float(np.mean([auc(c) for c in r["deletion"]])) if curves else None,
            "insertion_auc": float(np.mean([auc(c) for c in r["insertion"]])) if curves else None,
            "curve_images": len(r["deletion"]),
            "deletion_curve": np.mean(r["deletion"], 0).tolist() if curves else None,
            "insertion_curve": np.mean(r["insertion"], 0).tolist() if curves else None,
            # per image, in file order, for paired comparisons between methods
            "pointing_hits": r["pointing"],
            "deletion_aucs": [float(auc(c)) for c in r["deletion"]],
            "insertion_aucs": [float(auc(c)) for c in r["insertion"]],
        }
    return summary


def markdown_table(summary: Dict) -> str:
    lines = [
        f"{summary['images']} images of split `{summary['split']}`.",
        "",
        "| policy | top-1 | patch tokens kept per stage | mean kept (block-weighted) | FLOPs ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for p, r in summary["policies"].items():
        lines.append(
            f"| {p} | {r['accuracy']:.2%} | {' / '.join(f'{k:.2f}' for k in r['keep_per_stage'])} | "
            f"{r['keep_mean']:.2f} | {r['flops_ratio']:.2f}x |"
        )
    lines += [
        "",
        "| heatmap | pointing game | energy in box | deletion AUC (lower better) | insertion AUC (higher better) |",
        "| --- | --- | --- | --- | --- |",
    ]
    auc_cell = lambda v: "not measured" if v is None else f"{v:.3f}"
    for m, r in summary["methods"].items():
        lines.append(
            f"| {m} | {r['pointing']:.2%} | {r['energy']:.3f} | {auc_cell(r['deletion_auc'])} | "
            f"{auc_cell(r['insertion_auc'])} |"
        )
    return "\n".join(lines)


def plot_curves(summary: Dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in (
        (axes[0], "deletion_curve", "deletion (lower is better)"),
        (axes[1], "insertion_curve", "insertion (higher is better)"),
    ):
        for m, r in summary["methods"].items():
            c = r[key]
            ax.plot(np.linspace(0, 1, len(c)), c, label=f"{m} (AUC {r[key.split('_')[0] + '_auc']:.3f})")
        ax.set_xlabel("fraction of patches blurred / restored, most salient first")
        ax.set_ylabel("probability of the true class")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(summary: Dict, out_prefix: str) -> List[str]:
    """`out_prefix`.json, .md and .png (no .png without curves); returns the paths."""
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    with open(out_prefix + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    with open(out_prefix + ".md", "w") as f:
        f.write(markdown_table(summary) + "\n")
    if not any(r["curve_images"] for r in summary["methods"].values()):
        return [out_prefix + ".json", out_prefix + ".md"]  # no curves, no figure
    plot_curves(summary, out_prefix + ".png")
    return [out_prefix + ".json", out_prefix + ".md", out_prefix + ".png"]
