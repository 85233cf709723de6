"""ONNX export of policy "ratio": static token counts, standard operators only (TopK, Gather).

Each keep level becomes one graph with its per-stage counts k_s = ceil(rho * n_{s-1}) fixed, so
TensorRT versions that need a constant TopK K can build it. The batch axis is dynamic. Outputs:
logits [B, classes], the patch indices kept by each stage [B, k_s] (in the original grid), and the
heatmap [B, gh, gw] (the mean over stages of each patch's keep probability, 0 once dropped).
Attention is permutation-equivariant, so kept tokens need not be re-sorted.
"""
from __future__ import annotations

import warnings
from typing import List, Sequence, Union

import torch
import torch.nn as nn

from ..ops import ratio_keep_count


class RatioGraph(nn.Module):
    """The dense, export-friendly form of `model(images, policy="ratio", ratio=...)`."""

    def __init__(self, model, ratio: Union[float, Sequence[float]]):
        super().__init__()
        self.model = model
        S, n = model.num_stages, model.num_patches
        ratios = [float(ratio)] * S if isinstance(ratio, (int, float)) else [float(r) for r in ratio]
        if len(ratios) != S or not all(0 < r <= 1 for r in ratios):
            raise ValueError(f"ratio: one value in (0, 1] or one per stage ({S}), got {ratio!r}")
        self.counts: List[int] = []
        for r in ratios:
            n = max(1, ratio_keep_count(n, r))
            self.counts.append(n)

    def forward(self, images: torch.Tensor):
        m = self.model
        P, N = m.num_prefix, m.num_patches
        x = m._embed(images)
        B = x.shape[0]
        pos = torch.arange(N, device=x.device).unsqueeze(0).expand(B, N)
        heat = torch.zeros(B, N, device=x.device, dtype=torch.float32)
        kept = []
        for s, interp in enumerate(m.interpreters):
            probs = interp(x)[:, P:].float()
            heat = heat + torch.zeros_like(heat).scatter(1, pos, probs)
            idx = torch.topk(probs, self.counts[s], dim=1).indices
            pos = torch.gather(pos, 1, idx)
            patches = torch.gather(x[:, P:], 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            x = torch.cat([x[:, :P], patches], 1)
            kept.append(pos)
            for blk in m.stage_blocks(s):
                x = blk(x)
        logits = m._head(x[:, :P])
        return (logits, *kept, (heat / m.num_stages).view(B, *m.grid_size))


def export_onnx(model, path: str, ratio: Union[float, Sequence[float]], opset: int = 17) -> List[str]:
    """Write `path` (.onnx) for one keep level; returns the output names."""
    graph = RatioGraph(model, ratio).eval()
    names = ["logits"] + [f"kept_stage{s + 1}" for s in range(model.num_stages)] + ["heatmap"]
    x = torch.zeros(2, *model.input_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are static by design here
        torch.onnx.export(graph, (x,), path, input_names=["images"], output_names=names, opset_version=opset,
                          dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}}, dynamo=False)
    return names
