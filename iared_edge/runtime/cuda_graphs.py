"""CUDA graphs per keep level for the Runtime's GPU path (batch 1, policy "level").

Policy "level" has static token counts, so its dense form (`export.LevelGraph`: TopK + Gather, no
host synchronisation) can be captured once per keep level and replayed: one launch per frame
instead of hundreds, which is what limits a small ViT at batch 1 on a GPU. Policy "threshold"
(data-dependent counts) runs eagerly. Same call as the exported backends: (images, level) ->
BackendOutput. GPU only; not run where this was written (no GPU), tests skip without one.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch

from ..export.onnx import LevelGraph
from .backends import BackendOutput, from_kept


class CudaGraphLevels:
    """A Runtime backend (runtime/backends.py): one CUDA graph per keep level, batch 1."""

    name = "cuda_graphs"
    fixed_batch = 1

    def __init__(self, model, levels: Sequence[float], device: torch.device, warmup: int = 3):
        if torch.device(device).type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.device = torch.device(device)
        self.levels = sorted({float(v) for v in levels}, reverse=True)
        self.num_stages, self.num_patches = model.num_stages, model.num_patches
        self.graphs: Dict[float, torch.cuda.CUDAGraph] = {}
        self.outputs: Dict[float, tuple] = {}
        # The model's device, not the current one (cuda:1 must not capture on cuda:0), and a side
        # stream of that device to warm up and capture on: capture may not use the legacy default
        # stream, and the warm-up's allocations must settle off the stream the graph records.
        with torch.cuda.device(self.device):
            self.static_in = torch.zeros(1, *model.input_size, device=self.device)
            side = torch.cuda.Stream(self.device)
            for level in self.levels:
                dense = LevelGraph(model, model.stage_levels(level)).eval()
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side), torch.inference_mode():
                    for _ in range(warmup):  # allocator and cuBLAS workspaces settle before capture
                        dense(self.static_in)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.inference_mode(), torch.cuda.graph(graph, stream=side):
                    self.outputs[level] = dense(self.static_in)
                self.graphs[level] = graph
            torch.cuda.current_stream(self.device).wait_stream(side)

    def __call__(self, images: torch.Tensor, level: float) -> BackendOutput:
        level = float(level)
        if level not in self.graphs:
            raise ValueError(f"no CUDA graph for keep level {level}; levels: {self.levels}")
        if tuple(images.shape) != tuple(self.static_in.shape):
            raise ValueError(f"CUDA graphs are captured for {tuple(self.static_in.shape)}, got {tuple(images.shape)}")
        # on the caller's current stream of this device (the Runtime's, which copied the frame)
        with torch.cuda.device(self.device):
            self.static_in.copy_(images)
            self.graphs[level].replay()
        logits, *kept, heat = self.outputs[level]
        out = from_kept(logits.clone(), kept, heat.clone(), self.num_patches)
        torch.cuda.current_stream(self.device).synchronize()  # the Runtime times the frame to here
        return out
