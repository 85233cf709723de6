"""Runs the exported policy-"level" ONNX graphs with TensorRT (GPU hosts only).

Engines are built once from the ONNX graphs (`export_onnx` per keep level, or `export_onnx_counts`
with the keep counts as a shape input, TensorRT >= 10) and cached on disk under a key made of the
graph's bytes, the GPU (name and compute capability), the TensorRT version and the precision, so a
JetPack upgrade or another GPU never loads a stale engine. One optimisation profile covers batch
1..max_batch. Buffers are torch CUDA tensors (torch owns memory and streams; no pycuda); inference
is enqueued on the caller's current torch stream.

Not run where this was written (no GPU): the code paths are exercised by tests that skip without a
GPU and TensorRT; the ONNX graphs it consumes are tested with onnxruntime.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Dict, Optional, Sequence

import torch

from .onnx import export_onnx, export_onnx_counts, keep_counts_for
from ..runtime.backends import BackendOutput


def engine_key(onnx_bytes: bytes, device_name: str, capability: tuple, trt_version: str, fp16: bool,
               max_batch: int) -> str:
    """The cache key of an engine: everything that makes a serialized engine unusable elsewhere."""
    h = hashlib.sha256(onnx_bytes)
    h.update(f"|{device_name}|sm{capability[0]}{capability[1]}|trt{trt_version}|fp16={fp16}|b{max_batch}".encode())
    return h.hexdigest()[:24]


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ImportError('backend "tensorrt" needs TensorRT\'s Python package (JetPack ships it; on x86: '
                          'pip install tensorrt)') from exc
    if int(trt.__version__.split(".")[0]) < 10:
        raise ImportError(f"backend \"tensorrt\" needs TensorRT >= 10 (name-based tensor API), found {trt.__version__}; "
                          "with TensorRT 8.x use backend=\"onnxruntime\" with its TensorRT execution provider")
    return trt


class TensorRTBackend:
    """A Runtime backend (runtime/backends.py) on TensorRT engines, up to `max_batch` images."""
    name = "tensorrt"
    fixed_batch = None

    def __init__(self, model, levels: Sequence[float], cache_dir: Optional[str] = None, fp16: bool = True,
                 form: str = "levels", max_batch: int = 8, device: torch.device | str = "cuda"):
        trt = _import_trt()
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError('backend "tensorrt" runs on a CUDA GPU; none is available')
        if form not in ("levels", "counts"):
            raise ValueError(f'form must be "levels" or "counts", got {form!r}')
        self.trt, self.form, self.max_batch = trt, form, int(max_batch)
        self.num_patches, self.num_stages = model.num_patches, model.num_stages
        self.input_size = tuple(model.input_size)
        self.levels = sorted({float(r) for r in levels}, reverse=True)
        self.counts = {r: keep_counts_for(model, model.stage_levels(r)) for r in self.levels}
        self.cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "iared-trt")
        os.makedirs(self.cache_dir, exist_ok=True)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engines: Dict[float, object] = {}
        self.contexts: Dict[float, object] = {}
        if form == "counts":
            engine = self._engine(model, None, fp16)
            context = engine.create_execution_context()
            for r in self.levels:
                self.engines[r], self.contexts[r] = engine, context
        else:
            for r in self.levels:
                self.engines[r] = self._engine(model, r, fp16)
                self.contexts[r] = self.engines[r].create_execution_context()

    def _engine(self, model, level: Optional[float], fp16: bool):
        trt = self.trt
        onnx_path = os.path.join(self.cache_dir, "keep_counts.onnx" if level is None else f"keep{level:.4f}.onnx")
        # Exported every time (seconds): a file left by another model must not be reused; the
        # engine cache below is keyed by the graph's bytes.
        export_onnx_counts(model, onnx_path) if level is None else export_onnx(model, onnx_path, model.stage_levels(level))
        with open(onnx_path, "rb") as f:
            onnx_bytes = f.read()
        props = torch.cuda.get_device_properties(self.device)
        key = engine_key(onnx_bytes, props.name, (props.major, props.minor), trt.__version__, fp16, self.max_batch)
        plan = os.path.join(self.cache_dir, f"{os.path.basename(onnx_path)[:-5]}-{key}.engine")
        if not os.path.exists(plan):
            builder = trt.Builder(self.logger)
            network = builder.create_network(0)
            parser = trt.OnnxParser(network, self.logger)
            if not parser.parse(onnx_bytes):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
            config = builder.create_builder_config()
            if fp16:
                config.set_flag(trt.BuilderFlag.FP16)
            profile = builder.create_optimization_profile()
            c, h, w = self.input_size
            profile.set_shape("images", (1, c, h, w), (1, c, h, w), (self.max_batch, c, h, w))
            if level is None:  # K as a shape input: any counts from 1 to all patches
                S, N = self.num_stages, self.num_patches
                profile.set_shape_input("keep_counts", [1] * S, [N] * S, [N] * S)
            config.add_optimization_profile(profile)
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
            tmp = plan + ".tmp"
            with open(tmp, "wb") as f:
                f.write(serialized)
            os.replace(tmp, plan)
        with open(plan, "rb") as f:
            engine = self.runtime.deserialize_cuda_engine(f.read())
        if engine is None:
            raise RuntimeError(f"{plan}: TensorRT could not load the cached engine (delete it to rebuild)")
        return engine

    def __call__(self, images: torch.Tensor, level: float) -> BackendOutput:
        level = float(level)
        if level not in self.contexts:
            raise ValueError(f"no TensorRT engine for keep level {level}; levels: {self.levels}")
        B = images.shape[0]
        if not 1 <= B <= self.max_batch:
            raise ValueError(f"batch {B} outside the engine's profile 1..{self.max_batch}")
        trt, engine, ctx = self.trt, self.engines[level], self.contexts[level]
        x = images.to(self.device, torch.float32).contiguous()
        ctx.set_input_shape("images", tuple(x.shape))
        ctx.set_tensor_address("images", x.data_ptr())
        keep = None
        if self.form == "counts":  # a shape tensor: TensorRT reads it from host memory
            keep = torch.tensor(self.counts[level], dtype=torch.int64)
            ctx.set_tensor_address("keep_counts", keep.data_ptr())
        outputs = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
                continue
            dtype = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int64: torch.int64,
                     trt.int32: torch.int32}[engine.get_tensor_dtype(name)]
            outputs[name] = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=dtype, device=self.device)
            ctx.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        del keep
        masks = torch.zeros(B, self.num_stages, self.num_patches, dtype=torch.bool, device=self.device)
        for s in range(self.num_stages):
            masks[:, s].scatter_(1, outputs[f"kept_stage{s + 1}"].long(), True)
        return BackendOutput(outputs["logits"].float(), outputs["heatmap"].float(), masks, masks.float().mean(-1))
