"""Runs the exported policy-"ratio" graphs with ONNX Runtime, one session per keep level.

Gives the Runtime the same fields the PyTorch model does (logits, heatmap, keep masks, keep
ratios), so `Runtime(..., backend="onnxruntime")` returns the same `Result`. Graphs are exported
once into `cache_dir`. Providers: CUDA and TensorRT execution providers first when this
onnxruntime build has them, else the CPU.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .onnx import export_onnx


@dataclass
class GraphOutput:
    logits: torch.Tensor
    heatmap: torch.Tensor
    keep_masks: torch.Tensor   # [B, S, N] bool
    keep_ratio: torch.Tensor   # [B, S]


class OnnxRuntimeBackend:
    def __init__(self, model, levels: Sequence[float], cache_dir: Optional[str] = None, threads: Optional[int] = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError('backend "onnxruntime" needs: pip install onnxruntime') from exc
        self.num_patches, self.num_stages = model.num_patches, model.num_stages
        self.cache_dir = cache_dir or tempfile.mkdtemp(prefix="iared-onnx-")
        os.makedirs(self.cache_dir, exist_ok=True)
        available = ort.get_available_providers()
        self.providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
        self.providers.append("CPUExecutionProvider")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.sessions: Dict[float, object] = {}
        for rho in levels:
            path = os.path.join(self.cache_dir, f"keep{rho:.4f}.onnx")
            if not os.path.exists(path):
                export_onnx(model, path, rho)
            self.sessions[float(rho)] = ort.InferenceSession(path, options, providers=self.providers)

    def __call__(self, images: torch.Tensor, rho: float) -> GraphOutput:
        if float(rho) not in self.sessions:
            raise ValueError(f"no ONNX graph for keep level {rho}; exported levels: {sorted(self.sessions)}")
        outs = self.sessions[float(rho)].run(None, {"images": images.detach().cpu().numpy()})
        logits, kept, heat = outs[0], outs[1:-1], outs[-1]
        masks = np.zeros((logits.shape[0], self.num_stages, self.num_patches), bool)
        for s, idx in enumerate(kept):
            np.put_along_axis(masks[:, s], idx, True, 1)
        masks = torch.from_numpy(masks)
        return GraphOutput(torch.from_numpy(logits), torch.from_numpy(heat), masks,
                           masks.float().mean(-1))
