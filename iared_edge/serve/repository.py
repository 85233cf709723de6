"""`iared-edge export --format triton`: a Triton model repository for a Triton you run yourself
(containers, Jetson builds): one model per keep level, each its ONNX graph (dynamic batch) and a
config.pbtxt with dynamic batching on the ONNX Runtime backend, TensorRT as its GPU accelerator.

    repo/iared_keep0.70/config.pbtxt
    repo/iared_keep0.70/labels.txt        (Triton's classification extension on `logits`)
    repo/iared_keep0.70/1/model.onnx

The frames arrive preprocessed (float32 [3, H, W], the model's normalisation): decoding JPEGs in
the server is what `iared-edge serve` adds. Each config.pbtxt is checked by parsing it into
Triton's ModelConfig protobuf (tritonclient's copy) before it is written.
"""

from __future__ import annotations

import os
from typing import List, Sequence

ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 7: "TYPE_INT64", 6: "TYPE_INT32", 9: "TYPE_BOOL"}


def _dims(value_info) -> List[int]:
    dims = value_info.type.tensor_type.shape.dim[1:]  # the first is the batch: Triton's max_batch_size
    return [d.dim_value if d.HasField("dim_value") else -1 for d in dims]


def model_config_text(
    name: str, onnx_path: str, max_batch: int, max_queue_delay_us: int, fp16: bool, labels: bool
) -> str:
    """config.pbtxt for the ONNX graph at `onnx_path`, its tensors read from the graph."""
    import onnx

    graph = onnx.load(onnx_path, load_external_data=False).graph
    lines = [
        f'name: "{name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {max_batch}",
    ]

    def tensor(v, label: bool = False) -> str:
        t = ONNX_TYPES.get(v.type.tensor_type.elem_type)
        if t is None:
            kind = v.type.tensor_type.elem_type
            raise ValueError(f"{onnx_path}: tensor {v.name} has ONNX type {kind}, which this export does not map")
        extra = ' label_filename: "labels.txt"' if label else ""
        return f'  {{ name: "{v.name}" data_type: {t} dims: [ {", ".join(map(str, _dims(v)))} ]{extra} }}'

    inputs = [tensor(v) for v in graph.input]
    outputs = [tensor(v, labels and v.name == "logits") for v in graph.output]
    lines += ["input [", ",\n".join(inputs), "]", "output [", ",\n".join(outputs), "]"]
    lines += [f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}"]
    precision = "FP16" if fp16 else "FP32"
    lines += [
        "optimization { execution_accelerators { gpu_execution_accelerator: [ {",
        '  name: "tensorrt"',
        f'  parameters {{ key: "precision_mode" value: "{precision}" }}',
        '  parameters { key: "max_workspace_size_bytes" value: "1073741824" }',
        "} ] } }",
    ]
    return "\n".join(lines) + "\n"


def check_model_config(text: str):
    """Parse config.pbtxt text into Triton's ModelConfig protobuf; a ValueError names the fault."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ValueError(f"config.pbtxt does not parse as Triton's ModelConfig: {exc}") from None


def export_triton_repository(
    model,
    out_dir: str,
    levels: Sequence[float] = (1.0, 0.7, 0.5),
    max_batch: int = 8,
    max_queue_delay_us: int = 2000,
    fp16: bool = True,
    opset: int = 17,
    prefix: str = "iared",
) -> List[str]:
    """Write a Triton model repository under `out_dir`: one model per keep level. `fp16`: TensorRT
    builds fp16 engines (the ONNX graph stays float32; ONNX Runtime on a CPU runs it as is).
    Returns the model names."""
    from ..export import export_onnx

    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
    if isinstance(max_queue_delay_us, bool) or not isinstance(max_queue_delay_us, int) or max_queue_delay_us < 0:
        raise ValueError(f"max_queue_delay_us must be an int >= 0 (microseconds), got {max_queue_delay_us!r}")
    named = [f"{prefix}_keep{float(v):.2f}" for v in levels]
    if len(set(named)) != len(named):
        raise ValueError(f"keep levels {list(levels)} give the same model name twice ({named}): levels 0.01 apart")
    names = []
    labels = model.class_names()
    for level in levels:
        if not 0.0 < float(level) <= 1.0:
            raise ValueError(f"keep levels are in (0, 1], got {level!r}")
        name = f"{prefix}_keep{float(level):.2f}"
        folder = os.path.join(out_dir, name)
        os.makedirs(os.path.join(folder, "1"), exist_ok=True)
        onnx_path = os.path.join(folder, "1", "model.onnx")
        export_onnx(model, onnx_path, model.stage_levels(float(level)), opset=opset)
        text = model_config_text(name, onnx_path, max_batch, max_queue_delay_us, fp16, labels=True)
        parsed = check_model_config(text)
        if parsed.name != name or parsed.max_batch_size != max_batch:
            raise AssertionError(f"config.pbtxt of {name} parsed to something else: {parsed}")
        with open(os.path.join(folder, "config.pbtxt"), "w") as f:
            f.write(text)
        with open(os.path.join(folder, "labels.txt"), "w") as f:
            f.write("\n".join(labels) + "\n")
        names.append(name)
    return names
