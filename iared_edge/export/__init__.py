"""Export for deployment: ONNX of policy "ratio" (static token counts)."""
from .onnx import RatioGraph, export_onnx

__all__ = ["RatioGraph", "export_onnx"]
