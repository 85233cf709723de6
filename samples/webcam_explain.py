#!/usr/bin/env python3
"""Live IA-RED² on a camera: label, heatmap and dropped patches on every frame.

    python samples/webcam_explain.py                        # camera 0, or the bundled clip without one
    python samples/webcam_explain.py --source demo --headless --output out.mp4
    python samples/webcam_explain.py --model deit_small_patch16_224 --checkpoint deit_small.pth --source 0
    python samples/webcam_explain.py --backend onnxruntime --precision int8   # on a CPU: faster at batch 1
    python samples/webcam_explain.py --csi 0 --precision fp16   # Jetson CSI camera 0 (GStreamer OpenCV)
    python samples/webcam_explain.py --server 10.0.0.5:8001     # the model on an `iared-edge serve` server

Keys: + / - change the latency budget (start with --budget-ms), h heatmap on/off, m kept-patch mask
on/off, q quit. Headless (--headless, or when there is no display) it writes the annotated video and
OUTPUT.json: per frame the label, confidence, keep level and latency, and the Runtime's stats.

The whole of a camera app, without the text panel:

    import cv2
    from iared_edge import Runtime
    with Runtime("demo", budget_ms=30) as rt:
        for frame, res in rt.stream(0):
            cv2.imshow("iared-edge", res.overlay(frame)); cv2.waitKey(1)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # no V4L2 warnings while probing for a camera
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from iared_edge import Runtime, RuntimeConfig  # noqa: E402
from iared_edge.checkpoint import resolve_model  # noqa: E402


def pick_source(arg: str):
    """ "auto": camera 0 when one opens, else the bundled clip; digits: a camera index."""
    if arg == "auto":
        cap = cv2.VideoCapture(0)
        ok = cap.isOpened()
        cap.release()
        if not ok:
            print("no camera found: playing the bundled demo clip (street footage with digits)")
        return 0 if ok else "demo"
    return int(arg) if arg.isdigit() else arg


def csi_pipeline(sensor_id: int, width: int = 1280, height: int = 720, fps: int = 30) -> str:
    """The GStreamer pipeline of Jetson CSI camera `sensor_id` (nvarguscamerasrc, the Argus camera
    service), ending in the BGR frames OpenCV reads. `Runtime.stream` opens a string containing
    " ! " as a GStreamer pipeline, which needs an OpenCV built with GStreamer (JetPack's own).
    appsink keeps one frame and drops older ones (drop=1 acts only with max-buffers set), so a slow
    model sees the newest frame, not a backlog."""
    limits = (("sensor_id", sensor_id, 0), ("width", width, 1), ("height", height, 1), ("fps", fps, 1))
    bad = [f"{n}={v!r}" for n, v, low in limits if isinstance(v, bool) or not isinstance(v, int) or v < low]
    if bad:
        raise ValueError(f"csi_pipeline: integers expected, sensor_id >= 0 and the rest >= 1; got {', '.join(bad)}")
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1 ! "
        "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=1 max-buffers=1"
    )


def parse_size(text: str):
    """ "1280x720" -> (1280, 720)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1280x720, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"width and height must be >= 1, got {text!r}")
    return w, h


def source_of(args):
    """What to stream: the CSI pipeline for --csi N, else --source (see pick_source)."""
    if args.csi is not None:
        w, h = args.csi_size or (1280, 720)
        return csi_pipeline(args.csi, w, h, args.csi_fps or 30)
    return pick_source(args.source)


def _text(img, text, org, scale, color=(255, 255, 255)):
    """Text with a dark outline, legible on any background."""
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), max(2, int(4 * scale)), cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, max(1, int(1.6 * scale)), cv2.LINE_AA)


def annotate(
    frame_bgr: np.ndarray,
    res,
    fps: float,
    budget_ms,
    show_heat: bool = True,
    show_mask: bool = True,
    min_side: int = 400,
    keys: bool = False,
    engine: str = "",
) -> np.ndarray:
    """The frame as the camera gave it beside its explanation (the heatmap blended in where it is
    warm, dropped patches greyed), both enlarged to `min_side`, under a text band: label and
    confidence, fps, latency against the budget, keep per stage, and what runs the model (`engine`,
    e.g. "onnxruntime int8"). The plain frame lets a viewer check the label against the image."""
    explained = res.overlay(frame_bgr, heatmap=show_heat, mask=show_mask)
    h, w = explained.shape[:2]
    s = max(1.0, min_side / min(h, w))
    size = (round(w * s), round(h * s))
    left = cv2.resize(np.ascontiguousarray(frame_bgr), size, interpolation=cv2.INTER_LINEAR)
    right = cv2.resize(explained, size, interpolation=cv2.INTER_LINEAR)
    f = size[0] / 400
    band_h = int(70 * f)
    band = np.full((band_h, 2 * size[0] + 4, 3), 24, np.uint8)
    pic = np.ascontiguousarray(np.vstack([band, np.hstack([left, np.full((size[1], 4, 3), 24, np.uint8), right])]))
    W = pic.shape[1]
    _text(pic, f"{res.label}  {res.score:.0%}", (int(12 * f), int(32 * f)), 0.95 * f, (80, 255, 120))
    lat = res.latency_ms["total"]
    budget = f" / budget {budget_ms:.0f} ms" if budget_ms else ""
    over = budget_ms is not None and lat > budget_ms
    _text(
        pic,
        f"{fps:4.1f} fps   {lat:5.1f} ms{budget}",
        (int(180 * f), int(30 * f)),
        0.55 * f,
        (60, 60, 255) if over else (255, 255, 255),
    )
    stages = " / ".join(f"{k:.0%}" for k in res.stage_keep)
    _text(pic, f"patches kept per stage: {stages}", (int(12 * f), int(60 * f)), 0.5 * f)
    if engine:  # right-aligned on the second line
        (tw, _), _ = cv2.getTextSize(engine, cv2.FONT_HERSHEY_SIMPLEX, 0.45 * f, max(1, int(1.6 * 0.45 * f)))
        _text(pic, engine, (W - tw - int(12 * f), int(60 * f)), 0.45 * f, (200, 200, 200))
    _text(pic, "camera", (int(8 * f), band_h + int(20 * f)), 0.45 * f)
    _text(pic, "explanation (grey: dropped)", (size[0] + int(12 * f), band_h + int(20 * f)), 0.45 * f)
    if keys:
        _text(pic, "+/- budget  h heatmap  m mask  q quit", (int(12 * f), pic.shape[0] - int(12 * f)), 0.45 * f)
    return pic


def has_display() -> bool:
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        return False
    try:
        cv2.namedWindow("iared-edge")
        return True
    except cv2.error:  # opencv-python-headless has no GUI
        return False


def load_truth(source):
    if source != "demo":
        return None
    from iared_edge.demo.clip import DEMO_CLIP

    path = os.path.splitext(DEMO_CLIP)[0] + ".json"
    with open(path) as f:
        return [r["label"] for r in json.load(f)["frames"]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--source", default="auto", help='camera index, video file, URL, "demo" (bundled clip) or "auto"')
    src.add_argument(
        "--csi",
        type=int,
        metavar="N",
        default=None,
        help="Jetson CSI camera N (nvarguscamerasrc sensor-id=N) through GStreamer; needs an OpenCV built with it",
    )
    ap.add_argument("--csi-size", type=parse_size, default=None, metavar="WxH", help="--csi capture size (1280x720)")
    ap.add_argument("--csi-fps", type=int, default=None, metavar="FPS", help="--csi frame rate (30)")
    ap.add_argument(
        "--server",
        action="append",
        metavar="HOST:PORT",
        default=None,
        help="send the frames to `iared-edge serve` at this gRPC address instead of running the model here "
        "(repeat for several servers: frames spread over them, with failover)",
    )
    ap.add_argument("--model", default="demo", help='"demo" (bundled), a saved .safetensors, or a timm name')
    ap.add_argument("--checkpoint", help="weights for a timm name (.pth / .safetensors)")
    RuntimeConfig.add_arguments(ap)  # --device, --budget-ms, --policy, --level, --precision, --backend, --fit, ...
    ap.add_argument("--headless", action="store_true", help="no window: write --output and its .json summary")
    ap.add_argument(
        "--output", default=None, help="annotated video to write (.mp4); default webcam_explain.mp4 when headless"
    )
    ap.add_argument(
        "--max-frames", type=int, default=None, help="stop after this many frames (default: the whole source)"
    )
    ap.add_argument(
        "--reconnect",
        type=int,
        default=0,
        help="a camera or URL that stops giving frames is opened again up to this many times in a row",
    )
    args = ap.parse_args(argv)
    if args.max_frames is not None and args.max_frames < 1:
        ap.error(f"--max-frames must be >= 1, got {args.max_frames}")
    if args.reconnect < 0:
        ap.error(f"--reconnect must be >= 0, got {args.reconnect}")
    if args.server and args.budget_ms is not None:
        ap.error("--budget-ms is for a local model; a server runs its own policy (iared-edge serve --policy ...)")
    if args.csi is None and (args.csi_size is not None or args.csi_fps is not None):
        ap.error("--csi-size and --csi-fps apply to --csi only")
    if args.csi is not None and args.csi < 0:
        ap.error(f"--csi must be a sensor id >= 0, got {args.csi}")
    if args.csi_fps is not None and args.csi_fps < 1:
        ap.error(f"--csi-fps must be >= 1, got {args.csi_fps}")
    try:
        return run(args)
    except (ValueError, OSError, TypeError, RuntimeError) as exc:  # bad model, source, budget, output
        print(f"webcam_explain: error: {exc}", file=sys.stderr)
        return 2


def run(args) -> int:
    headless = args.headless or not has_display()
    if headless and not args.headless:
        print("no display: running headless")
    output = args.output or ("webcam_explain.mp4" if headless else None)
    if output and not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        raise FileNotFoundError(f"--output {output}: no such folder")
    source = source_of(args)
    truth = load_truth(source)
    show_heat = show_mask = True
    writer, frames, t_prev, fps = None, [], None, 0.0
    if args.server:
        from iared_edge.serve import RemoteRuntime

        rt = RemoteRuntime(args.server)
        engine = f"server {', '.join(args.server)}"
    else:
        rt = Runtime(resolve_model(args.model, args.checkpoint), RuntimeConfig.from_args(args))
        engine = f"{rt.backend} {rt.precision}"
    with rt:
        for frame, res in rt.stream(source, reconnect=args.reconnect):
            now = time.perf_counter()
            if t_prev is not None:
                fps = 0.9 * fps + 0.1 / max(now - t_prev, 1e-6) if fps else 1.0 / max(now - t_prev, 1e-6)
            t_prev = now
            pic = annotate(
                frame,
                res,
                fps,
                None if args.server else rt.budget_ms,
                show_heat,
                show_mask,
                keys=not headless,
                engine=engine,
            )
            frames.append(res.summary())
            if output:
                if writer is None:
                    writer = cv2.VideoWriter(output, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, pic.shape[1::-1])
                    if not writer.isOpened():
                        raise OSError(f"cannot write {output}")
                writer.write(pic)
            if not headless:
                cv2.imshow("iared-edge", pic)
                key = cv2.waitKey(1) & 0xFF
                if key == ord("q"):
                    break
                if key in (ord("+"), ord("="), ord("-")):
                    if args.server or rt.budget_ms is None:
                        print("start with --budget-ms to change the budget")
                    else:
                        rt.budget_ms = max(1.0, rt.budget_ms * (1.25 if key != ord("-") else 0.8))
                if key == ord("h"):
                    show_heat = not show_heat
                if key == ord("m"):
                    show_mask = not show_mask
            if args.max_frames and len(frames) >= args.max_frames:
                break
        stats = rt.stats()
    if writer is not None:
        writer.release()
    if not headless:
        cv2.destroyAllWindows()
    summary = {
        "source": str(source),
        "model": args.model,
        "budget_ms": args.budget_ms,
        "frames": frames,
        "stats": stats,
    }
    if truth is not None and frames:
        hits = [f["label"] == str(truth[f["frame"]]) for f in frames if f["frame"] < len(truth)]
        summary["clip_accuracy"] = sum(hits) / len(hits)
    lat = stats["latency_ms"]
    print(
        f"{stats['frames']} frames, {stats['fps']:.1f} fps, latency p50 {lat['p50']:.1f} ms p95 {lat['p95']:.1f} ms, "
        f"mean keep {stats['mean_keep_ratio']:.0%}"
        + (f", accuracy on the clip {summary['clip_accuracy']:.0%}" if "clip_accuracy" in summary else "")
    )
    if output:
        with open(os.path.splitext(output)[0] + ".json", "w") as f:
            json.dump(summary, f, indent=1)
        print(f"wrote {output} and {os.path.splitext(output)[0]}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
