"""The bundled demo clip: real street footage with handwritten digits moving through it.

    python -m iared_edge.demo.clip --video ../shared/data/vtest.avi     # rewrites the bundled clip

Takes the centre square of each frame of OpenCV's `vtest.avi`, shrinks it to `size`, and draws one
held-out (test-split) digit at a time drifting across the scene; writes an MPEG-4 video and a JSON
file with every frame's digit label and box, so a run on the clip can be scored.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict

import numpy as np

from .digits import ASSETS, DigitsInClutter, draw_digit, ink_coverage

DEMO_CLIP = os.path.join(ASSETS, "street_digits.mp4")


def make_clip(
    video: str,
    out: str = DEMO_CLIP,
    frames: int = 150,
    size: int = 320,
    per_digit: int = 25,
    seed: int = 0,
    fps: float = 10.0,
) -> Dict:
    import cv2

    cap = cv2.VideoCapture(video)
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video {video}")
    gen = DigitsInClutter("test", seed=seed)
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    if not writer.isOpened():
        raise OSError(f"cannot write {out} (no MPEG-4 encoder in this OpenCV build?)")
    records = []
    for f in range(frames):
        ok, frame = cap.read()
        if not ok:
            break
        h, w = frame.shape[:2]
        s = min(h, w)
        square = frame[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        bg = cv2.cvtColor(cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB).astype(
            np.float32
        )
        k, t = divmod(f, per_digit)
        if t == 0:  # a new digit: its glyph, size, path, ink
            label = int(rng.integers(10))
            glyph = gen.digits[label, rng.integers(gen.digits.shape[1])].astype(np.float32) / 255.0
            height = rng.uniform(0.3, 0.42) * size
            start = rng.uniform(0.3, 0.7, 2) * size
            velocity = rng.uniform(-1, 1, 2) * size * 0.25 / per_digit
            spin = rng.uniform(-10, 10)
            contrast, tint = rng.uniform(0.8, 1.0), rng.uniform(0, 80, 3).astype(np.float32)
        centre = start + velocity * (t - per_digit / 2)
        m = cv2.getRotationMatrix2D((10.0, 10.0), spin * t / per_digit, height / 16.0)
        m[:, 2] = centre - m[:, :2] @ np.array([10.0, 10.0])
        img, box = draw_digit(bg, ink_coverage(glyph, m, bg.shape[:2]), contrast, tint)
        writer.write(cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
        records.append({"frame": f, "label": label, "box": list(box)})
    cap.release()
    writer.release()
    meta = {"source": os.path.basename(video), "size": size, "fps": fps, "frames": records}
    with open(os.path.splitext(out)[0] + ".json", "w") as fh:
        json.dump(meta, fh)
    return meta


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--video", required=True, help="OpenCV's vtest.avi (../shared/data/vtest.avi)")
    ap.add_argument("--out", default=DEMO_CLIP)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    meta = make_clip(args.video, args.out, frames=args.frames, size=args.size, seed=args.seed)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB, {len(meta['frames'])} frames)")


if __name__ == "__main__":
    main()
