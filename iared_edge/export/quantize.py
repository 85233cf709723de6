"""int8 graphs for CPUs: ONNX Runtime's dynamic quantization of an exported graph.

What is quantized: the weights of the blocks' and the head's MatMul/Gemm (int8, one scale per
tensor), with each activation quantized on the fly (`MatMulInteger`, VNNI / dot-product
instructions where the CPU has them). What stays float32:
- the interpreters: they decide which tokens go; left in float32 they keep stage 1's tokens exactly
  the float32 graph's, and later stages' nearer to them than quantized ones (docs/benchmarks.md,
  'int8 graphs on a CPU');
- attention's activation-by-activation products (no weight to quantize);
- convolutions (a convolutional stem): ONNX Runtime's `ConvInteger` ran slower than the float32
  convolution on the CPU measured (docs/benchmarks.md), so quantizing it would cost time.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Union

import onnx

INT8_OP_TYPES = ("MatMul", "Gemm")


def interpreter_nodes(graph: onnx.ModelProto):
    """Names of the nodes the exported interpreters became (`/interpreters.<s>/...`)."""
    return [n.name for n in graph.graph.node if n.name.startswith("/interpreters.")]


@contextmanager
def _quiet_quantizer():
    """ONNX Runtime's quantizer logs a root-logger warning suggesting its shape-inference
    pre-pass on every call; the exported graphs carry static shapes, and the pre-pass changed
    nothing measurable, so the warning would only alarm."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(src: Union[str, onnx.ModelProto], dst: str) -> None:
    """Write `dst`: the exported graph `src` (a file, or a graph in memory; an IA-RED² graph, or the
    plain backbone's) with int8 weights in its blocks and head (see the module's docstring for
    what stays float32). Same inputs, outputs and metadata as `src`."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise ImportError("int8 graphs need ONNX Runtime's quantizer: pip install onnxruntime") from exc
    if not isinstance(src, onnx.ModelProto):
        if not os.path.isfile(src):
            raise FileNotFoundError(f"quantize_int8: no ONNX graph at {src}")
        try:
            src = onnx.load(src)
        except Exception as exc:  # onnx's own errors name neither the file nor the problem plainly
            raise ValueError(f"quantize_int8: {src} is not a readable ONNX graph ({exc})") from None
    with _quiet_quantizer():
        quantize_dynamic(
            src,
            dst,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(INT8_OP_TYPES),
            nodes_to_exclude=interpreter_nodes(src),
        )
