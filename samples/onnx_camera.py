#!/usr/bin/env python3
"""IA-RED² on a camera with ONNX Runtime and OpenCV only: no PyTorch on the device.

    iared-edge export --model demo --policy threshold --precision int8 --out-dir export   # where iared-edge is
    python samples/onnx_camera.py export/threshold.int8.onnx --source 0                 # on the device
    python samples/onnx_camera.py export/threshold.int8.onnx --source clip.mp4 --headless --json out.json

What the graph needs (input size, normalisation, labels, patch grid) is read from its metadata.
Each frame is resized whole to the input (the Runtime's default fit), normalised and run; the
label, confidence, patches kept per stage and the heatmap are drawn (or, headless, printed and
written to --json). Graphs of policy "threshold" or of one keep level; the graph whose keep
counts are an input needs them, which this sample does not choose.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402


class Graph:
    """An exported IA-RED² graph and what its metadata says about its input and outputs."""

    def __init__(self, path: str, threads: int | None = None, providers=("CPUExecutionProvider",)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no ONNX graph at {path}")
        unknown = set(providers) - set(ort.get_available_providers())
        if unknown:
            raise ValueError(
                f"providers {sorted(unknown)} are not in this onnxruntime build "
                f"(it has {ort.get_available_providers()})"
            )
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, opts, providers=list(providers))
        raw = self.session.get_modelmeta().custom_metadata_map
        missing = {"input_size", "mean", "std", "labels", "grid"} - set(raw)
        if missing:
            raise ValueError(
                f"{path}: no {', '.join(sorted(missing))} in its metadata: export it with "
                "`iared-edge export` (iared-edge 0.1.0 or later)"
            )
        if "keep_counts" in {i.name for i in self.session.get_inputs()}:
            raise ValueError(
                f"{path} takes the keep counts as an input: export --policy threshold, or keep levels "
                "without --keep-counts-input"
            )
        meta = {
            k: json.loads(v)
            for k, v in raw.items()
            if k in ("input_size", "mean", "std", "labels", "grid", "policy", "thresholds", "keep_counts")
        }
        self.meta = meta
        _, self.h, self.w = meta["input_size"]
        self.mean = np.asarray(meta["mean"], np.float32)
        self.std = np.asarray(meta["std"], np.float32)
        self.labels = meta["labels"]
        self.grid = tuple(meta["grid"])

    def __call__(self, frame_bgr: np.ndarray):
        """(label, confidence, heatmap [gh, gw], share of patches kept per stage) of one BGR frame."""
        rgb = cv2.cvtColor(cv2.resize(frame_bgr, (self.w, self.h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        x = ((rgb.astype(np.float32) / np.float32(255.0) - self.mean) / self.std).transpose(2, 0, 1)[None]
        outs = self.session.run(None, {"images": np.ascontiguousarray(x)})
        logits, kept, heat = outs[0][0], outs[1:-1], outs[-1][0]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = int(p.argmax())
        n = self.grid[0] * self.grid[1]
        return self.labels[top], float(p[top]), heat, [k.shape[1] / n for k in kept]


def draw(frame: np.ndarray, label: str, conf: float, heat: np.ndarray, keep, ms: float) -> np.ndarray:
    h, w = frame.shape[:2]
    color = cv2.applyColorMap((cv2.resize(heat, (w, h)) * 255).clip(0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(frame, 0.55, color, 0.45, 0)
    text = f"{label} {conf:.0%}  {ms:.1f} ms  kept " + " / ".join(f"{k:.0%}" for k in keep)
    cv2.putText(out, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(out, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("graph", help="an ONNX graph written by `iared-edge export`")
    ap.add_argument("--source", default="0", help="camera index, video file or URL")
    ap.add_argument("--headless", action="store_true", help="no window: print one line per frame")
    ap.add_argument("--json", help="write every frame's label, confidence, keep and latency here")
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime's intra-op threads")
    ap.add_argument(
        "--providers",
        default="CPUExecutionProvider",
        help="comma-separated ONNX Runtime providers, in order (a float32 graph on a GPU: "
        "CUDAExecutionProvider,CPUExecutionProvider; int8 graphs are for the CPU)",
    )
    args = ap.parse_args(argv)
    try:
        graph = Graph(args.graph, args.threads, [p.strip() for p in args.providers.split(",") if p.strip()])
    except (OSError, ValueError) as exc:
        print(f"onnx_camera: error: {exc}", file=sys.stderr)
        return 2
    source = int(args.source) if args.source.isdigit() else args.source
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        print(f"onnx_camera: error: cannot open source {args.source!r}", file=sys.stderr)
        return 2
    records = []
    try:
        while args.max_frames is None or len(records) < args.max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            t0 = time.perf_counter()
            label, conf, heat, keep = graph(frame)
            ms = (time.perf_counter() - t0) * 1e3
            records.append({"label": label, "confidence": conf, "keep_per_stage": keep, "latency_ms": ms})
            if args.headless:
                print(
                    f"{len(records):5d}  {label} {conf:.0%}  {ms:.1f} ms  kept " + " / ".join(f"{k:.0%}" for k in keep)
                )
            else:
                cv2.imshow("iared-edge (onnxruntime)", draw(frame, label, conf, heat, keep, ms))
                if cv2.waitKey(1) & 0xFF == ord("q"):
                    break
    finally:
        cap.release()
        if not args.headless:
            cv2.destroyAllWindows()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"graph": args.graph, "source": str(args.source), "frames": records}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
