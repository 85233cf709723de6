"""Runs exported graphs with ONNX Runtime: policy "level", one session per keep level (form
"levels") or one of the graph whose keep counts are an input (form "counts"); or policy
"threshold" (form "threshold": one session, one image per run, a batch image by image).

Gives the Runtime the same fields the PyTorch model does (logits, heatmap, keep masks, keep
levels), so `Runtime(..., backend="onnxruntime")` returns the same `Result`. Graphs are written
to `cache_dir` at every construction (a graph another model left there is never reused); keep
levels map to per-stage levels by `model.stage_levels`. Providers: CUDA and TensorRT execution
providers first when this onnxruntime build has them, else the CPU. `int8`: graphs with int8
weights (`iared_edge.export.quantize`), run on the CPU provider only.
"""

from __future__ import annotations

import os
import tempfile
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from ..runtime.backends import BackendOutput, from_kept
from .onnx import export_onnx, export_onnx_counts, export_onnx_threshold, keep_counts_for

FORMS = ("levels", "counts", "threshold")


class OnnxRuntimeBackend:
    """A Runtime backend (runtime/backends.py) on ONNX Runtime sessions."""

    name = "onnxruntime"
    fixed_batch = None

    def __init__(
        self,
        model,
        levels: Sequence[float],
        cache_dir: Optional[str] = None,
        threads: Optional[int] = None,
        form: str = "levels",
        int8: bool = False,
    ):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError('backend "onnxruntime" needs: pip install onnxruntime') from exc
        if form not in FORMS:
            raise ValueError(
                f'form must be "levels" (one graph per keep level), "counts" (keep counts as an input) '
                f'or "threshold" (policy "threshold", one image per run), got {form!r}'
            )
        if form == "threshold" and levels:
            raise ValueError(
                f'form "threshold" has no keep levels (each image keeps its own count), got {list(levels)}'
            )
        self.num_patches, self.num_stages, self.form = model.num_patches, model.num_stages, form
        self.levels = sorted({float(r) for r in levels}, reverse=True)
        self.counts = {r: np.asarray(keep_counts_for(model, model.stage_levels(r)), np.int64) for r in self.levels}
        self.cache_dir = cache_dir or tempfile.mkdtemp(prefix="iared-onnx-")
        os.makedirs(self.cache_dir, exist_ok=True)
        available = ort.get_available_providers()
        # int8 graphs are for CPUs (dynamic quantization: MatMulInteger); on a GPU, fp16 engines are the way
        self.providers = (
            [] if int8 else [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
        )
        self.providers.append("CPUExecutionProvider")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.sessions: Dict[float, object] = {}
        suffix = ".int8" if int8 else ""
        if form == "threshold":
            path = os.path.join(self.cache_dir, f"threshold{suffix}.onnx")
            export_onnx_threshold(model, path, int8=int8)  # every time, as below
            self.session = ort.InferenceSession(path, options, providers=self.providers)
        elif form == "counts":
            path = os.path.join(self.cache_dir, f"keep_counts{suffix}.onnx")
            export_onnx_counts(model, path, int8=int8)  # every time: a file left by another model must not be reused
            session = ort.InferenceSession(path, options, providers=self.providers)
            self.sessions = {r: session for r in self.levels}
        else:
            for level in self.levels:
                path = os.path.join(self.cache_dir, f"keep{level:.4f}{suffix}.onnx")
                export_onnx(model, path, model.stage_levels(level), int8=int8)
                self.sessions[level] = ort.InferenceSession(path, options, providers=self.providers)

    def __call__(self, images: torch.Tensor, level: Optional[float] = None) -> BackendOutput:
        if self.form == "threshold":
            return self._threshold(images)
        if level is None or float(level) not in self.sessions:
            raise ValueError(f"no ONNX graph for keep level {level}; levels: {self.levels}")
        feed = {"images": images.detach().cpu().numpy()}
        if self.form == "counts":
            feed["keep_counts"] = self.counts[float(level)]
        outs = self.sessions[float(level)].run(None, feed)
        return self._output(outs[0], outs[1:-1], outs[-1])

    def _threshold(self, images: torch.Tensor) -> BackendOutput:
        """Image by image: each keeps its own counts, so a batch's kept indices are not one array."""
        parts = []
        for i in range(len(images)):
            outs = self.session.run(None, {"images": images[i : i + 1].detach().cpu().numpy()})
            parts.append(self._output(outs[0], outs[1:-1], outs[-1]))
        return BackendOutput(*(torch.cat([getattr(p, f) for p in parts]) for f in BackendOutput.__dataclass_fields__))

    def _output(self, logits, kept, heat) -> BackendOutput:
        kept = [torch.from_numpy(idx) for idx in kept]
        return from_kept(torch.from_numpy(logits), kept, torch.from_numpy(heat), self.num_patches)
