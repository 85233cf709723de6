"""Does the demo model miss digits for want of finding them, or of reading them? A diagnosis.

    .venv/bin/python benchmarks/demo_box_tokens.py [MODEL] [--images 1000] [--dilate 0,1,2]

Reads the 1,000 test images of `iared-edge eval` (`make-digits --test 1000`, seed 0) with every
token (policy "all"), with the model's own dropping (policy "threshold"), and told where the digit
is: policy "given", keeping from stage 1 on only the patch tokens that overlap the digit's true ink
box, grown by `d` patches on each side. If reading the box's tokens alone is far more accurate
than "all", the clutter elsewhere misleads the model (finding); if it is the same, the model
misreads the digit's own patches (reading). Prints a markdown table.
"""
import argparse

import numpy as np
import torch

from iared_edge.checkpoint import resolve_model
from iared_edge.demo.digits import DigitsInClutter
from iared_edge.demo.train import to_input


def box_tokens(boxes, dilate: int, grid: int = 14, patch: int = 16) -> torch.Tensor:
    """[B, grid * grid] bool: the patches (row-major) that overlap each box (x0, y0, x1, y1; x1, y1
    exclusive, in pixels), grown by `dilate` patches on every side and clipped to the grid."""
    boxes = torch.as_tensor(np.asarray(boxes), dtype=torch.long)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [B, 4] (x0, y0, x1, y1), got {tuple(boxes.shape)}")
    if dilate < 0:
        raise ValueError(f"dilate must be >= 0 patches, got {dilate}")
    idx = torch.arange(grid)
    lo = (boxes[:, :2] // patch - dilate).clamp(min=0)                       # first column, row
    hi = ((boxes[:, 2:] - 1) // patch + dilate).clamp(max=grid - 1)         # last column, row
    cols = (idx >= lo[:, :1]) & (idx <= hi[:, :1])                          # [B, grid]
    rows = (idx >= lo[:, 1:]) & (idx <= hi[:, 1:])
    return (rows[:, :, None] & cols[:, None, :]).flatten(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default="demo")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--dilate", default="0,1,2", help="patches to grow the box by, comma-separated")
    ap.add_argument("--batch", type=int, default=50)
    a = ap.parse_args()
    model = resolve_model(a.model).eval()
    imgs, labels, boxes = DigitsInClutter("test", seed=0).batch(range(a.images))
    x, y = to_input(imgs), torch.from_numpy(labels)
    stages = model.num_stages
    rows = [("all (every token)", {"policy": "all"}), ("threshold (the model's own dropping)", {"policy": "threshold"})]
    rows += [(f"given: the box's tokens, grown by {d} patch{'es' if int(d) != 1 else ''}", {"dilate": int(d)})
             for d in a.dilate.split(",")]
    print(f"| {a.images} test images, `{a.model}` | top-1 | patch tokens kept |\n| --- | --- | --- |")
    with torch.no_grad():
        for name, kw in rows:
            right, kept = 0, 0.0
            for k in range(0, a.images, a.batch):
                xb = x[k:k + a.batch]
                if "dilate" in kw:
                    keep = box_tokens(boxes[k:k + a.batch], kw["dilate"])
                    out = model(xb, policy="given", decisions=[keep] * stages)
                else:
                    out = model(xb, policy=kw["policy"])
                right += int((out.logits.argmax(1) == y[k:k + a.batch]).sum())
                kept += float(out.kept_counts.float().mean(1).sum()) / model.num_patches
            print(f"| {name} | {right / a.images:.1%} | {kept / a.images:.2f} |", flush=True)


if __name__ == "__main__":
    main()
