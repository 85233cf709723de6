"""ONNX export: policy "level" in two forms, and policy "threshold" for one image; standard
operators only (TopK or NonZero, Gather).

- One graph per keep level (`export_onnx`): the per-stage counts k_s = ceil(level * n_{s-1}) are
  constants, so TensorRT versions whose ONNX parser needs a constant TopK K (8.5 and older) can
  build it.
- One graph with the counts as an input (`export_onnx_counts`): `keep_counts` int64 [S] feeds
  TopK's K directly (a shape input: TensorRT's ONNX parser takes a K tensor from 8.6, int64 from
  10); `keep_counts_for(model, level)` gives the counts of a keep level.
- Policy "threshold" (`export_onnx_threshold`): each image keeps its own number of tokens
  (NonZero of the keep probabilities above the thresholds), one image per run.
- The plain backbone (`export_onnx_plain`): timm's forward, logits only: the baseline that
  `iared-edge bench --backend onnxruntime` times the others against.
The level graphs' batch axis is dynamic. Outputs of the IA-RED² graphs:
logits [B, classes], the patch indices kept by each stage [B, k_s] (in the original grid), and the
heatmap [B, gh, gw] (`iared_edge.model.heatmap_from_scores` of the per-stage keep probabilities).
Attention is permutation-equivariant, so kept tokens need not be re-sorted. Every graph can be
written with int8 weights for CPUs (`int8=True`; what is quantized: `iared_edge.export.quantize`),
and carries in its metadata what an app needs to use it without Python (`deployment_metadata`).
The level graphs can also be written in float16 (`fp16=True`, `half_model`): float16 weights and
`images` input, LayerNorm computed in float32, for TensorRT's strongly typed networks (TensorRT 11
takes precision from the graph's types only).
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from typing import Dict, List, Sequence, Union

import torch
import torch.nn as nn

from ..model import heatmap_from_scores
from ..ops import level_keep_count


class LevelGraph(nn.Module):
    """The dense, export-friendly form of `model(images, policy="level", level=...)`."""

    def __init__(self, model, level: Union[float, Sequence[float]]):
        super().__init__()
        self.model = model
        S, n = model.num_stages, model.num_patches
        levels = model.stage_levels(level) if isinstance(level, (int, float)) else [float(r) for r in level]
        if len(levels) != S or not all(0 < r <= 1 for r in levels):
            raise ValueError(f"level: one value in (0, 1] or one per stage ({S}), got {level!r}")
        self.counts: List[int] = []
        for r in levels:
            n = max(1, level_keep_count(n, r))
            self.counts.append(n)

    def forward(self, images: torch.Tensor):
        return dense_forward(self.model, images, lambda s, probs: torch.topk(probs, self.counts[s], dim=1).indices)


def dense_forward(model, images: torch.Tensor, select):
    """The dense forward every graph traces: per stage, `select(stage, probs)` gives the indices
    of the patch tokens kept, gathered in that order. Returns (logits, kept indices per stage...,
    heatmap)."""
    m = model
    P, N = m.num_prefix, m.num_patches
    x = m._embed(images)
    B = x.shape[0]
    pos = torch.arange(N, device=x.device).unsqueeze(0).expand(B, N)
    grid_scores = []  # per stage [B, N]: each patch's keep probability in grid order, 0 once dropped
    kept = []
    for s, interp in enumerate(m.interpreters):
        probs = interp(x)[:, P:].float()
        grid_scores.append(torch.zeros(B, N, device=x.device, dtype=torch.float32).scatter(1, pos, probs))
        idx = select(s, probs)
        pos = torch.gather(pos, 1, idx)
        patches = torch.gather(x[:, P:], 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :P], patches], 1)
        kept.append(pos)
        for blk in m.stage_blocks(s):
            x = blk(x)
    logits = m._head(x[:, :P])
    return (logits, *kept, heatmap_from_scores(torch.stack(grid_scores, 1), m.grid_size))


class ThresholdGraph(nn.Module):
    """`model(images, policy="threshold")` for one image, in the dense form: per stage the patch
    tokens whose keep probability exceeds the stage's threshold (ONNX NonZero), so every image
    keeps its own number of tokens, as in IA-RED²'s inference, and the shapes after the first
    interpreter depend on the image. Batch 1 (a camera's frame); a batch runs image by image."""

    def __init__(self, model, thresholds: Union[None, float, Sequence[float]] = None):
        super().__init__()
        self.model = model
        t = model.thresholds if thresholds is None else thresholds
        self.thresholds = [float(t)] * model.num_stages if isinstance(t, (int, float)) else [float(v) for v in t]
        if len(self.thresholds) != model.num_stages:
            raise ValueError(f"thresholds: one value or one per stage ({model.num_stages}), got {thresholds!r}")

    def forward(self, images: torch.Tensor):
        return dense_forward(
            self.model, images, lambda s, probs: torch.nonzero(probs[0] > self.thresholds[s]).transpose(0, 1)
        )


class _TopKIndices(torch.autograd.Function):
    """topk(x, k, dim=1).indices with k a tensor; exported as ONNX TopK with K as an input."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.topk(x, int(k), dim=1).indices

    @staticmethod
    def symbolic(g, x, k):
        k1 = g.op("Reshape", k, g.op("Constant", value_t=torch.tensor([1], dtype=torch.int64)))
        _, idx = g.op("TopK", x, k1, axis_i=1, largest_i=1, sorted_i=1, outputs=2)
        return idx


def keep_counts_for(model, level: Union[float, Sequence[float]]) -> List[int]:
    """Per-stage patch counts of a keep level (what `LevelGraph` fixes and CountsGraph takes)."""
    return LevelGraph(model, level).counts


class CountsGraph(nn.Module):
    """`LevelGraph` with the per-stage counts as an input tensor [S] instead of constants."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, keep_counts: torch.Tensor):
        return dense_forward(self.model, images, lambda s, probs: _TopKIndices.apply(probs, keep_counts[s]))


class _Float32LayerNorm(nn.Module):
    """A LayerNorm computed in float32 inside a float16 graph: Cast, LayerNormalization with float32
    scale and bias, Cast back. Normalization sums squares, which overflow float16 past ~256; ATen
    and TensorRT's weakly typed builds accumulate it in float32 too, and a strongly typed network
    computes it in its input's type, so the cast has to be in the graph."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.float()).to(x.dtype)


def half_model(model):
    """A float16 copy of `model` for a float16 graph: every weight float16 except the LayerNorms',
    which stay float32 and run in float32 (`_Float32LayerNorm`). `model` is not changed. The
    interpreters' keep probabilities are float32 in `dense_forward` (so TopK, the kept indices and
    the heatmap are as in float32 graphs); the logits come out float16."""
    fp32 = dict(model.named_modules())
    half = copy.deepcopy(model).to(torch.float16).eval()
    for name, module in list(half.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.LayerNorm):
                full = f"{name}.{child_name}" if name else child_name
                setattr(module, child_name, _Float32LayerNorm(copy.deepcopy(fp32[full]).float()))
    return half


def _dtype_metadata(fp16: bool) -> Dict[str, str]:
    """A float16 graph says so in its metadata (its `images` input is float16); float32 graphs'
    metadata is as it always was."""
    return {"input_dtype": "float16"} if fp16 else {}


def _precision(model, fp16: bool, int8: bool):
    """(the model to trace, the dtype of its `images` input) for `fp16`."""
    if fp16 and int8:
        raise ValueError("fp16 and int8: choose one (int8 graphs are for CPUs, fp16 graphs for TensorRT)")
    return (half_model(model), torch.float16) if fp16 else (model, torch.float32)


@contextmanager
def _exporting():
    """No autograd, and only warnings worth a user's attention: tracer warnings are expected (the
    shapes are static by design here), and the TorchScript exporter (dynamo=False) is deliberate
    (the torch.export-based one needs onnxscript, not a dependency here), so its deprecation
    notices, its own and its internals', would only alarm."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings(
            "ignore", message="You are using the legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
        yield


MIN_OPSET = 14  # the attention is exported as scaled_dot_product_attention, which needs 14


def check_opset(opset: int) -> None:
    if opset < MIN_OPSET:
        raise ValueError(f"ONNX opset must be >= {MIN_OPSET} (attention needs it), got {opset}")


def deployment_metadata(model, **extra) -> Dict[str, str]:
    """What an app needs beside a graph to use it without Python, stored in the ONNX file's
    metadata (ONNX Runtime: `session.get_modelmeta().custom_metadata_map`; every value a JSON
    string): the input size and pixel normalisation (RGB, values / 255, then (x - mean) / std,
    after a centre crop of crop_pct), the class labels, the patch grid of the heatmap and of the
    kept indices, plus what the graph's policy fixes (`extra`)."""
    import json

    from .. import __version__
    from ..preprocess import model_normalization

    mean, std, crop_pct = model_normalization(model)
    meta = {
        "producer": f"iared-edge {__version__}",
        "input_size": list(model.input_size),
        "color": "RGB",
        "mean": list(mean),
        "std": list(std),
        "crop_pct": crop_pct,
        "labels": model.class_names(),
        "grid": list(model.grid_size),
        "num_stages": model.num_stages,
        **extra,
    }
    return {k: json.dumps(v) for k, v in meta.items()}


def _write(graph: nn.Module, inputs: tuple, path: str, int8: bool, metadata: Dict[str, str], **export_kwargs) -> None:
    """torch.onnx.export in memory, `metadata` stored in the graph, then one write to `path`: the
    graph as exported, or its int8 form (`quantize.quantize_int8`, which keeps the metadata)."""
    import io

    import onnx

    buffer = io.BytesIO()
    with _exporting():
        torch.onnx.export(graph, inputs, buffer, dynamo=False, **export_kwargs)
    exported = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(exported, metadata)
    if int8:
        from .quantize import quantize_int8

        quantize_int8(exported, path)
    else:
        onnx.save(exported, path)


def export_onnx_counts(model, path: str, opset: int = 17, int8: bool = False, fp16: bool = False) -> List[str]:
    """Write `path` (.onnx): one graph for every keep level, inputs `images` and `keep_counts`
    (int64 [S], each in 1..the previous stage's count); returns the output names. `int8`: the
    blocks' and head's weights in int8 (`quantize.quantize_int8`), for CPUs. `fp16`: float16
    weights and `images` (`half_model`), for TensorRT's strongly typed networks."""
    check_opset(opset)
    traced, dtype = _precision(model, fp16, int8)
    graph = CountsGraph(traced).eval()
    S = model.num_stages
    names = ["logits"] + [f"kept_stage{s + 1}" for s in range(S)] + ["heatmap"]
    x = torch.zeros(2, *model.input_size, dtype=dtype)
    counts = torch.tensor(keep_counts_for(model, 0.7), dtype=torch.int64)
    dyn = {
        "images": {0: "batch"},
        "logits": {0: "batch"},
        "heatmap": {0: "batch"},
        **{f"kept_stage{s + 1}": {0: "batch", 1: f"k{s + 1}"} for s in range(S)},
    }
    _write(
        graph,
        (x, counts),
        path,
        int8,
        deployment_metadata(model, policy="level", keep_counts_input=True, **_dtype_metadata(fp16)),
        input_names=["images", "keep_counts"],
        output_names=names,
        opset_version=opset,
        dynamic_axes=dyn,
    )
    return names


def export_onnx(
    model, path: str, level: Union[float, Sequence[float]], opset: int = 17, int8: bool = False, fp16: bool = False
) -> List[str]:
    """Write `path` (.onnx) for one keep level; returns the output names. `int8`: the blocks' and
    head's weights in int8 (`quantize.quantize_int8`), for CPUs. `fp16`: float16 weights and
    `images` (`half_model`), for TensorRT's strongly typed networks."""
    check_opset(opset)
    traced, dtype = _precision(model, fp16, int8)
    graph = LevelGraph(traced, level).eval()
    names = ["logits"] + [f"kept_stage{s + 1}" for s in range(model.num_stages)] + ["heatmap"]
    x = torch.zeros(2, *model.input_size, dtype=dtype)
    _write(
        graph,
        (x,),
        path,
        int8,
        deployment_metadata(model, policy="level", keep_counts=graph.counts, **_dtype_metadata(fp16)),
        input_names=["images"],
        output_names=names,
        opset_version=opset,
        dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}},
    )
    return names


def export_onnx_threshold(
    model, path: str, thresholds: Union[None, float, Sequence[float]] = None, opset: int = 17, int8: bool = False
) -> List[str]:
    """Write `path` (.onnx): policy "threshold" for one image (`ThresholdGraph`; `thresholds`
    default the model's own), input `images` [1, C, H, W]; outputs as the level graphs', each
    stage's kept indices [1, k_s] with k_s the image's own count. Returns the output names."""
    check_opset(opset)
    graph = ThresholdGraph(model, thresholds).eval()
    S = model.num_stages
    names = ["logits"] + [f"kept_stage{s + 1}" for s in range(S)] + ["heatmap"]
    x = torch.zeros(1, *model.input_size)
    _write(
        graph,
        (x,),
        path,
        int8,
        deployment_metadata(model, policy="threshold", thresholds=graph.thresholds),
        input_names=["images"],
        output_names=names,
        opset_version=opset,
        dynamic_axes={f"kept_stage{s + 1}": {1: f"k{s + 1}"} for s in range(S)},
    )
    return names


def export_onnx_plain(model, path: str, opset: int = 17, int8: bool = False) -> List[str]:
    """Write `path` (.onnx): the plain backbone (timm's own forward of `model.vit`, every token, no
    interpreters), dynamic batch, output `logits`: the baseline the IA-RED² graphs are timed
    against (`iared-edge bench --backend onnxruntime`)."""
    check_opset(opset)
    x = torch.zeros(2, *model.input_size)
    _write(
        model.vit.eval(),
        (x,),
        path,
        int8,
        deployment_metadata(model, policy="all"),
        input_names=["images"],
        output_names=["logits"],
        opset_version=opset,
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
    )
    return ["logits"]
