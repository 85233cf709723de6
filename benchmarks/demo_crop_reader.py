"""How readable are the demo's test digits once they are found? A diagnosis of the 97% target.

    .venv/bin/python benchmarks/demo_crop_reader.py [--train-images 60000] [--steps 2500]
        [--out runs/crop_reader] [--against demo]

Trains a small CNN (about 0.3 M parameters) on the CPU to read digits from square crops around
their true ink box (given, not found: the box is known for every generated image), 48x48 pixels,
drawn from the training split exactly as the demo model's training draws them (training photos
re-coloured, training writers, runs/demo24's photo weights). It then reads the same crops of the
1,000 test images of `iared-edge eval` (`make-digits --test 1000`, seed 0) and of 1,000
validation images, and compares image by image with a demo model reading the whole images with
every token (policy "all"): which of the model's errors are digits a reader that is told where
the digit is reads right, and how both do on the faintest third of ink (contrast measured as in
demo_error_analysis.py, whose helpers it calls).

If this reader, trained for minutes, reads the test crops far above 97%, the digits are legible
and the 12 MB ViT's shortfall is in learning to find and read them in busy scenes; if it stays
near the ViT, the test split itself caps what a CPU-trained reader gets. Writes result.md (and a
cache of the drawn training crops and the reader's weights) under --out.
"""
import argparse
import os
import time
from multiprocessing import Pool

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from iared_edge.checkpoint import resolve_model
from iared_edge.demo.digits import DigitsInClutter
from iared_edge.demo.train import read_photo_weights
from iared_edge.train.loop import paired_comparison

PHOTO_WEIGHTS = "runs/demo24/photo_weights.json"
TRAIN_OFFSET = 20_000_000  # far above every index the demo runs drew (they reached about 5.1 M)


def crop_box(img: np.ndarray, box, size: int, margin: float = 1.25) -> np.ndarray:
    """The square around the ink box, `margin` times its longer side, centred on it, edge-padded
    where it leaves the image, resized to size x size (uint8 RGB)."""
    x0, y0, x1, y1 = box
    side = max(8, int(round(margin * max(x1 - x0, y1 - y0))))
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    left, top = cx - side // 2, cy - side // 2
    pad = side
    padded = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    patch = padded[top + pad:top + pad + side, left + pad:left + pad + side]
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)


_GEN = None


def _init(split, weights):
    global _GEN
    torch.set_num_threads(1)
    _GEN = DigitsInClutter(split, seed=0, photo_weights=weights)


def crops_of(imgs, boxes, size: int) -> np.ndarray:
    """`crop_box` of every image [B, size, size, 3]."""
    return np.stack([crop_box(img, box, size) for img, box in zip(imgs, boxes)])


def _draw(args):
    indices, size = args
    imgs, labels, boxes = _GEN.batch(indices)
    return crops_of(imgs, boxes, size), labels


def draw_crops(split, indices, size, weights=None, workers=2):
    chunks = [(indices[k:k + 500], size) for k in range(0, len(indices), 500)]
    with Pool(workers, initializer=_init, initargs=(split, weights)) as pool:
        parts = pool.map(_draw, chunks)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class CropReader(nn.Module):
    """Three stages of two 3x3 conv-BN-ReLU (32, 64, 128 wide), max-pooled, then a linear head."""

    def __init__(self, width=32):
        super().__init__()
        layers, c = [], 3
        for k, w in enumerate((width, 2 * width, 4 * width)):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if k < 2:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        return self.head(F.dropout(self.features(x).mean((2, 3)), 0.2, self.training))


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.25


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random shift of up to 4 pixels (replicate-padded): the crop need not be centred exactly."""
    b, _, h, w = x.shape
    p = F.pad(x, (4, 4, 4, 4), mode="replicate")
    dx, dy = torch.randint(0, 9, (2,), generator=gen).tolist()
    return p[:, :, dy:dy + h, dx:dx + w]


@torch.no_grad()
def read(model, x, bs=500):
    model.eval()
    return torch.cat([model(x[k:k + bs]) for k in range(0, len(x), bs)]).argmax(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-images", type=int, default=60000)
    ap.add_argument("--eval-images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/crop_reader")
    ap.add_argument("--against", default="demo", help="the ViT read on the whole images (policy 'all')")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(a.seed)
    t0 = time.time()
    cache = os.path.join(a.out, f"crops_{a.train_images}_{a.size}px.npz")  # reused by a rerun
    if os.path.isfile(cache):
        z = np.load(cache)
        tx, ty = z["train_x"], z["train_y"]
    else:
        weights = read_photo_weights(PHOTO_WEIGHTS)
        tx, ty = draw_crops("train", list(range(TRAIN_OFFSET, TRAIN_OFFSET + a.train_images)), a.size, weights)
        np.savez(cache, train_x=tx, train_y=ty)
    print(f"{len(tx)} training crops in {time.time() - t0:.0f} s", flush=True)
    # Each evaluation split drawn once: the crop reader reads its crops, the ViT its whole images.
    evals = {}
    for s in ("test", "val"):
        gen = DigitsInClutter(s, seed=0)
        imgs, labels, boxes = gen.batch(range(a.eval_images))
        evals[s] = (crops_of(imgs, boxes, a.size), labels, (gen, imgs, boxes))

    model = CropReader()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, a.lr, total_steps=a.steps, pct_start=0.1)
    g = torch.Generator().manual_seed(a.seed)
    x_all, y_all = to_tensor(tx), torch.from_numpy(ty)
    t1 = time.time()
    for step in range(1, a.steps + 1):
        model.train()
        idx = torch.randint(0, len(x_all), (a.batch,), generator=g)
        loss = F.cross_entropy(model(augment(x_all[idx], g)), y_all[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == a.steps:  # progress only: nothing is chosen on it
            xt, yt, _ = evals["test"]
            acc = (read(model, to_tensor(xt)) == torch.from_numpy(yt)).float().mean().item()
            print(f"step {step}: loss {loss.item():.3f}, test crops {acc:.1%} "
                  f"({time.time() - t1:.0f} s)", flush=True)

    rows = []
    results = {}
    for s, (x, y, _) in evals.items():
        results[s] = (read(model, to_tensor(x)) == torch.from_numpy(y)).numpy()
        rows.append(f"| {s} crops (box given) | {results[s].mean():.1%} |")
    # A sibling script's helpers (importable when this one runs from benchmarks/): the ViT's
    # per-image correctness with every token, and the ink contrast as its error analysis measures it.
    from demo_error_analysis import image_measures, row
    _, labels, (gen, imgs, boxes) = evals["test"]
    vit_ok = row(resolve_model(a.against).eval(), gen, imgs, labels, boxes)[2]
    crop_ok = results["test"]
    faint = image_measures(gen, imgs, boxes)["ink contrast"]
    third = faint <= np.quantile(faint, 1 / 3)
    pc = paired_comparison(crop_ok, vit_ok)
    report = [
        f"# Crop reader against `{a.against}` (benchmarks/demo_crop_reader.py)", "",
        f"{time.strftime('%Y-%m-%d %H:%M')}; {len(tx)} training crops ({a.size} px, box given), "
        f"{a.steps} steps of {a.batch}, {time.time() - t1:.0f} s of training on this CPU.", "",
        "| images | top-1 |", "| --- | --- |", *rows,
        f"| test, whole images, `{a.against}` policy all | {vit_ok.mean():.1%} |", "",
        f"Faintest third of ink (contrast <= {np.quantile(faint, 1 / 3):.0f}): crop reader "
        f"{crop_ok[third].mean():.1%}, `{a.against}` {vit_ok[third].mean():.1%}; the other two "
        f"thirds: {crop_ok[~third].mean():.1%}, {vit_ok[~third].mean():.1%}.", "",
        f"Of the {int((~vit_ok).sum())} test images `{a.against}` misreads, the crop reader reads "
        f"{int((~vit_ok & crop_ok).sum())} right; of the {int((~crop_ok).sum())} it misreads, "
        f"`{a.against}` reads {int((~crop_ok & vit_ok).sum())} right; both wrong on "
        f"{int((~crop_ok & ~vit_ok).sum())}.", "",
        f"Crop reader minus `{a.against}`, image by image: {100 * pc['difference']:+.1f} points "
        f"[{100 * pc['ci95_low']:+.1f}, {100 * pc['ci95_high']:+.1f}], McNemar p = {pc['mcnemar_p']:.1g}.", ""]
    text = "\n".join(report)
    with open(os.path.join(a.out, "result.md"), "w") as f:
        f.write(text)
    save_file(model.state_dict(), os.path.join(a.out, "crop_reader.safetensors"))
    print(text)


if __name__ == "__main__":
    main()
