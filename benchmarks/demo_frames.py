"""Four frames of the demo's annotated video tiled 2x2 into one JPEG, for docs/demo.md.

    make demo                                   # writes out/demo.mp4
    .venv/bin/python benchmarks/demo_frames.py  # -> docs/demo_frames.jpg

The frames are fixed fractions of the clip (not picked by eye), so a new model's picture shows the
same moments as the last one's.
"""
import argparse
import sys

import cv2
import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--video", default="out/demo.mp4")
    ap.add_argument("--out", default="docs/demo_frames.jpg")
    ap.add_argument("--at", default="0.15,0.4,0.65,0.9", help="where in the clip, as fractions of its length")
    ap.add_argument("--size", type=int, default=420, help="side of each tile, pixels")
    args = ap.parse_args(argv)
    fracs = [float(f) for f in args.at.split(",")]
    if len(fracs) != 4:
        print("demo_frames: --at needs four fractions", file=sys.stderr)
        return 1
    cap = cv2.VideoCapture(args.video)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if not cap.isOpened() or n <= 0:
        print(f"demo_frames: cannot read {args.video} (run `make demo` first)", file=sys.stderr)
        return 1
    indices = [min(n - 1, int(f * n)) for f in fracs]
    tiles = []
    for i in indices:
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, frame = cap.read()
        if not ok:
            print(f"demo_frames: {args.video}: frame {i} of {n} unreadable", file=sys.stderr)
            return 1
        tiles.append(cv2.resize(frame, (args.size, args.size), interpolation=cv2.INTER_AREA))
    cap.release()
    grid = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
    if not cv2.imwrite(args.out, grid, [cv2.IMWRITE_JPEG_QUALITY, 85]):
        print(f"demo_frames: cannot write {args.out}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]}) from {args.video} frames "
          + ", ".join(map(str, indices)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
