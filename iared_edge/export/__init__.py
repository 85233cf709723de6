"""Export for deployment: ONNX of policy "ratio" (a graph per keep level, or keep counts as an input)."""
from .onnx import CountsGraph, RatioGraph, export_onnx, export_onnx_counts, keep_counts_for

__all__ = ["RatioGraph", "CountsGraph", "export_onnx", "export_onnx_counts", "keep_counts_for"]
