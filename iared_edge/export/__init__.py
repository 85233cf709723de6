"""Export for deployment: ONNX of policy "level" (a graph per keep level, or keep counts as an input)
and of policy "threshold" (one image per run), in float32 or with int8 weights for CPUs."""

from .onnx import (
    CountsGraph,
    LevelGraph,
    ThresholdGraph,
    export_onnx,
    export_onnx_counts,
    export_onnx_plain,
    export_onnx_threshold,
    keep_counts_for,
)
from .quantize import quantize_int8

__all__ = [
    "LevelGraph",
    "CountsGraph",
    "ThresholdGraph",
    "export_onnx",
    "export_onnx_counts",
    "export_onnx_plain",
    "export_onnx_threshold",
    "keep_counts_for",
    "quantize_int8",
]
