"""The plain backbone against IA-RED² on this device, timed side by side (`iared-edge bench`).

Each repeat times timm's own forward (`model.vit`) and the IA-RED² forward on the same batch back
to back, so a change in the machine's load hits both alike; the speed-up is the ratio of their
medians, printed beside the bound it is judged against: the plain FLOPs over IA-RED²'s, counted
from the tokens each image really kept (interpreters included).
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

POLICIES = ("threshold", "level")


def device_name(device: torch.device, threads: Optional[int] = None) -> str:
    """The GPU's name, or the CPU's model and the thread count torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {threads or torch.get_num_threads()} threads"


def bench_images(model, count: int, folder: Optional[str] = None) -> Tuple[torch.Tensor, str]:
    """`count` model inputs [count, 3, h, w] and what they are: the images of `folder` (cycled if
    fewer), the demo task's held-out test images for a demo-task model, else the bundled photo."""
    from .preprocess import ASSETS, find_images, load_rgb, model_input

    if folder is not None:
        paths = find_images(folder)
        rgbs = [load_rgb(p) for p in paths[:count]]
        what = f"{len(rgbs)} images of {folder}"
    elif (model.vit.pretrained_cfg or {}).get("architecture") == "iared_digits_tiny":
        from .demo import DigitsInClutter

        rgbs = list(DigitsInClutter("test", seed=0).batch(range(count))[0])
        what = "held-out demo-task test images"
    else:
        rgbs = [load_rgb(os.path.join(ASSETS, "squirrel_cls.jpg"))]
        what = "the bundled photo, repeated; --images DIR for your own"
    x = torch.cat([model_input(model, im) for im in rgbs])
    return x.repeat((count + len(x) - 1) // len(x), 1, 1, 1)[:count], what


def timed_ms(fn, sync=None) -> float:
    """Milliseconds `fn()` takes, up to `sync()` (a CUDA synchronise, so GPU work is counted)."""
    t0 = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return (time.perf_counter() - t0) * 1e3


def timing_session(path: str, threads: Optional[int] = None):
    """An ONNX Runtime session on the CPU for timing side by side: `threads` intra-op threads
    (default torch's), spinning off (idle workers spin by default, stealing the cores from
    whatever is timed next)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def _check(images: torch.Tensor, batches: Sequence[int], policy: str, repeats: int) -> None:
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not batches or min(batches) < 1:
        raise ValueError(f"batch sizes must be >= 1, got {list(batches)}")
    if max(batches) > len(images):
        raise ValueError(f"batch size {max(batches)} is larger than the {len(images)} images given")


def _time_side_by_side(images: torch.Tensor, batches: Sequence[int], plain, ours, repeats: int, sync=None):
    """Per batch size: (batches timed, median ms of `plain(batch)`, median ms of `ours(batch)`),
    the two timed back to back on every batch after two warm-up batches."""
    timings = []
    for bs in batches:
        chunks = [images[i : i + bs] for i in range(0, len(images) - bs + 1, bs)]
        for c in chunks[:2]:  # warm-up: allocator, thread pools, cuDNN/cuBLAS choices
            plain(c)
            ours(c)
        if sync is not None:
            sync()
        t_plain, t_ours = [], []
        for _ in range(repeats):
            for c in chunks:
                t_plain.append(timed_ms(lambda c=c: plain(c), sync))
                t_ours.append(timed_ms(lambda c=c: ours(c), sync))
        timings.append((len(chunks), statistics.median(t_plain), statistics.median(t_ours)))
    return timings


def _rows(model, out, batches, timings, agree: float) -> List[Dict]:
    full = model.flops()[0].item()
    rows = []
    for bs, (n, plain, ours) in zip(batches, timings):
        rows.append(
            {
                "batch": bs,
                "plain_ms": plain,
                "iared_ms": ours,
                "speedup": plain / ours,
                "flops_bound": full / out.flops[: n * bs].mean().item(),
                "kept_per_stage": out.keep_ratio[: n * bs].float().mean(0).tolist(),
                "top1_agreement": agree,
            }
        )
    return rows


def compare_speed(
    model,
    images: torch.Tensor,
    batches: Sequence[int] = (1, 8),
    policy: str = "threshold",
    level: float = 0.7,
    repeats: int = 11,
) -> List[Dict]:
    """Per batch size: the median ms per batch of the plain backbone and of IA-RED² over `repeats`
    passes of all `images` (split into batches; a last partial batch is left out), the speed-up,
    the FLOPs bound, patch tokens kept per stage and how often IA-RED²'s top-1 is the plain one's.
    The model runs where its weights are, in their dtype."""
    _check(images, batches, policy, repeats)
    weight = next(model.parameters())
    images = images.to(weight.device, weight.dtype)
    sync = (lambda: torch.cuda.synchronize(weight.device)) if weight.device.type == "cuda" else None
    kwargs = {"level": level} if policy == "level" else {}
    with torch.inference_mode():
        out = model(images, policy=policy, **kwargs)  # what each image keeps: the same in every batching
        agree = (out.logits.argmax(-1) == model.vit(images).argmax(-1)).float().mean().item()
        timings = _time_side_by_side(
            images, batches, model.vit, lambda c: model(c, policy=policy, **kwargs), repeats, sync
        )
    return _rows(model, out, batches, timings, agree)


def compare_speed_onnx(
    model,
    images: torch.Tensor,
    batches: Sequence[int] = (1, 8),
    policy: str = "threshold",
    level: float = 0.7,
    repeats: int = 11,
    int8: bool = False,
    threads: Optional[int] = None,
) -> List[Dict]:
    """`compare_speed` with both sides as ONNX Runtime graphs on the CPU, float32 or `int8`: the
    plain backbone (`export_onnx_plain`) against IA-RED²'s threshold graph (one image per run, so
    a batch is that many runs) or its level graph. Keeps and the FLOPs bound come from the
    PyTorch model's decisions (the float32 graphs make the same ones, tested); the top-1
    agreement is between the two graphs, and `top1_agreement_with_pytorch` is IA-RED²'s graph
    against the float32 PyTorch model (what int8 changes)."""
    import tempfile

    import numpy as np

    from .export import export_onnx, export_onnx_plain, export_onnx_threshold

    _check(images, batches, policy, repeats)
    weight = next(model.parameters())
    if weight.dtype != torch.float32 or weight.device.type != "cpu":  # the graphs are exported from float32
        model = copy.deepcopy(model).float().cpu()  # on the CPU; never cast the caller's
    images = images.float().cpu()
    kwargs = {"level": level} if policy == "level" else {}
    with tempfile.TemporaryDirectory(prefix="iared-bench-") as tmp:
        plain_path, ours_path = os.path.join(tmp, "plain.onnx"), os.path.join(tmp, "iared.onnx")
        export_onnx_plain(model, plain_path, int8=int8)
        if policy == "level":
            export_onnx(model, ours_path, level, int8=int8)
        else:
            export_onnx_threshold(model, ours_path, int8=int8)
        plain_session, ours_session = (timing_session(p, threads) for p in (plain_path, ours_path))

    def plain(c):
        return plain_session.run(None, {"images": c.numpy()})[0]

    def ours(c):
        if policy == "level":
            return ours_session.run(None, {"images": c.numpy()})[0]
        return np.concatenate([ours_session.run(None, {"images": c[i : i + 1].numpy()})[0] for i in range(len(c))])

    with torch.inference_mode():
        out = model(images, policy=policy, **kwargs)
    top1 = ours(images).argmax(-1)
    agree = float((top1 == plain(images).argmax(-1)).mean())
    # what int8 changes: the graph's answers against the float32 PyTorch model's, same policy
    same = float((top1 == out.logits.argmax(-1).numpy()).mean())
    rows = _rows(model, out, batches, _time_side_by_side(images, batches, plain, ours, repeats), agree)
    return [dict(r, top1_agreement_with_pytorch=same) for r in rows]


def markdown(rows: List[Dict]) -> str:
    lines = [
        "| batch | plain ms / batch | IA-RED² ms / batch | speed-up | FLOPs bound | speed-up / bound | "
        "patch tokens kept per stage |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        kept = " / ".join(f"{k:.2f}" for k in r["kept_per_stage"])
        lines.append(
            f"| {r['batch']} | {r['plain_ms']:.2f} | {r['iared_ms']:.2f} | {r['speedup']:.2f}x | "
            f"{r['flops_bound']:.2f}x | {r['speedup'] / r['flops_bound']:.2f} | {kept} |"
        )
    return "\n".join(lines)
