"""Runtime: frames in, label + heatmap + timings out, within a latency budget if one is set.

    from iared_edge.runtime import Runtime
    with Runtime("model.safetensors", budget_ms=30) as rt:
        for frame, res in rt.stream(0):
            print(res.label, res.score, res.keep_ratio, res.latency_ms["total"])
"""
from __future__ import annotations

import copy
import math
import os
import queue
import threading
from contextlib import contextmanager, nullcontext as _nullcontext
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..checkpoint import resolve_model
from ..devices import PRECISION_DTYPES, PRECISIONS, RUNTIME_PRECISIONS, inference_dtype, resolve_device
from ..preprocess import FITS, fit_frame, grid_to_frame, model_normalization, overlay
from .contention import CpuContention
from .controller import BudgetController, default_levels
from .sources import LIVE, import_cv2, open_source

_END = object()
_PENDING = object()  # a source being reconnected, nothing queued


def _three_channels(frame: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 from that, H x W grey (or H x W x 1) or H x W x 4 with alpha; anything else
    a ValueError naming what it got. Mono cameras and BGRA capture pipelines are common on robots."""
    if frame.dtype == np.uint8 and frame.ndim == 2:
        frame = frame[..., None]
    if frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] in (1, 4):
        frame = np.broadcast_to(frame, frame.shape[:2] + (3,)) if frame.shape[2] == 1 else frame[..., :3]
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be H x W x 3 uint8 (or H x W grey, H x W x 4 with alpha), "
                         f"got {frame.dtype} {frame.shape}")
    return frame


@dataclass
class Result:
    """One frame's answer."""
    labels: List[str]              # top-k class names, best first
    probs: List[float]             # their probabilities
    indices: List[int]             # their class indices
    heatmap: np.ndarray            # H x W float32 in [0, 1], the frame's size
    stage_masks: np.ndarray        # [S, gh, gw] bool: patches kept by each stage
    stage_keep: List[float]        # fraction of patch tokens kept by each stage
    keep_ratio: float              # fraction of patch tokens kept, averaged over the stages
    latency_ms: Dict[str, float]   # preprocess, model, postprocess, total
    frame_index: int
    timestamp: float               # time.time() when the frame was taken in
    keep_level: Optional[float] = None  # the budget controller's keep ratio, when a budget is set
    threads: Optional[int] = None       # CPU threads the controller ran this frame with
    fit: str = "squash"                 # how the frame became the model's input (Runtime's fit=)
    input_size: Optional[Tuple[int, int]] = None  # the model's input (H, W)

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def score(self) -> float:
        return self.probs[0]

    def summary(self) -> Dict[str, Any]:
        """This Result without its arrays, ready for `json.dumps`: frame index, timestamp, label and
        confidence, the top-k, keep ratios, latency, and the budget's keep level and threads."""
        return {"frame": self.frame_index, "timestamp": self.timestamp, "label": self.label,
                "confidence": self.score, "top": [{"label": l, "prob": p} for l, p in zip(self.labels, self.probs)],
                "keep_ratio": self.keep_ratio, "stage_keep": list(self.stage_keep),
                "latency_ms": dict(self.latency_ms), "keep_level": self.keep_level, "threads": self.threads}

    def overlay(self, frame: np.ndarray, color: str = "bgr", heatmap: bool = True, mask: bool = True,
                alpha: float = 0.45) -> np.ndarray:
        """`frame` (the one this Result answers; H x W x 3 uint8, BGR unless color="rgb"; H x W grey
        or H x W x 4 with alpha give 3 channels) with the heatmap blended in and the patches dropped
        by the last stage dimmed, in the frame's colour order: what to show in a camera app."""
        if color not in ("bgr", "rgb"):
            raise ValueError(f'color must be "bgr" (OpenCV) or "rgb", got {color!r}')
        frame = _three_channels(np.asarray(frame))
        if frame.shape[:2] != self.heatmap.shape:
            raise ValueError(f"frame is {frame.shape[1]}x{frame.shape[0]}, but this Result answers a "
                             f"{self.heatmap.shape[1]}x{self.heatmap.shape[0]} frame")
        rgb = np.ascontiguousarray(frame[..., ::-1] if color == "bgr" else frame)
        heat = self.heatmap if heatmap else np.zeros_like(self.heatmap)
        kept = self.stage_masks[-1]
        if self.fit != "squash":  # the grid covers part of the frame (crop) or the frame part of it (letterbox)
            kept = grid_to_frame(kept, frame.shape[:2], self.input_size, self.fit, nearest=True) > 0.5
        pic = overlay(rgb, heat, kept if mask else None, alpha=alpha if heatmap else 0.0)
        return np.ascontiguousarray(pic[..., ::-1]) if color == "bgr" else pic


class Runtime:
    """Frames in, `Result`s out: `rt(frame)`, `rt.batch(frames)`, `rt.stream(source)`,
    `rt.streams(sources)`; `rt.stats()` sums up. A context manager (leaving it stops the streams).

    model: an IARedViT, "demo" (the bundled model), a .safetensors saved by `save_model`, or a timm
        name (random weights: pass an IARedViT built with `IARedViT.from_timm(name, checkpoint=...)`).
    device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
    budget_ms: a latency budget per frame: a controller picks each frame's keep level (policy
        "ratio" at `model.stage_ratios(level)`) and, on a CPU, its thread count. None: no budget.
    policy: without a budget, "threshold" (each frame its own tokens; the paper's inference),
        "all", or "ratio" with `ratio` (a keep level in (0, 1]).
    input_size: checked against the model's (H, W). labels: class names to report, one per class
        (default: the model's).
    topk: how many labels a Result lists. color: "bgr" (OpenCV frames) or "rgb".
    fit: how a frame becomes the model's input: "squash" (the whole frame resized, its aspect ratio
        changed), "crop" (the largest centred part with the model's aspect ratio; the rest is not
        seen: heatmap 0, dimmed) or "letterbox" (the whole frame, aspect ratio kept, padded with the
        normalisation mean). The heatmap and masks always map back onto the frame.
    levels: the budget's keep levels (default 1.0, 0.9, ..., 0.1).
    queue_size: frames a stream holds between capture and model (live sources drop the oldest).
    calibrate_runs: timed forwards per level in the budget's start-up calibration.
    threads: "auto", an int or a list: CPU thread counts the budget controller may choose between.
    backend: "torch", "onnxruntime" or "tensorrt" (the last two run policy-"ratio" graphs, written to
        `onnx_cache`: `onnx_form="levels"`, one per keep level, or "counts", one with the counts as
        an input; the default is "counts" for ONNX Runtime (one export at start-up, as fast as the
        per-level graphs on the CPU measured) and "levels" for TensorRT (a constant TopK K builds
        on every TensorRT version). ONNX Runtime also runs policy "threshold": one graph, an
        image per run).
    cuda_graphs: on a GPU, replay a CUDA graph per keep level (policy "ratio" or a budget).
    precision: "fp32", "fp16", "bf16", "auto", or None (the model as it is); a copy is cast. "int8"
        (backend "onnxruntime" only): graphs with int8 weights in the blocks and head, for CPUs.
    """

    def __init__(self, model: Any, device: str = "auto", budget_ms: Optional[float] = None,
                 policy: str = "threshold", ratio: Optional[float] = None,
                 input_size: Optional[Tuple[int, int]] = None, labels: Optional[Sequence[str]] = None,
                 topk: int = 5, color: str = "bgr", levels: Optional[Sequence[float]] = None,
                 queue_size: int = 4, calibrate_runs: int = 3, threads: Any = "auto",
                 backend: str = "torch", onnx_cache: Optional[str] = None, onnx_form: Optional[str] = None,
                 cuda_graphs: bool = True, precision: Optional[str] = None, fit: str = "squash"):
        self.device = resolve_device(device)
        self.model = resolve_model(model).to(self.device).eval()
        self.precision = self._set_precision(precision, backend, given=self.model is model)
        if policy not in ("all", "threshold", "ratio"):
            raise ValueError(f'policy must be "all", "threshold" or "ratio", got {policy!r}')
        if policy == "ratio" and ratio is None:
            raise ValueError('policy "ratio" needs ratio=')
        if ratio is not None and policy != "ratio":
            raise ValueError(f'ratio= is the keep level of policy "ratio"; with policy {policy!r} it would be '
                             'ignored (a budget picks its own levels)')
        if ratio is not None and not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
            raise ValueError(f"ratio is a keep level in (0, 1], got {ratio!r}")
        if color not in ("bgr", "rgb"):
            raise ValueError(f'color must be "bgr" (OpenCV) or "rgb", got {color!r}')
        if fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
        self.fit = fit
        if backend not in ("torch", "onnxruntime", "tensorrt"):
            raise ValueError(f'backend must be "torch", "onnxruntime" or "tensorrt", got {backend!r}')
        # ONNX Runtime also runs policy "threshold" (one graph, an image per run); TensorRT ratio graphs only
        threshold_graph = backend == "onnxruntime" and budget_ms is None and policy == "threshold"
        if backend != "torch" and budget_ms is None and policy != "ratio" and not threshold_graph:
            runs = 'policy "threshold" or "ratio" graphs' if backend == "onnxruntime" else 'policy "ratio" graphs'
            raise ValueError(f'backend "{backend}" runs {runs}: give policy="ratio", ratio= or budget_ms=, '
                             f'not policy {policy!r}')
        if backend == "tensorrt" and self.device.type != "cuda":
            raise ValueError(f'backend "tensorrt" runs on a CUDA device, not {self.device}')
        self.policy, self.ratio, self.color, self.backend = policy, ratio, color, backend
        self._ratio_cache: Dict[tuple, List[float]] = {}
        if int(topk) < 1:
            raise ValueError(f"topk must be at least 1, got {topk}")
        self.topk = min(int(topk), self.model.vit.num_classes)  # all classes at most
        expected = tuple(self.model.input_size[1:])
        if input_size is not None and tuple(input_size) != expected:
            raise ValueError(f"input_size {tuple(input_size)} does not match the model's {expected}")
        self.input_size = expected
        mean, std, _ = model_normalization(self.model)
        self._mean, self._std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self._pad = np.clip(np.round(self._mean * 255), 0, 255).astype(np.uint8)  # letterbox: ~0 once normalised
        if labels is not None and len(labels) != self.model.vit.num_classes:
            raise ValueError(f"labels: {len(labels)} given for {self.model.vit.num_classes} classes")
        self.labels = list(labels) if labels is not None else self.model.class_names()
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._frames = 0
        self._records: deque = deque(maxlen=10000)
        self._dropped: Counter = Counter()
        self._reconnects = 0  # live sources that came back after a loss (stream(..., reconnect=N))
        self._dropped_lock = threading.Lock()  # several capture threads count drops and reconnects (streams)
        self._skipped: List[str] = []
        self._end_reason: Optional[str] = None
        self._t_first: Optional[float] = None
        self._t_last: Optional[float] = None
        self._streams: List[threading.Event] = []
        self.controller: Optional[BudgetController] = None
        # CPU thread counts the controller may choose between: fewer threads stall less when
        # another process competes for the cores ("auto": torch's current count, and 1)
        n = torch.get_num_threads()
        if threads == "auto":
            threads = [n, 1] if self.device.type == "cpu" and n > 1 and backend == "torch" else [n]
        modes = [threads] if isinstance(threads, int) else list(threads) if isinstance(threads, (list, tuple)) else []
        if not modes or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in modes):
            raise ValueError(f"threads must be 'auto', a positive int or a list of them, got {threads!r}")
        # most threads first: the controller's modes go from most to least slowed by a competing load
        self.thread_modes = sorted(set(modes), reverse=True)
        # with several thread modes: other processes' CPU use, so a faster mode is retried only
        # once the cores are free again (None where the OS does not tell)
        self._contention = CpuContention() if len(self.thread_modes) > 1 else None
        self._slow_at = -math.inf  # when the last frame far slower than predicted started
        try:
            self._cores = len(os.sched_getaffinity(0))
        except AttributeError:
            self._cores = os.cpu_count() or 1
        # GPU: a CUDA stream of its own, pinned host buffers and non-blocking copies
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        # policy-"ratio" graphs per keep level (ONNX Runtime sessions, TensorRT engines or CUDA graphs),
        # or ONNX Runtime's policy-"threshold" graph
        self._graphs = None
        graph_levels = sorted({float(l) for l in (levels or default_levels())} if budget_ms is not None
                              else {float(ratio)} if ratio is not None else set(), reverse=True)
        if onnx_form is None:
            onnx_form = "counts" if backend == "onnxruntime" else "levels"
        if backend != "torch":
            if backend == "onnxruntime":
                from ..export.onnxruntime_backend import OnnxRuntimeBackend
                self._graphs = OnnxRuntimeBackend(self.model, graph_levels, onnx_cache, threads=n,
                                                  form="threshold" if threshold_graph else onnx_form,
                                                  int8=self.precision == "int8")
            else:
                from ..export.tensorrt_backend import TensorRTBackend
                self._graphs = TensorRTBackend(self.model, graph_levels, onnx_cache, form=onnx_form, device=self.device,
                                              fp16=self.precision == "fp16")
        elif cuda_graphs and self.device.type == "cuda" and (policy == "ratio" or budget_ms is not None):
            # static token counts per keep level: capture each level once, replay per frame
            from .cuda_graphs import CudaGraphLevels
            self._graphs = CudaGraphLevels(self.model, graph_levels, self.device)
        self._warm_up()
        if budget_ms is not None:
            self._start_controller(budget_ms, levels or default_levels(), calibrate_runs)

    # -- set-up ----------------------------------------------------------------------------------
    def _set_precision(self, precision: Optional[str], backend: str, given: bool) -> str:
        """Cast the model's weights for `precision` (None: as the model is) and say what runs.
        A model object the caller passed is copied before a cast, not changed under them."""
        if precision is not None and precision not in RUNTIME_PRECISIONS:
            raise ValueError(f"precision must be one of {RUNTIME_PRECISIONS} or None (the model's own), got {precision!r}")
        if precision == "int8" and backend != "onnxruntime":
            raise ValueError(f'precision "int8" runs int8 ONNX Runtime graphs: give backend="onnxruntime", '
                             f'not backend={backend!r}')
        names = {dtype: name for name, dtype in PRECISION_DTYPES.items()}
        current = next(self.model.parameters()).dtype
        if backend == "onnxruntime":
            if precision not in (None, "fp32", "auto", "int8"):
                raise ValueError('backend "onnxruntime" runs float32 graphs, or int8 ones for CPUs: precision '
                                 f'"fp32", "auto" or "int8", not {precision!r}')
            name, dtype = ("int8" if precision == "int8" else "fp32"), torch.float32
        elif backend == "tensorrt":  # TensorRT builds its own engines from float32 ones: fp16 unless told fp32
            if precision == "bf16":
                raise ValueError('backend "tensorrt": precision "fp16" (its default) or "fp32", not "bf16"')
            name, dtype = ("fp32" if precision == "fp32" else "fp16"), torch.float32
        else:
            dtype = current if precision is None else inference_dtype(self.device, precision)
            if dtype not in names:
                raise ValueError(f"model weights are {dtype}: give precision= one of {PRECISIONS}")
            name = names[dtype]
        if dtype != current:
            self.model = (copy.deepcopy(self.model) if given else self.model).to(dtype)
        return name

    def _warm_up(self) -> None:
        x = torch.zeros(1, *self.model.input_size)
        for _ in range(2):
            self._time_model(self._to_device(x), None)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self._stream is None:
            return x.to(self.device)
        with torch.cuda.stream(self._stream):
            return x.pin_memory().to(self.device, non_blocking=True)

    def _start_controller(self, budget_ms: float, levels: Sequence[float], runs: int) -> None:
        levels = sorted((float(l) for l in levels), reverse=True)
        if not all(0.0 <= l <= 1.0 for l in levels):
            raise ValueError(f"levels are keep ratios in [0, 1], got {levels}")
        x = self._to_device(torch.zeros(1, *self.model.input_size))
        with torch.inference_mode():
            full = self.model(x, policy="ratio", ratio=1.0).flops[0].item()
            costs = [self.model(x, policy="ratio", ratio=self._stage_ratios(l)).flops[0].item() / full for l in levels]
            lat = []
            for l in levels:  # warm-up, then the median of `runs`
                self._time_model(x, l)
                lat.append(float(np.median([self._time_model(x, l)[1] for _ in range(max(1, runs))])))
        self.controller = BudgetController(levels, costs, budget_ms, modes=len(self.thread_modes))
        self.controller.calibrate(costs, lat)
        self.calibration = {"levels": levels, "costs": costs, "latency_ms": lat, "threads": self.thread_modes}
        mid = len(levels) // 2
        for m, n in enumerate(self.thread_modes[1:], 1):
            with self._threads(n), torch.inference_mode():
                t = float(np.median([self._time_model(x, levels[mid])[1] for _ in range(max(1, runs))]))
            self.controller.calibrate_mode(m, mid, t)

    @contextmanager
    def _threads(self, n: Optional[int]):
        """Run a block with torch's and OpenCV's CPU thread counts set to n (restored after): on a
        contended CPU a pool's second thread that lands on the busy core stalls the whole call."""
        if n is None or self.device.type != "cpu":
            yield
            return
        cv2 = import_cv2()
        old, old_cv = torch.get_num_threads(), cv2.getNumThreads()
        if n != old:
            torch.set_num_threads(n)
        if n != old_cv:
            cv2.setNumThreads(n)
        try:
            yield
        finally:
            if torch.get_num_threads() != old:
                torch.set_num_threads(old)
            if cv2.getNumThreads() != old_cv:
                cv2.setNumThreads(old_cv)

    def _frame_threads(self) -> Optional[int]:
        """The thread count the controller runs frames with now (None: no controller)."""
        return self.thread_modes[self.controller.mode] if self.controller else None

    def _quiet(self) -> Optional[bool]:
        """Whether the cores the widest thread mode needs are free of other processes (within
        0.3 of a core); None when unknown."""
        others = self._contention.sample() if self._contention is not None else None
        if others is None:
            return None
        if self._contention.window_start <= self._slow_at:
            # The reading averages over time before the last slow-down: a load that has just
            # started barely shows in it yet. Not quiet until a window after the slow-down says so.
            return False
        return self._cores - others >= max(self.thread_modes) - 0.3

    # -- one frame -------------------------------------------------------------------------------
    @property
    def budget_ms(self) -> Optional[float]:
        return self.controller.budget_ms if self.controller else None

    @budget_ms.setter
    def budget_ms(self, value: float) -> None:
        if self.controller is None:
            raise ValueError("this Runtime has no budget controller: create it with budget_ms=")
        with self._lock:
            self.controller.set_budget(value)

    def _to_rgb(self, frame: Any, color: Optional[str]) -> np.ndarray:
        color = color or self.color
        if hasattr(frame, "convert") and hasattr(frame, "size"):  # PIL image
            return np.array(frame.convert("RGB"))
        if isinstance(frame, torch.Tensor):
            frame = frame.detach().cpu().numpy()
        if not isinstance(frame, np.ndarray):
            raise ValueError(f"frame must be an H x W x 3 uint8 array, a PIL image or a tensor, got {type(frame).__name__}")
        frame = _three_channels(frame)
        if frame.shape[0] < 2 or frame.shape[1] < 2:
            raise ValueError(f"frame too small: {frame.shape[1]}x{frame.shape[0]}")
        return frame[..., ::-1] if color == "bgr" else frame

    def preprocess(self, frame: Any, color: Optional[str] = None) -> torch.Tensor:
        """Frame -> normalised [1, 3, h, w], placed as `fit` says (by default the whole frame
        resized, so the heatmap maps back onto all of it)."""
        import_cv2()  # without OpenCV: its clear ImportError, here
        rgb = self._to_rgb(frame, color)
        small = fit_frame(rgb, self.input_size, self.fit, self._pad)
        # Normalised in numpy (one thread), not torch: a torch op here would wake torch's thread
        # pool, whose worker sharing a core with a busy process stalls the frame by tens of ms.
        x = (small.astype(np.float32) / np.float32(255.0) - self._mean) / self._std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]

    def _stage_ratios(self, level: float) -> List[float]:
        """`model.stage_ratios(level)`, solved once per level and keep profile: it runs every frame."""
        key = (float(level), tuple(self.model.keep_profile or ()))
        if key not in self._ratio_cache:
            self._ratio_cache[key] = self.model.stage_ratios(level)
        return self._ratio_cache[key]

    def _time_model(self, x: torch.Tensor, ratio: Optional[float], graphs: bool = True):
        """One forward at keep level `ratio` (None: the Runtime's own policy), timed. `graphs=False`:
        eager even where CUDA graphs (captured for batch 1) were made."""
        if ratio is None and self.policy == "ratio":
            ratio = self.ratio
        t0 = time.perf_counter()
        if self._graphs is not None and (graphs or self.backend != "torch"):
            if ratio is None and self._graphs.levels:
                ratio = max(self._graphs.levels)
            out = self._graphs(x, ratio)
            return out, (time.perf_counter() - t0) * 1e3
        with torch.inference_mode(), (torch.cuda.stream(self._stream) if self._stream is not None else _nullcontext()):
            if ratio is not None:
                out = self.model(x, policy="ratio", ratio=self._stage_ratios(ratio))
            else:
                out = self.model(x, policy=self.policy)
            if self._stream is not None:
                self._stream.synchronize()
        return out, (time.perf_counter() - t0) * 1e3

    def _infer(self, frame: np.ndarray, x: torch.Tensor, pre_ms: float, timestamp: float) -> Result:
        with self._lock:
            level = self.controller.choose() if self.controller else None
            ratio = self.controller.keep_ratio if self.controller else None
            mode = self.controller.mode if self.controller else 0
            x = self._to_device(x)
            with self._threads(self._frame_threads()):
                started = time.perf_counter()
                out, model_ms = self._time_model(x, ratio)
                t0 = time.perf_counter()
                answer = self._answer(out, 0, frame)
                post_ms = (time.perf_counter() - t0) * 1e3
            total = pre_ms + model_ms + post_ms
            if self.controller:
                if model_ms > 1.5 * (self.controller.predict(level, mode) - self.controller.overhead_ms):
                    self._slow_at = started
                self.controller.observe(level, model_ms, pre_ms + post_ms, mode, self._quiet())
            index = self._record(answer, total)
        return Result(*answer, {"preprocess": pre_ms, "model": model_ms, "postprocess": post_ms, "total": total},
                      index, timestamp, ratio, self.thread_modes[mode] if self.controller else None,
                      self.fit, self.input_size)

    def _answer(self, out, i: int, frame: np.ndarray) -> tuple:
        """Image `i` of a forward's output as Result's first fields: top-k labels, probabilities and
        indices, the heatmap at the frame's size, per-stage masks and keeps, the mean keep."""
        top = out.logits[i].float().softmax(-1).topk(self.topk)
        h, w = frame.shape[:2]
        heat = grid_to_frame(out.heatmap[i].float().cpu().numpy(), (h, w), self.input_size, self.fit)
        masks = out.keep_masks[i].view(-1, *self.model.grid_size).cpu().numpy()
        stage_keep = out.keep_ratio[i].tolist()
        return ([self.labels[j] for j in top.indices.tolist()], top.values.tolist(), top.indices.tolist(),
                np.clip(heat, 0, 1).astype(np.float32), masks, stage_keep, float(np.mean(stage_keep)))

    def _record(self, answer: tuple, total_ms: float) -> int:
        """Count one answered frame in stats() (caller holds the lock); returns its frame index."""
        index = self._frames
        self._frames += 1
        now = time.perf_counter()
        self._t_first = self._t_first or now
        self._t_last = now
        self._records.append((total_ms, answer[-1], self.budget_ms))
        return index

    def __call__(self, frame: Any, color: Optional[str] = None) -> Result:
        """One frame (H x W x 3 uint8, BGR unless color="rgb"; H x W grey; H x W x 4 with alpha;
        a PIL image; a tensor of those shapes)."""
        timestamp = time.time()
        t0 = time.perf_counter()
        if self.controller is None:
            x = self.preprocess(frame, color)
        else:  # under the lock: the thread counts are process-wide, set and restored by one caller at a time
            with self._lock, self._threads(self._frame_threads()):
                x = self.preprocess(frame, color)
        pre_ms = (time.perf_counter() - t0) * 1e3
        return self._infer(np.asarray(frame) if not isinstance(frame, np.ndarray) else frame, x, pre_ms, timestamp)

    def batch(self, frames: Sequence[Any], color: Optional[str] = None) -> List[Result]:
        """Several frames (one per camera, say) in one forward; Results in order, as `rt(frame)`
        gives them. With policy "threshold" each image keeps its own number of tokens, and the
        batch's kept tokens share one packed buffer, no padding. Each Result's latency is the whole
        batch's (what every frame waited). No latency budget: the controller is calibrated per
        frame, so a Runtime with budget_ms= refuses (use rt(frame) or rt.stream). The TensorRT
        backend takes at most its engines' max_batch (8) frames at once."""
        if self.controller is not None:
            raise ValueError("batch() runs without a latency budget (the budget controller is calibrated per "
                             "frame): create the Runtime without budget_ms=, or call it per frame")
        frames = list(frames)
        if not frames:
            raise ValueError("batch() needs at least one frame")
        timestamp = time.time()
        t0 = time.perf_counter()
        xs = []
        for i, frame in enumerate(frames):
            try:
                xs.append(self.preprocess(frame, color))
            except ValueError as exc:
                raise ValueError(f"frame {i}: {exc}") from None
        pre_ms = (time.perf_counter() - t0) * 1e3
        return self._answer_batch(frames, xs, pre_ms, timestamp)

    def _answer_batch(self, frames: List[Any], xs: List[torch.Tensor], pre_ms: float, timestamp: float) -> List[Result]:
        """One forward for preprocessed frames; their Results, each with the whole batch's latency."""
        arrays = [np.asarray(f) for f in frames]
        with self._lock:
            out, model_ms = self._time_model(self._to_device(torch.cat(xs)), None, graphs=False)
            t0 = time.perf_counter()
            answers = [self._answer(out, i, a) for i, a in enumerate(arrays)]
            post_ms = (time.perf_counter() - t0) * 1e3
            latency = {"preprocess": pre_ms, "model": model_ms, "postprocess": post_ms,
                       "total": pre_ms + model_ms + post_ms}
            return [Result(*a, dict(latency), self._record(a, latency["total"]), timestamp, fit=self.fit,
                           input_size=self.input_size) for a in answers]

    # -- streams ---------------------------------------------------------------------------------
    def stream(self, source: Any, drop: Optional[bool] = None, color: Optional[str] = None,
               reconnect: int = 0) -> Iterator[Tuple[np.ndarray, Result]]:
        """Yield (frame, result) for a camera index, a video file, an RTSP/HTTP URL or an iterable
        of frames. Capture and preprocessing run on a background thread; the queue is bounded.
        Live sources drop the oldest frame under overload, files and iterables drop none unless
        `drop=True`. A bad frame is skipped and recorded; the end of the source, a lost camera or a
        source that raises ends the stream with the reason in `stats()["end_reason"]`.
        `reconnect=N`: a live source (camera, URL, GStreamer pipeline) that stops giving frames is
        opened again, up to N attempts in a row, 0.5 s, 1 s, 2 s, 4 s, then 8 s apart; the stream
        goes on when it comes back (`stats()["reconnects"]` counts the returns)."""
        capture = _Capture(self, source, drop, color, "", reconnect)
        self._end_reason = None
        try:
            while True:
                item = capture.get()
                if item is None:
                    self._end_reason = capture.reason
                    return
                frame, x, pre_ms, timestamp = item
                yield frame, self._infer(frame, x, pre_ms, timestamp)
        finally:
            capture.close()

    def streams(self, sources: Sequence[Any], drop: Optional[bool] = None, color: Optional[str] = None,
                reconnect: int = 0) -> Iterator[List[Tuple[int, np.ndarray, Result]]]:
        """Several sources (one per camera) at once: yield, per round, one (source index, frame,
        result) for each source still running, all answered in one forward (`batch`). Each source
        is captured as `stream` captures one (live ones drop their oldest frames under overload); a
        round waits for a frame from every running source except one being opened again
        (`reconnect`, as for `stream`, per source); the ends and their reasons go into
        `stats()["end_reason"]`, one per source, and the rounds go on while any source runs. No
        latency budget, as for `batch`."""
        if self.controller is not None:
            raise ValueError("streams() runs without a latency budget (the budget controller is calibrated per "
                             "frame): create the Runtime without budget_ms=, or stream each source on its own")
        sources = list(sources)
        if not sources:
            raise ValueError("streams() needs at least one source")
        captures: List[_Capture] = []
        try:
            for i, source in enumerate(sources):  # all opened (or failed) before the first round
                captures.append(_Capture(self, source, drop, color, f"source {i}: ", reconnect))
            self._end_reason = None
            running = list(range(len(captures)))
            while running:
                items = {i: captures[i].get(wait_while_reconnecting=False) for i in running}
                running = [i for i in running if items[i] is not None]
                ready = [i for i in running if items[i] is not _PENDING]  # not those reconnecting
                if not ready:
                    continue
                frames = [items[i][0] for i in ready]
                pre_ms = sum(items[i][2] for i in ready)
                yield list(zip(ready, frames, self._answer_batch(frames, [items[i][1] for i in ready],
                                                                 pre_ms, min(items[i][3] for i in ready))))
            self._end_reason = "; ".join(f"source {i}: {c.reason}" for i, c in enumerate(captures))
        finally:
            for c in captures:
                c.close()

    # -- reporting and lifetime -------------------------------------------------------------------
    def stats(self) -> Dict[str, Any]:
        with self._lock:
            records = list(self._records)
            total = np.array([r[0] for r in records]) if records else np.zeros(0)
            budgets = [(r[0], r[2]) for r in records if r[2] is not None]
            span = (self._t_last - self._t_first) if self._t_first and self._t_last else 0.0
            return {
                "frames": self._frames,
                "fps": (len(records) - 1) / span if span > 0 else 0.0,
                "latency_ms": {f"p{p}": float(np.percentile(total, p)) if total.size else None for p in (50, 95, 99)},
                "deadline_hit_rate": (sum(t <= b for t, b in budgets) / len(budgets)) if budgets else None,
                "mean_keep_ratio": float(np.mean([r[1] for r in records])) if records else None,
                "dropped": dict(self._dropped),
                "reconnects": self._reconnects,
                "skipped": list(self._skipped),
                "budget_unmet_frames": self.controller.unmet_frames if self.controller else 0,
                "end_reason": self._end_reason,
                "precision": self.precision,
                "backend": self.backend,
            }

    def close(self) -> None:
        for stop in list(self._streams):
            stop.set()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Capture:
    """One source read and preprocessed on a background thread into a bounded queue (a live source
    drops its oldest frame when the queue is full); `get()` gives (frame, input, preprocess ms,
    timestamp) or None at the end, with the reason in `reason`. Bad frames are skipped and recorded
    in the Runtime's stats, named with `prefix`."""

    def __init__(self, rt: "Runtime", source: Any, drop: Optional[bool], color: Optional[str], prefix: str,
                 reconnect: int = 0):
        self.stop = threading.Event()
        self.src = open_source(source, reconnect, self.stop)
        self.rt, self.color, self.prefix = rt, color, prefix
        self.drop = self.src.kind == LIVE if drop is None else drop
        self.q: queue.Queue = queue.Queue(maxsize=rt.queue_size)
        self.reason: Optional[str] = None
        rt._streams.append(self.stop)
        self.thread = threading.Thread(target=self._produce, name="iared-capture", daemon=True)
        self.thread.start()

    def _put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.05)
                return
            except queue.Full:
                if self.drop:
                    try:
                        self.q.get_nowait()
                        with self.rt._dropped_lock:
                            self.rt._dropped["overload"] += 1
                    except queue.Empty:
                        pass

    def _produce(self) -> None:
        reason = "end of source"
        index = reconnects = 0
        try:
            for ok, frame in self.src.frames():
                if getattr(self.src, "reconnects", 0) > reconnects:
                    with self.rt._dropped_lock:
                        self.rt._reconnects += self.src.reconnects - reconnects
                    reconnects = self.src.reconnects
                if self.stop.is_set():
                    reason = "stopped"
                    break
                if not ok:  # (a stop while reconnecting was caught just above)
                    if self.src.kind != LIVE or self.src.at_end():
                        reason = "end of source"
                    elif not index:
                        reason = f"{self.src.name}: no frame could be read"
                    else:
                        tries = getattr(self.src, "failed_attempts", 0)
                        reason = f"{self.src.name}: lost" + (f" ({tries} reconnect attempts failed)" if tries else "")
                    break
                timestamp = time.time()
                t0 = time.perf_counter()
                try:
                    x = self.rt.preprocess(frame, self.color)
                except (ValueError, TypeError) as exc:
                    self.rt._skipped.append(f"{self.prefix}frame {index}: {exc}")
                    index += 1
                    continue
                self._put((frame, x, (time.perf_counter() - t0) * 1e3, timestamp))
                index += 1
        except Exception as exc:  # a source that raises ends the stream, recorded
            reason = f"source raised {type(exc).__name__}: {exc}"
        finally:
            self._put((_END, reason, None, None))

    def get(self, wait_while_reconnecting: bool = True) -> Optional[tuple]:
        """The next item; None at the end; _PENDING, with `wait_while_reconnecting=False`, while the
        source is being opened again and nothing is queued."""
        if self.reason is not None:
            return None
        if wait_while_reconnecting:
            item = self.q.get()
        else:  # look every 50 ms whether the source is away
            while True:
                try:
                    item = self.q.get(timeout=0.05)
                    break
                except queue.Empty:
                    if getattr(self.src, "reconnecting", False):
                        return _PENDING
        if item[0] is _END:
            self.reason = item[1]
            return None
        return item

    def close(self) -> None:
        self.stop.set()
        while True:  # unblock the producer, then wait for it
            try:
                self.q.get_nowait()
            except queue.Empty:
                break
        self.thread.join(timeout=5)
        self.src.release()
        if self.stop in self.rt._streams:
            self.rt._streams.remove(self.stop)
