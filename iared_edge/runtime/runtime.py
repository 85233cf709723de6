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
import time
from collections import Counter, deque
from contextlib import contextmanager
from contextlib import nullcontext as _nullcontext
from dataclasses import fields
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..checkpoint import resolve_model
from ..devices import PRECISION_DTYPES, PRECISIONS, inference_dtype, resolve_device
from ..preprocess import fit_frame, grid_to_frame, model_normalization
from .backends import BackendOutput, TorchBackend, make_backend
from .config import RuntimeConfig
from .contention import CpuContention
from .controller import BudgetController, default_levels
from .result import Answer, Result, three_channels
from .sources import LIVE, import_cv2, open_source

_END = object()
_PENDING = object()  # a source being reconnected, nothing queued


class Runtime:
    """Frames in, `Result`s out: `rt(frame)`, `rt.batch(frames)`, `rt.stream(source)`,
    `rt.streams(sources)`; `rt.stats()` sums up. A context manager (leaving it stops the streams).

    model: an IARedViT, "demo" (the bundled model), a .safetensors saved by `save_model`, or a timm
        name (random weights: pass an IARedViT built with `IARedViT.from_timm(name, checkpoint=...)`).
    config: a `RuntimeConfig`, or its fields as keyword arguments (`Runtime("demo", budget_ms=30)`):
        device, budget_ms, policy / level, precision, backend, fit, ... (see RuntimeConfig).
    """

    def __init__(self, model: Any, config: Optional[RuntimeConfig] = None, **options: Any):
        if config is not None and options:
            raise ValueError(f"give a RuntimeConfig or keyword options, not both (got {sorted(options)})")
        if config is not None and not isinstance(config, RuntimeConfig):
            raise TypeError(f"config must be a RuntimeConfig, got {type(config).__name__}")
        try:
            self.config = config or RuntimeConfig(**options)
        except TypeError as exc:  # an unknown option: name it and the known ones
            known = ", ".join(f.name for f in fields(RuntimeConfig))
            raise TypeError(f"Runtime: {exc}; options are: {known}") from None
        c = self.config
        self.device = resolve_device(c.device)
        self.model = resolve_model(model).to(self.device).eval()
        self.precision = self._set_precision(c.precision, c.backend, given=self.model is model)
        self.policy, self.level, self.color, self.fit = c.policy, c.level, c.color, c.fit
        self.backend, self.queue_size = c.backend, c.queue_size
        self._check_model(c)
        self._init_stats()
        self._init_threads(c)
        # GPU: a CUDA stream of its own, pinned host buffers and non-blocking copies
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._backend = make_backend(
            self.model, c, self.device, self._stream, threads=torch.get_num_threads(), precision=self.precision
        )
        # batches of other sizes than a fixed-batch backend's (CUDA graphs) run eagerly
        self._eager = (
            self._backend
            if isinstance(self._backend, TorchBackend)
            else TorchBackend(self.model, c.policy, c.level, self._stream)
            if c.backend == "torch"
            else None
        )
        self._warm_up()
        self.controller: Optional[BudgetController] = None
        if c.budget_ms is not None:
            self._start_controller(c.budget_ms, c.levels or default_levels(), c.calibrate_runs)

    # -- set-up ----------------------------------------------------------------------------------
    def _check_model(self, c: RuntimeConfig) -> None:
        """The settings that depend on the model: input size, labels, top-k."""
        classes = self.model.vit.num_classes
        self.topk = min(int(c.topk), classes)  # all classes at most
        expected = tuple(self.model.input_size[1:])
        if c.input_size is not None and tuple(c.input_size) != expected:
            raise ValueError(f"input_size {tuple(c.input_size)} does not match the model's {expected}")
        self.input_size = expected
        mean, std, _ = model_normalization(self.model)
        self._mean, self._std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self._pad = np.clip(np.round(self._mean * 255), 0, 255).astype(np.uint8)  # letterbox: ~0 once normalised
        if c.labels is not None and len(c.labels) != classes:
            raise ValueError(f"labels: {len(c.labels)} given for {classes} classes")
        self.labels = list(c.labels) if c.labels is not None else self.model.class_names()

    def _init_stats(self) -> None:
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

    def _init_threads(self, c: RuntimeConfig) -> None:
        """CPU thread counts the controller may choose between: fewer threads stall less when
        another process competes for the cores."""
        # most threads first: the controller's modes go from most to least slowed by a competing load
        self.thread_modes = c.thread_choices(torch.get_num_threads(), cpu=self.device.type == "cpu")
        # with several thread modes: other processes' CPU use, so a faster mode is retried only
        # once the cores are free again (None where the OS does not tell)
        self._contention = CpuContention() if len(self.thread_modes) > 1 else None
        self._slow_at = -math.inf  # when the last frame far slower than predicted started
        try:
            self._cores = len(os.sched_getaffinity(0))
        except AttributeError:
            self._cores = os.cpu_count() or 1

    def _set_precision(self, precision: Optional[str], backend: str, given: bool) -> str:
        """Cast the model's weights for `precision` (None: as the model is) and say what runs.
        A model object the caller passed is copied before a cast, not changed under them."""
        # the config validated the combination of precision and backend
        names = {dtype: name for name, dtype in PRECISION_DTYPES.items()}
        current = next(self.model.parameters()).dtype
        if backend == "onnxruntime":
            name, dtype = ("int8" if precision == "int8" else "fp32"), torch.float32
        elif backend == "tensorrt":  # TensorRT builds its own engines from float32 ones: fp16 unless told fp32
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
        levels = sorted((float(v) for v in levels), reverse=True)
        x = self._to_device(torch.zeros(1, *self.model.input_size))
        with torch.inference_mode():
            # relative cost of each level from the token counts it keeps (the FLOPs model, no timing)
            full = self.model.flops(torch.full((1, self.model.num_stages), self.model.num_patches))[0].item()
            costs = [self.model(x, policy="level", level=v).flops[0].item() / full for v in levels]
            lat = []
            for v in levels:  # warm-up, then the median of `runs`
                self._time_model(x, v)
                lat.append(float(np.median([self._time_model(x, v)[1] for _ in range(max(1, runs))])))
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
            raise ValueError(
                f"frame must be an H x W x 3 uint8 array, a PIL image or a tensor, got {type(frame).__name__}"
            )
        frame = three_channels(frame)
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
        # pool, whose worker sharing a core with a busy process stalls the frame (docs/benchmarks.md,
        # 'Latency budget under a competing load').
        x = (small.astype(np.float32) / np.float32(255.0) - self._mean) / self._std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]

    def _time_model(self, x: torch.Tensor, level: Optional[float], graphs: bool = True):
        """One forward at keep level `level` (None: the Runtime's own policy), timed. `graphs=False`
        or a batch the backend was not prepared for (CUDA graphs: batch 1) runs eagerly. On a GPU
        every backend runs on the Runtime's stream, the one `_to_device` copied the frame on."""
        backend = self._backend
        if backend.fixed_batch is not None and (not graphs or x.shape[0] != backend.fixed_batch):
            backend = self._eager
        if level is None and self.policy == "level":
            level = self.level
        if level is None and backend.levels:
            level = max(backend.levels)
        t0 = time.perf_counter()
        with torch.cuda.stream(self._stream) if self._stream is not None else _nullcontext():
            out = backend(x, level)
        return out, (time.perf_counter() - t0) * 1e3

    def _infer(self, frame: np.ndarray, x: torch.Tensor, pre_ms: float, timestamp: float) -> Result:
        with self._lock:
            index = self.controller.choose() if self.controller else None
            level = self.controller.keep_level if self.controller else None
            mode = self.controller.mode if self.controller else 0
            x = self._to_device(x)
            with self._threads(self._frame_threads()):
                started = time.perf_counter()
                out, model_ms = self._time_model(x, level)
                t0 = time.perf_counter()
                answer = self._answer(out, 0, frame)
                post_ms = (time.perf_counter() - t0) * 1e3
            total = pre_ms + model_ms + post_ms
            if self.controller:
                if model_ms > 1.5 * (self.controller.predict(index, mode) - self.controller.overhead_ms):
                    self._slow_at = started
                self.controller.observe(index, model_ms, pre_ms + post_ms, mode, self._quiet())
            frame_index = self._record(answer.keep_ratio, total)
        latency = {"preprocess": pre_ms, "model": model_ms, "postprocess": post_ms, "total": total}
        return Result(
            **answer._asdict(),
            latency_ms=latency,
            frame_index=frame_index,
            timestamp=timestamp,
            keep_level=level,
            threads=self.thread_modes[mode] if self.controller else None,
            fit=self.fit,
            input_size=self.input_size,
        )

    def _answer(self, out: BackendOutput, i: int, frame: np.ndarray) -> Answer:
        """Image `i` of a forward's output, at the frame's size."""
        top = out.logits[i].float().softmax(-1).topk(self.topk)
        h, w = frame.shape[:2]
        heat = grid_to_frame(out.heatmap[i].float().cpu().numpy(), (h, w), self.input_size, self.fit)
        masks = out.keep_masks[i].view(-1, *self.model.grid_size).cpu().numpy()
        stage_keep = out.keep_ratio[i].tolist()
        return Answer(
            labels=[self.labels[j] for j in top.indices.tolist()],
            probs=top.values.tolist(),
            indices=top.indices.tolist(),
            heatmap=np.clip(heat, 0, 1).astype(np.float32),
            stage_masks=masks,
            stage_keep=stage_keep,
            keep_ratio=float(np.mean(stage_keep)),
        )

    def _record(self, keep_ratio: float, total_ms: float) -> int:
        """Count one answered frame in stats() (caller holds the lock); returns its frame index."""
        index = self._frames
        self._frames += 1
        now = time.perf_counter()
        self._t_first = self._t_first or now
        self._t_last = now
        self._records.append((total_ms, keep_ratio, self.budget_ms))
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
        frames = self._batch_frames(frames, "batch()")
        timestamp = time.time()
        t0 = time.perf_counter()
        xs = self._preprocess_frames(frames, color)
        pre_ms = (time.perf_counter() - t0) * 1e3
        return self._answer_batch(frames, xs, pre_ms, timestamp)

    def _batch_frames(self, frames: Sequence[Any], name: str) -> List[Any]:
        """The frames of a batch call, refused where a batch can't run: under a latency budget,
        or with no frame."""
        if self.controller is not None:
            raise ValueError(
                f"{name} runs without a latency budget (the budget controller is calibrated per "
                "frame): create the Runtime without budget_ms=, or call it per frame"
            )
        frames = list(frames)
        if not frames:
            raise ValueError(f"{name} needs at least one frame")
        return frames

    def _preprocess_frames(self, frames: List[Any], color: Optional[str]) -> List[torch.Tensor]:
        xs = []
        for i, frame in enumerate(frames):
            try:
                xs.append(self.preprocess(frame, color))
            except ValueError as exc:
                raise ValueError(f"frame {i}: {exc}") from None
        return xs

    def forward_frames(self, frames: Sequence[Any], color: Optional[str] = None) -> Tuple[BackendOutput, float]:
        """One forward for several frames, as `batch` runs it, with the output left on the patch
        grid (what a server sends on; the client maps it onto its frame): (BackendOutput on the
        CPU, milliseconds the forward and preprocessing took). The frames count in stats()."""
        frames = self._batch_frames(frames, "forward_frames()")
        t0 = time.perf_counter()
        xs = self._preprocess_frames(frames, color)
        with self._lock:
            out, _ = self._time_model(self._to_device(torch.cat(xs)), None, graphs=False)
            out = BackendOutput(out.logits.cpu(), out.heatmap.cpu(), out.keep_masks.cpu(), out.keep_ratio.cpu())
            total = (time.perf_counter() - t0) * 1e3
            for ratio in out.keep_ratio.mean(1).tolist():
                self._record(ratio, total)
        return out, total

    def _answer_batch(self, frames: List[Any], xs: List[torch.Tensor], pre_ms: float, timestamp: float) -> List[Result]:
        """One forward for preprocessed frames; their Results, each with the whole batch's latency."""
        arrays = [np.asarray(f) for f in frames]
        with self._lock:
            out, model_ms = self._time_model(self._to_device(torch.cat(xs)), None, graphs=False)
            t0 = time.perf_counter()
            answers = [self._answer(out, i, a) for i, a in enumerate(arrays)]
            post_ms = (time.perf_counter() - t0) * 1e3
            latency = {
                "preprocess": pre_ms,
                "model": model_ms,
                "postprocess": post_ms,
                "total": pre_ms + model_ms + post_ms,
            }
            return [
                Result(
                    **a._asdict(),
                    latency_ms=dict(latency),
                    frame_index=self._record(a.keep_ratio, latency["total"]),
                    timestamp=timestamp,
                    fit=self.fit,
                    input_size=self.input_size,
                )
                for a in answers
            ]

    # -- streams ---------------------------------------------------------------------------------
    def stream(
        self, source: Any, drop: Optional[bool] = None, color: Optional[str] = None, reconnect: int = 0
    ) -> Iterator[Tuple[np.ndarray, Result]]:
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

    def streams(
        self, sources: Sequence[Any], drop: Optional[bool] = None, color: Optional[str] = None, reconnect: int = 0
    ) -> Iterator[List[Tuple[int, np.ndarray, Result]]]:
        """Several sources (one per camera) at once: yield, per round, one (source index, frame,
        result) for each source still running, all answered in one forward (`batch`). Each source
        is captured as `stream` captures one (live ones drop their oldest frames under overload); a
        round waits for a frame from every running source except one being opened again
        (`reconnect`, as for `stream`, per source); the ends and their reasons go into
        `stats()["end_reason"]`, one per source, and the rounds go on while any source runs. No
        latency budget, as for `batch`."""
        if self.controller is not None:
            raise ValueError(
                "streams() runs without a latency budget (the budget controller is calibrated per "
                "frame): create the Runtime without budget_ms=, or stream each source on its own"
            )
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
                yield list(
                    zip(
                        ready,
                        frames,
                        self._answer_batch(
                            frames, [items[i][1] for i in ready], pre_ms, min(items[i][3] for i in ready)
                        ),
                    )
                )
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

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Capture:
    """One source read and preprocessed on a background thread into a bounded queue (a live source
    drops its oldest frame when the queue is full); `get()` gives (frame, input, preprocess ms,
    timestamp) or None at the end, with the reason in `reason`. Bad frames are skipped and recorded
    in the Runtime's stats, named with `prefix`."""

    def __init__(
        self, rt: Runtime, source: Any, drop: Optional[bool], color: Optional[str], prefix: str, reconnect: int = 0
    ):
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
