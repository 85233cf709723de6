"""Runs the exported policy-"level" ONNX graphs with TensorRT 10 or 11 (GPU hosts only).

Engines are built once from the ONNX graphs (`export_onnx` per keep level, or `export_onnx_counts`
with the keep counts as a shape input) and cached on disk under a key made of the graph's bytes,
the GPU (name and compute capability), the TensorRT version, the precision and the build recipe,
so a JetPack upgrade, another GPU or a change in how engines are built never loads a stale engine.
One optimisation profile covers batch 1..max_batch. Buffers are torch tensors (torch owns memory
and streams; no pycuda). Building, loading, context creation and every run happen on the
backend's device (`with torch.cuda.device(...)`), and inference is enqueued on that device's
current torch stream (the Runtime makes its own stream current around the call).

Precision has one build path per TensorRT major version (`BUILD_PATHS`):
- TensorRT 10 (JetPack 6.1/6.2 ship 10.3): a weakly typed network from the float32 graph. fp16 sets
  BuilderFlag.FP16 (FP16 kernels where TensorRT finds them faster, FP32 elsewhere; the flag is
  deprecated from 10.12 but works in every 10.x); fp32 clears BuilderFlag.TF32, which is on by
  default and rounds float32 matmul inputs to 10-bit mantissas on sm_80+.
- TensorRT 11 (the x86 `tensorrt` wheel; JetPack does not ship it): every network is strongly
  typed and BuilderFlag.FP16 no longer exists, so precision is the graph's own: fp16 builds the
  float16 graph (`export_onnx(..., fp16=True)`: float16 weights and `images`, LayerNorm in float32,
  keep probabilities, kept indices and heatmap as in the float32 graph); fp32 builds the float32
  graph and clears BuilderFlag.TF32, which 11 keeps as a builder flag, on by default.
What this relies on (NVIDIA's TensorRT documentation): "Migrating from TensorRT 10.x to 11.x"
(Strongly Typed Networks Are Now Required), "Removed Python APIs and Replacements" (BuilderFlag.FP16
removed: use strong typing), the Python API's NetworkDefinitionCreationFlag (STRONGLY_TYPED:
deprecated in 11.0, always on, ignored) and BuilderFlag.TF32 ("Enabled by default"; its
deprecation of kFP16 is in the 10.12 NvInfer.h); and the TensorRT 11.1 and 10.x headers and Python
bindings (github.com/NVIDIA/TensorRT) for what both versions still have: name-based tensors,
execute_async_v3 (returns False on failure), set_shape_input (int32 values in 10.0-10.10, int64
from 10.11), ICudaEngine.get_tensor_location (shape-tensor inputs are read from host memory),
256-byte aligned tensor addresses.

TensorRT 8.x is refused (see `check_trt_version` for exactly why). Not run where this was written
(no GPU, no TensorRT): the build recipe, the version gate and the buffer rules are tested with a
stand-in `tensorrt` module (tests/test_tensorrt_backend.py); the engines themselves only by the
tests marked gpu; the ONNX graphs they consume are tested with onnxruntime.
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from ..runtime.backends import BackendOutput, from_kept
from .onnx import export_onnx, export_onnx_counts, keep_counts_for

SUPPORTED_MAJORS = (10, 11)
# Part of every engine's cache key: change it when how engines are built changes, so engines an
# earlier recipe cached are rebuilt, not loaded. r2: fp32 without TF32; TensorRT 11 builds fp16
# from the float16 graph.
BUILD_RECIPE = "r2"
# IExecutionContext::setTensorAddress: "The pointer must have at least 256-byte alignment."
ALIGNMENT = 256

TOO_OLD = (
    'backend "tensorrt" runs on TensorRT 10 or 11, found {version}. TensorRT 8.5 and 8.6 have the '
    "name-based tensor API it uses (set_tensor_address, execute_async_v3), but: they have no int64 "
    "tensors (the graphs' kept indices and keep_counts are int64; their ONNX parser casts them to "
    "int32), a network parsed from ONNX needs the EXPLICIT_BATCH creation flag there, and 8.5's "
    "ONNX parser takes TopK's K only as a constant, so the keep-counts graph cannot build on it (8.6 "
    "takes K as a tensor). This backend is written and tested for TensorRT 10's and 11's API only. "
    "With TensorRT 8.x, run the one-graph-per-keep-level ONNX files (iared-edge export --keep-levels "
    "...; K is a constant there) through onnxruntime's TensorRT execution provider "
    '(backend="onnxruntime") or trtexec.'
)
TOO_NEW = (
    'backend "tensorrt" runs on TensorRT 10 or 11, found {version}: a new major version may have '
    "removed API this backend uses (11 removed the weak-typing builder flags), and it has no build "
    'path for it yet. Install tensorrt<12, or use backend="onnxruntime".'
)


def engine_key(
    onnx_bytes: bytes,
    device_name: str,
    capability: tuple,
    trt_version: str,
    fp16: bool,
    max_batch: int,
    recipe: str = BUILD_RECIPE,
) -> str:
    """The cache key of an engine: everything that makes a serialized engine unusable elsewhere or
    different from what this code would build now."""
    h = hashlib.sha256(onnx_bytes)
    cap = f"sm{capability[0]}{capability[1]}"
    h.update(f"|{device_name}|{cap}|trt{trt_version}|fp16={fp16}|b{max_batch}|{recipe}".encode())
    return h.hexdigest()[:24]


# -- versions -------------------------------------------------------------------------------------
def trt_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise ImportError(f"TensorRT's version {version!r} is not a version number") from None


def check_trt_version(version: str) -> int:
    """The major version of TensorRT `version` if this backend has a build path for it; otherwise
    ImportError saying which version was found and why it is refused."""
    major = trt_major(version)
    if major < SUPPORTED_MAJORS[0]:
        raise ImportError(TOO_OLD.format(version=version))
    if major > SUPPORTED_MAJORS[-1]:
        raise ImportError(TOO_NEW.format(version=version))
    return major


def _import_trt():
    """(the tensorrt module, its major version)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ImportError(
            'backend "tensorrt" needs TensorRT\'s Python package (JetPack ships it; on x86: pip install tensorrt)'
        ) from exc
    return trt, check_trt_version(trt.__version__)


# -- precision: one build path per major version --------------------------------------------------
def network_and_config_trt10(trt, builder, fp16: bool):
    """TensorRT 10: a weakly typed network (no STRONGLY_TYPED flag; explicit batch is implied from
    10.0), built from the float32 graph. fp16: BuilderFlag.FP16 lets TensorRT pick FP16 kernels.
    fp32: BuilderFlag.TF32 cleared (on by default), so float32 layers compute in float32."""
    network = builder.create_network(0)
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    return network, config


def network_and_config_trt11(trt, builder, fp16: bool):
    """TensorRT 11: every network is strongly typed (the STRONGLY_TYPED creation flag is deprecated
    and ignored, so none is passed) and there is no FP16 builder flag: each tensor computes in the
    type the graph gives it, so fp16 is the float16 graph (`graph_is_fp16`) and nothing is set
    here. fp32: BuilderFlag.TF32, still a builder flag in 11 and on by default, is cleared."""
    network = builder.create_network(0)
    config = builder.create_builder_config()
    if not fp16:
        config.clear_flag(trt.BuilderFlag.TF32)
    return network, config


BUILD_PATHS: Dict[int, Callable] = {10: network_and_config_trt10, 11: network_and_config_trt11}


def graph_is_fp16(major: int, fp16: bool) -> bool:
    """Whether the ONNX graph itself is float16: on TensorRT 11 (strongly typed) for fp16. TensorRT
    10 builds fp16 engines from the float32 graph (BuilderFlag.FP16)."""
    return bool(fp16) and major >= 11


def build_serialized_engine(
    trt,
    logger,
    onnx_bytes: bytes,
    major: int,
    fp16: bool,
    input_size: Tuple[int, int, int],
    max_batch: int,
    keep_counts_shape: Optional[Tuple[int, int]] = None,
    source: str = "the ONNX graph",
):
    """Parse `onnx_bytes` and build a serialized engine on the current CUDA device, through
    `BUILD_PATHS[major]`; one profile: batch 1..max_batch, and for the counts graph
    (`keep_counts_shape` = (stages, patches)) every keep count from 1 to all patches."""
    builder = trt.Builder(logger)
    network, config = BUILD_PATHS[major](trt, builder, fp16)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {source}: {errors}")
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    want = trt.float16 if graph_is_fp16(major, fp16) else trt.float32
    if "images" not in inputs or inputs["images"].dtype != want:
        got = inputs["images"].dtype if "images" in inputs else "no such input"
        raise RuntimeError(f"{source}: input images should be {want} for this build, got {got}")
    profile = builder.create_optimization_profile()
    c, h, w = input_size
    profile.set_shape("images", (1, c, h, w), (1, c, h, w), (max_batch, c, h, w))
    if keep_counts_shape is not None:
        # TopK's K is a shape tensor, so keep_counts is a shape input: its values get a range
        # (set_shape_input; "must not be called for any input tensor that is not a shape tensor")
        if "keep_counts" not in inputs or not inputs["keep_counts"].is_shape_tensor:
            raise RuntimeError(f"{source}: keep_counts is not a shape input of the parsed network")
        S, N = keep_counts_shape
        profile.set_shape_input("keep_counts", [1] * S, [N] * S, [N] * S)
    if config.add_optimization_profile(profile) < 0:
        raise RuntimeError(f"{source}: TensorRT rejected the optimisation profile")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {source}")
    return serialized


# -- buffers --------------------------------------------------------------------------------------
def torch_dtype(trt, dtype) -> torch.dtype:
    """The torch dtype of a TensorRT DataType."""
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.int8: torch.int8,
        trt.bool: torch.bool,
    }
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dtype not in table:
        raise TypeError(f"TensorRT data type {dtype} has no torch dtype here")
    return table[dtype]


def keep_counts_dtype(trt, engine_dtype) -> torch.dtype:
    """The dtype of the keep-counts buffer: the engine's own declared dtype (int64 as the ONNX
    graph declares it on TensorRT >= 10; int32 where a parser narrows it), anything else refused."""
    names = {trt.int32: torch.int32, trt.int64: torch.int64}
    if engine_dtype not in names:
        raise TypeError(
            f"the engine's keep_counts input is {engine_dtype}; the keep counts are fed as int32 or int64 "
            "(the ONNX graph declares int64)"
        )
    return names[engine_dtype]


def aligned_empty(n: int, dtype: torch.dtype, device="cpu", pin_memory: bool = False) -> torch.Tensor:
    """An uninitialised 1-D tensor of `n` elements whose address is a multiple of ALIGNMENT (a view
    into a slightly larger allocation, which it keeps alive)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    base = torch.empty(n + ALIGNMENT // itemsize, dtype=dtype, device=device, pin_memory=pin_memory)
    offset = (-base.data_ptr() % ALIGNMENT) // itemsize
    return base[offset : offset + n]


def keep_counts_buffer(counts: Sequence[int], dtype: torch.dtype, device="cpu", pin_memory: bool = False):
    """The keep counts of one level in the engine's dtype, at an aligned address on `device` (the
    host for a shape input: TensorRT reads shape tensors from host memory)."""
    buf = aligned_empty(len(counts), dtype, device, pin_memory)
    buf.copy_(torch.tensor(list(counts), dtype=dtype))
    return buf


def output_buffers(trt, engine, ctx, device) -> Dict[str, torch.Tensor]:
    """One tensor per engine output, shaped as the context reports once every input shape and
    shape-input value is set. Every output shape here follows from those (batch, keep counts), so a
    -1 (a shape known only after the run, which would need an IOutputAllocator) is refused."""
    outputs = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
            continue
        shape = tuple(ctx.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise RuntimeError(
                f"TensorRT output {name}: shape {shape} is only known after the run; this backend runs "
                "graphs whose output shapes follow from the batch and the keep counts"
            )
        outputs[name] = torch.empty(shape, dtype=torch_dtype(trt, engine.get_tensor_dtype(name)), device=device)
    return outputs


def _bind(ctx, name: str, tensor: torch.Tensor) -> None:
    if tensor.data_ptr() % ALIGNMENT:
        raise RuntimeError(f"TensorRT tensor {name}: address not {ALIGNMENT}-byte aligned")
    if not ctx.set_tensor_address(name, tensor.data_ptr()):
        raise RuntimeError(f"TensorRT refused the address of tensor {name}")


def _export_source(model):
    """The model the graphs are traced from: on the CPU in float32 (the dummy inputs are CPU float32
    tensors, and the Runtime hands this backend its model on the GPU). A copy when it is not
    already that, so the caller's model stays where it is."""
    p = next(model.parameters())
    if p.device.type == "cpu" and p.dtype == torch.float32:
        return model
    return copy.deepcopy(model).to("cpu", torch.float32).eval()


class TensorRTBackend:
    """A Runtime backend (runtime/backends.py) on TensorRT engines, up to `max_batch` images, on
    `device`. `fp16`: on TensorRT 10 BuilderFlag.FP16 over the float32 graph, on TensorRT 11 the
    float16 graph; otherwise float32 with TF32 off. Logits and heatmap come back float32."""

    name = "tensorrt"
    fixed_batch = None

    def __init__(
        self,
        model,
        levels: Sequence[float],
        cache_dir: Optional[str] = None,
        fp16: bool = True,
        form: str = "levels",
        max_batch: int = 8,
        device: torch.device | str = "cuda",
    ):
        trt, major = _import_trt()
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError('backend "tensorrt" runs on a CUDA GPU; none is available')
        if self.device.index is None:  # "cuda": the current device, fixed now
            self.device = torch.device("cuda", torch.cuda.current_device())
        if form not in ("levels", "counts"):
            raise ValueError(f'form must be "levels" or "counts", got {form!r}')
        self.trt, self.trt_major, self.form, self.max_batch = trt, major, form, int(max_batch)
        self.fp16, self.graph_fp16 = bool(fp16), graph_is_fp16(major, fp16)
        self.num_patches, self.num_stages = model.num_patches, model.num_stages
        self.input_size = tuple(model.input_size)
        self.levels = sorted({float(r) for r in levels}, reverse=True)
        self.counts = {r: keep_counts_for(model, model.stage_levels(r)) for r in self.levels}
        self.cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "iared-trt")
        os.makedirs(self.cache_dir, exist_ok=True)
        source = _export_source(model)
        self.engines: Dict[float, object] = {}
        self.contexts: Dict[float, object] = {}
        self.images_dtype: Dict[float, torch.dtype] = {}
        self.keep: Dict[float, torch.Tensor] = {}
        with torch.cuda.device(self.device):
            self.logger = trt.Logger(trt.Logger.WARNING)
            self.runtime = trt.Runtime(self.logger)
            if form == "counts":
                engine = self._engine(source, None)
                context = self._context(engine)
                keep_dtype = keep_counts_dtype(trt, engine.get_tensor_dtype("keep_counts"))
                on_host = engine.get_tensor_location("keep_counts") == trt.TensorLocation.HOST
                for r in self.levels:
                    self.engines[r], self.contexts[r] = engine, context
                    self.keep[r] = keep_counts_buffer(
                        self.counts[r], keep_dtype, "cpu" if on_host else self.device, pin_memory=on_host
                    )
            else:
                for r in self.levels:
                    self.engines[r] = self._engine(source, r)
                    self.contexts[r] = self._context(self.engines[r])
            for r in self.levels:
                self.images_dtype[r] = torch_dtype(trt, self.engines[r].get_tensor_dtype("images"))

    def _context(self, engine):
        context = engine.create_execution_context()
        if context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        return context

    def _engine(self, model, level: Optional[float]):
        """Export the graph, then load its engine from the cache or build it (on the current device)."""
        trt = self.trt
        stem = "keep_counts" if level is None else f"keep{level:.4f}"
        onnx_path = os.path.join(self.cache_dir, f"{stem}.fp16.onnx" if self.graph_fp16 else f"{stem}.onnx")
        # Exported every time (seconds): a file left by another model must not be reused; the
        # engine cache below is keyed by the graph's bytes.
        if level is None:
            export_onnx_counts(model, onnx_path, fp16=self.graph_fp16)
        else:
            export_onnx(model, onnx_path, model.stage_levels(level), fp16=self.graph_fp16)
        with open(onnx_path, "rb") as f:
            onnx_bytes = f.read()
        props = torch.cuda.get_device_properties(self.device)
        key = engine_key(onnx_bytes, props.name, (props.major, props.minor), trt.__version__, self.fp16, self.max_batch)
        plan = os.path.join(self.cache_dir, f"{os.path.basename(onnx_path)[:-5]}-{key}.engine")
        if not os.path.exists(plan):
            serialized = build_serialized_engine(
                trt,
                self.logger,
                onnx_bytes,
                self.trt_major,
                self.fp16,
                self.input_size,
                self.max_batch,
                keep_counts_shape=(self.num_stages, self.num_patches) if level is None else None,
                source=onnx_path,
            )
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
        with torch.cuda.device(self.device):
            x = images.to(self.device, self.images_dtype[level]).contiguous()
            if x.data_ptr() % ALIGNMENT:  # a view into a larger tensor: TensorRT wants aligned addresses
                x = x.clone()
            if not ctx.set_input_shape("images", tuple(x.shape)):
                raise ValueError(f"TensorRT refused input shape {tuple(x.shape)} for images")
            _bind(ctx, "images", x)
            if self.form == "counts":  # before the output shapes are asked: they depend on its values
                _bind(ctx, "keep_counts", self.keep[level])
            outputs = output_buffers(trt, engine, ctx, self.device)
            for name, tensor in outputs.items():
                _bind(ctx, name, tensor)
            stream = torch.cuda.current_stream(self.device)
            if not ctx.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed (execute_async_v3 returned False)")
            stream.synchronize()  # as the torch backend: the Runtime times all of it
            kept = [outputs[f"kept_stage{s + 1}"] for s in range(self.num_stages)]
        return from_kept(outputs["logits"].float(), kept, outputs["heatmap"].float(), self.num_patches)
