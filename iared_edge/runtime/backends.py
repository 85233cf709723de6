"""What runs the model for a Runtime: one interface, four backends, one factory.

Every backend is called as `backend(images, level) -> BackendOutput`: `images` normalised
[B, 3, H, W] on the Runtime's device, `level` a keep level (None: the Runtime's own policy, for
the backends that have one). `levels` lists the keep levels it was prepared for (empty: any), and
`fixed_batch` the only batch size it takes (None: any).

- `TorchBackend`: the PyTorch model, eagerly (packed tokens; every policy).
- `CudaGraphLevels` (runtime/cuda_graphs.py): one CUDA graph per keep level, batch 1.
- `OnnxRuntimeBackend`, `TensorRTBackend` (export/): exported graphs.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import List, Optional, Protocol, Sequence

import torch


@dataclass
class BackendOutput:
    logits: torch.Tensor  # [B, classes]
    heatmap: torch.Tensor  # [B, gh, gw] in [0, 1]
    keep_masks: torch.Tensor  # [B, S, N] bool: patches kept by each stage
    keep_ratio: torch.Tensor  # [B, S]: the share of patches each stage kept


def kept_masks(kept: Sequence[torch.Tensor], num_patches: int) -> torch.Tensor:
    """Per stage the patch indices kept [B, k_s] (what the exported graphs give) -> keep masks
    [B, S, N] bool: the one place kept indices become masks."""
    masks = torch.zeros(kept[0].shape[0], len(kept), num_patches, dtype=torch.bool, device=kept[0].device)
    for s, idx in enumerate(kept):
        masks[:, s].scatter_(1, idx.long(), True)
    return masks


def from_kept(logits: torch.Tensor, kept: Sequence[torch.Tensor], heatmap: torch.Tensor, num_patches: int):
    """A BackendOutput from a graph's logits, kept indices per stage and heatmap."""
    masks = kept_masks(kept, num_patches)
    return BackendOutput(logits, heatmap, masks, masks.float().mean(-1))


class Backend(Protocol):
    name: str
    levels: List[float]
    fixed_batch: Optional[int]

    def __call__(self, images: torch.Tensor, level: Optional[float] = None) -> BackendOutput: ...


class TorchBackend:
    """The model itself. `policy` ("threshold", "all" or "level" at `level`) runs when no level is
    given; on a GPU the forward runs on `stream` and is waited for, so the Runtime times all of it.
    `prepacked`: a CPU's PrepackedLinears for the model, in use only during each call."""

    name = "torch"
    fixed_batch = None

    def __init__(
        self,
        model,
        policy: str = "threshold",
        level: Optional[float] = None,
        stream: Optional[torch.cuda.Stream] = None,
        prepacked=None,
    ):
        self.model, self.policy, self.level, self.stream = model, policy, level, stream
        self.prepacked = prepacked  # a CPU's PrepackedLinears, in use during each call
        self.levels: List[float] = []

    def __call__(self, images: torch.Tensor, level: Optional[float] = None) -> BackendOutput:
        if level is None and self.policy == "level":
            level = self.level
        stream = torch.cuda.stream(self.stream) if self.stream is not None else nullcontext()
        with torch.inference_mode(), stream, self.prepacked if self.prepacked is not None else nullcontext():
            # frames come from uint8 pixels: finite, so no host read to check them
            if level is not None:
                out = self.model(images, policy="level", level=level, check_finite=False)
            else:
                out = self.model(images, policy=self.policy, check_finite=False)
            if self.stream is not None:
                self.stream.synchronize()
        return BackendOutput(out.logits, out.heatmap, out.keep_masks, out.keep_ratio)


def make_backend(
    model,
    config,
    device: torch.device,
    stream: Optional[torch.cuda.Stream] = None,
    threads: Optional[int] = None,
    precision: str = "fp32",
) -> Backend:
    """The backend `config` (a RuntimeConfig) asks for, for `model` on `device`."""
    levels: Sequence[float] = config.graph_levels
    if config.backend == "onnxruntime":
        from ..export.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            model, levels, config.onnx_cache, threads=threads, form=config.form, int8=precision == "int8"
        )
    if config.backend == "tensorrt":
        if device.type != "cuda":
            raise ValueError(f'backend "tensorrt" runs on a CUDA device, not {device}')
        from ..export.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(
            model, levels, config.onnx_cache, form=config.form, device=device, fp16=precision == "fp16"
        )
    if config.cuda_graphs and device.type == "cuda" and (config.policy == "level" or config.budget_ms is not None):
        # static token counts per keep level: capture each level once, replay per frame
        from .cuda_graphs import CudaGraphLevels

        return CudaGraphLevels(model, levels, device)
    prepacked = None
    if config.prepack and device.type == "cpu" and precision == "fp32":
        from ..prepack import PrepackedLinears

        prepacked = PrepackedLinears(model.vit)
    return TorchBackend(model, config.policy, config.level, stream, prepacked)
