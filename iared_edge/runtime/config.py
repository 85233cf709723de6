"""RuntimeConfig: every setting of a `Runtime`, validated in one place and shared with the CLI.

cfg = RuntimeConfig(budget_ms=30, precision="auto")
rt = Runtime("demo", cfg)                      # or Runtime("demo", budget_ms=30, precision="auto")

ap = argparse.ArgumentParser(); RuntimeConfig.add_arguments(ap)
rt = Runtime("demo", RuntimeConfig.from_args(ap.parse_args()))
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Any, List, Optional, Sequence, Tuple

from ..devices import RUNTIME_PRECISIONS
from ..preprocess import FITS
from .controller import default_levels

POLICIES = ("threshold", "all", "level")
BACKENDS = ("torch", "onnxruntime", "tensorrt")
ONNX_FORMS = ("levels", "counts")


@dataclass
class RuntimeConfig:
    """What a Runtime runs and how. Invalid values raise a ValueError naming the field.

    device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
    budget_ms: a latency budget per frame: a controller picks each frame's keep level and, on a
        CPU, its thread count. None: no budget.
    policy: without a budget, "threshold" (each frame its own tokens; the paper's inference),
        "all", or "level" with `level`.
    level: the keep level of policy "level", in (0, 1] (`IARedViT.stage_levels`).
    input_size: checked against the model's (H, W). labels: class names, one per class.
    topk: how many labels a Result lists. color: "bgr" (OpenCV frames) or "rgb".
    fit: "squash" (the whole frame resized), "crop" (the centre, aspect ratio kept) or
        "letterbox" (the whole frame, aspect ratio kept, padded). The heatmap maps back either way.
    levels: the budget's keep levels (default 1.0, 0.9, ..., 0.1).
    queue_size: frames a stream holds between capture and model (live sources drop the oldest).
    calibrate_runs: timed forwards per level in the budget's start-up calibration.
    threads: "auto", an int or a list: CPU thread counts the budget controller may choose between.
    backend: "torch", "onnxruntime" or "tensorrt" (the last two run exported graphs, written to
        `onnx_cache`). onnx_form: "levels" (one graph per keep level) or "counts" (one graph, the
        keep counts an input); default "counts" for ONNX Runtime, "levels" for TensorRT.
    cuda_graphs: on a GPU, replay a CUDA graph per keep level (policy "level" or a budget).
    precision: "fp32", "fp16", "bf16", "auto", or None (the model as it is); "int8" with backend
        "onnxruntime" (int8 weights, for CPUs).
    prepack: on a CPU in float32, the torch backend runs its linears with oneDNN-prepacked weights
        where they see few rows (`iared_edge.prepack`: faster at batch 1 and low keep levels; the
        weights held twice).
    """

    device: str = "auto"
    budget_ms: Optional[float] = None
    policy: str = "threshold"
    level: Optional[float] = None
    input_size: Optional[Tuple[int, int]] = None
    labels: Optional[Sequence[str]] = None
    topk: int = 5
    color: str = "bgr"
    fit: str = "squash"
    levels: Optional[Sequence[float]] = None
    queue_size: int = 4
    calibrate_runs: int = 3
    threads: Any = "auto"
    backend: str = "torch"
    onnx_cache: Optional[str] = None
    onnx_form: Optional[str] = None
    cuda_graphs: bool = True
    precision: Optional[str] = None
    prepack: bool = True

    def __post_init__(self) -> None:
        if self.policy == "ratio":
            raise ValueError('policy "ratio" is now called "level" (with level= for the keep level)')
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.policy == "level" and self.level is None:
            raise ValueError('policy "level" needs level= (a keep level in (0, 1])')
        if self.level is not None and self.policy != "level":
            raise ValueError(
                f'level= is the keep level of policy "level"; with policy {self.policy!r} it would be '
                "ignored (a budget picks its own levels)"
            )
        if self.level is not None and not (_is_number(self.level) and 0 < self.level <= 1):
            raise ValueError(f"level is a keep level in (0, 1], got {self.level!r}")
        if self.budget_ms is not None and not (_is_number(self.budget_ms) and self.budget_ms > 0):
            raise ValueError(f"budget_ms must be a positive number of milliseconds, got {self.budget_ms!r}")
        if self.levels is not None:
            if not self.levels or not all(_is_number(v) and 0.0 <= v <= 1.0 for v in self.levels):
                raise ValueError(f"levels are keep levels in [0, 1], got {list(self.levels)}")
        if self.color not in ("bgr", "rgb"):
            raise ValueError(f'color must be "bgr" (OpenCV) or "rgb", got {self.color!r}')
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {self.fit!r}")
        if not _is_number(self.topk) or int(self.topk) < 1:
            raise ValueError(f"topk must be at least 1, got {self.topk}")
        if not _is_number(self.queue_size) or int(self.queue_size) < 1:
            raise ValueError(f"queue_size must be at least 1, got {self.queue_size}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.onnx_form is not None and self.onnx_form not in ONNX_FORMS:
            raise ValueError(f"onnx_form must be one of {ONNX_FORMS} or None, got {self.onnx_form!r}")
        if self.backend != "torch" and self.budget_ms is None and self.policy != "level" and not self.threshold_graph:
            runs = 'policy "threshold" or "level" graphs' if self.backend == "onnxruntime" else 'policy "level" graphs'
            raise ValueError(
                f'backend "{self.backend}" runs {runs}: give policy="level" with level=, or budget_ms=, '
                f"not policy {self.policy!r}"
            )
        if self.precision is not None and self.precision not in RUNTIME_PRECISIONS:
            raise ValueError(
                f"precision must be one of {RUNTIME_PRECISIONS} or None (the model's own), got {self.precision!r}"
            )
        if self.precision == "int8" and self.backend != "onnxruntime":
            raise ValueError(
                f'precision "int8" runs int8 ONNX Runtime graphs: give backend="onnxruntime", '
                f"not backend={self.backend!r}"
            )
        if self.backend == "onnxruntime" and self.precision not in (None, "fp32", "auto", "int8"):
            raise ValueError(
                'backend "onnxruntime" runs float32 graphs, or int8 ones for CPUs: precision '
                f'"fp32", "auto" or "int8", not {self.precision!r}'
            )
        if self.backend == "tensorrt" and self.precision == "bf16":
            raise ValueError('backend "tensorrt": precision "fp16" (its default) or "fp32", not "bf16"')
        modes = self.thread_choices(1)  # validates the form; "auto" is resolved by the Runtime
        if not modes:
            raise ValueError(f"threads must be 'auto', a positive int or a list of them, got {self.threads!r}")

    @property
    def threshold_graph(self) -> bool:
        """ONNX Runtime runs policy "threshold" as one graph, an image per run."""
        return self.backend == "onnxruntime" and self.budget_ms is None and self.policy == "threshold"

    @property
    def graph_levels(self) -> List[float]:
        """The keep levels a graph backend prepares, highest first (none for the threshold graph)."""
        if self.budget_ms is not None:
            return sorted({float(v) for v in (self.levels or default_levels())}, reverse=True)
        return [float(self.level)] if self.level is not None else []

    @property
    def form(self) -> str:
        """The ONNX graphs' form: "threshold", or onnx_form with its per-backend default."""
        if self.threshold_graph:
            return "threshold"
        return self.onnx_form or ("counts" if self.backend == "onnxruntime" else "levels")

    def thread_choices(self, current: int, cpu: bool = True) -> List[int]:
        """CPU thread counts, most first ("auto": `current` and 1 on a CPU with the torch backend)."""
        t = self.threads
        if t == "auto":
            t = [current, 1] if cpu and current > 1 and self.backend == "torch" else [current]
        modes = [t] if isinstance(t, int) else list(t) if isinstance(t, (list, tuple)) else []
        if not modes or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in modes):
            return []
        return sorted(set(modes), reverse=True)

    # -- the command line ------------------------------------------------------------------------
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """The Runtime's command-line options (the sample apps and `iared-edge` commands share them)."""
        g = parser.add_argument_group("runtime")
        g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
        g.add_argument("--budget-ms", type=float, default=None, help="latency budget per frame (ms)")
        g.add_argument(
            "--policy",
            choices=POLICIES,
            default="threshold",
            help="without a budget: threshold (each frame its own tokens), all, or level (with --level)",
        )
        g.add_argument("--level", type=float, default=None, help="keep level in (0, 1] for --policy level")
        g.add_argument(
            "--precision",
            choices=RUNTIME_PRECISIONS,
            default=None,
            help="fp32, fp16, bf16, or auto (fp16 on a GPU, bf16 on a CPU with bf16 instructions, else "
            "fp32); int8 with --backend onnxruntime; default: the model's own (fp32 when saved)",
        )
        g.add_argument(
            "--backend",
            choices=BACKENDS,
            default="torch",
            help="torch, onnxruntime (exported graphs; faster at batch 1 on a CPU) or tensorrt (GPU)",
        )
        g.add_argument(
            "--fit",
            choices=FITS,
            default="squash",
            help="how a frame becomes the model's input: squash (whole frame, aspect ratio changed), "
            "crop (centre, aspect kept) or letterbox (whole frame, aspect kept, padded)",
        )
        g.add_argument("--topk", type=int, default=5, help="labels per result")
        g.add_argument(
            "--no-cuda-graphs",
            dest="cuda_graphs",
            action="store_false",
            help="on a GPU, run eagerly instead of replaying a CUDA graph per keep level",
        )
        g.add_argument(
            "--no-prepack",
            dest="prepack",
            action="store_false",
            help="on a CPU, run linears with the default GEMM instead of oneDNN-prepacked weights",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RuntimeConfig:
        """A config from parsed options (those `add_arguments` adds; the rest keep their defaults)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
