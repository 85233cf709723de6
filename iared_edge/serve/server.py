"""`iared-edge serve`: the model behind NVIDIA Triton Inference Server (through nvidia-pytriton,
which bundles the server), model "iared" with the dynamic batcher feeding the packed forward.

Frames from many cameras arrive as encoded JPEG/PNG; Triton batches them; one forward runs them
all, each image keeping its own tokens (policy "threshold") in one packed buffer. Metrics are
Triton's own (Prometheus, on the metrics port). SIGINT or SIGTERM stops the server cleanly.
"""

from __future__ import annotations

import logging
import os
import signal
import sysconfig
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from . import protocol
from .protocol import decode_frame

LOG = logging.getLogger("iared_edge.serve")


@dataclass
class ServerConfig:
    """Where the server listens and how it batches. Invalid values raise a ValueError naming the
    field. max_batch: frames per forward at most; max_queue_delay_us: how long Triton may hold a
    frame to fill a batch (class names per answer: the Runtime's topk)."""

    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    address: str = "0.0.0.0"
    max_batch: int = 8
    max_queue_delay_us: int = 2000

    def __post_init__(self) -> None:
        ports = {"http_port": self.http_port, "grpc_port": self.grpc_port, "metrics_port": self.metrics_port}
        for name, port in ports.items():
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"{name} must be a TCP port in 1..65535, got {port!r}")
        if len(set(ports.values())) != 3:
            raise ValueError(f"the HTTP, gRPC and metrics ports must differ, got {ports}")
        v = self.max_batch
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {v!r}")
        v = self.max_queue_delay_us
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"max_queue_delay_us must be an int >= 0 (microseconds), got {v!r}")


def check_environment() -> None:
    """Refuse, with what to do, where the bundled server can't run: no nvidia-pytriton, or a
    numpy 2 (the Triton Python backend stub bundled with nvidia-pytriton 0.7 is built against
    numpy 1.x; under numpy 2 it corrupts BYTES tensors)."""
    try:
        import pytriton  # noqa: F401
    except ImportError:
        raise ImportError(
            "iared-edge serve needs Triton: pip install 'iared-edge[serve]' (nvidia-pytriton, tritonclient)"
        ) from None
    if int(np.__version__.split(".")[0]) >= 2:
        raise RuntimeError(
            f"numpy {np.__version__}: the Triton Python backend in nvidia-pytriton 0.7 needs numpy < 2 "
            "(pip install 'iared-edge[serve]' resolves it: numpy 1.26 with an OpenCV that takes it)"
        )


def stub_library_path() -> str:
    """LD_LIBRARY_PATH for Triton's Python backend stub: this interpreter's own libpython first.
    The stub otherwise loads the system's libpython, which under another interpreter (pyenv,
    conda) fails at model load ('_thread.RLock' object has no attribute '_recursion_count')."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    rest = os.environ.get("LD_LIBRARY_PATH", "")
    has_libpython = os.path.isdir(libdir) and any(f.startswith("libpython") for f in os.listdir(libdir))
    if not has_libpython or libdir in rest.split(":") or libdir.startswith(("/usr/lib", "/lib")):
        return rest  # a system Python's: the stub finds it anyway, and it must not shadow CUDA's paths
    return ":".join(p for p in (libdir, rest) if p)


def bound_memory() -> None:
    """A long-running server's memory, bounded: two glibc malloc arenas (not one per thread that
    ever allocated) and a small oneDNN primitive cache (every distinct packed size makes
    primitives; the default keeps 1024). Call before the first forward. A fixed mmap threshold
    would bound it further but costs throughput (docs/serving.md, "Memory")."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc (musl, macOS): their own allocators
        pass


def warm_up(runtime, max_batch: int) -> None:
    """Every batch size the server will form at keep levels 0.1 to 1.0: the allocator and the
    kernels' caches see the packed sizes frames bring before the first client does, so the
    server's memory is at its plateau from the start rather than after a few thousand frames."""
    import torch

    if runtime.backend != "torch":
        return
    x = torch.zeros(max_batch, 3, *runtime.input_size, device=runtime.device)
    with torch.inference_mode():
        for b in range(1, max_batch + 1):
            for level in [i / 10 for i in range(1, 11)]:
                runtime._backend(x[:b], level)


def make_infer(runtime) -> Callable[[List[Any]], List[Dict[str, np.ndarray]]]:
    """Triton's infer function over a dynamic batch of requests: every good frame of every request
    in one forward; a bad frame answered with its error, in band (see protocol)."""
    model = runtime.model
    gh, gw = model.grid_size
    S, N = model.num_stages, model.num_patches
    classes = model.vit.num_classes
    k = runtime.topk
    names = runtime.labels
    size = np.asarray(runtime.input_size, np.int32)
    fit = runtime.fit.encode()

    def empty(n: int) -> Dict[str, np.ndarray]:
        return {
            "label": np.full((n, 1), b"", dtype=np.object_),
            "labels": np.full((n, k), b"", dtype=np.object_),
            "indices": np.zeros((n, k), np.int32),
            "probs": np.zeros((n, k), np.float32),
            "logits": np.zeros((n, classes), np.float32),
            "heatmap": np.zeros((n, gh, gw), np.float32),
            "stage_masks": np.zeros((n, S, gh, gw), np.bool_),
            "kept_counts": np.zeros((n, S), np.int32),
            "keep_ratio": np.zeros((n, 1), np.float32),
            "input_size": np.broadcast_to(size, (n, 2)).copy(),
            "fit": np.full((n, 1), fit, dtype=np.object_),
            "error": np.full((n, 1), b"", dtype=np.object_),
        }

    def infer(requests: List[Any]) -> List[Dict[str, np.ndarray]]:
        outs, frames, where = [], [], []
        for r, request in enumerate(requests):
            payloads = np.asarray(request[protocol.INPUT], dtype=np.object_).reshape(-1)
            out = empty(len(payloads))
            for j, payload in enumerate(payloads):
                try:
                    frames.append(decode_frame(payload))
                    where.append((r, j))
                except Exception as exc:  # one frame's fault: answered to its client, never the batch's
                    out["error"][j, 0] = str(exc).encode() or type(exc).__name__.encode()
            outs.append(out)
        if frames:
            res, _ = runtime.forward_frames(frames, color="rgb")
            probs = res.logits.float().softmax(-1)
            top = probs.topk(k, dim=-1)
            masks = res.keep_masks.view(len(frames), S, gh, gw).numpy()
            counts = res.keep_masks.sum(-1).int().numpy()
            for i, (r, j) in enumerate(where):
                out, idx = outs[r], top.indices[i].tolist()
                out["label"][j, 0] = names[idx[0]].encode()
                out["labels"][j] = [names[c].encode() for c in idx]
                out["indices"][j] = idx
                out["probs"][j] = top.values[i].numpy()
                out["logits"][j] = res.logits[i].float().numpy()
                out["heatmap"][j] = res.heatmap[i].float().numpy()
                out["stage_masks"][j] = masks[i]
                out["kept_counts"][j] = counts[i]
                out["keep_ratio"][j, 0] = float(counts[i].mean() / N)
        return outs

    return infer


def tensors(runtime):
    """pytriton's input and output declarations for model "iared"."""
    from pytriton.model_config import Tensor

    model = runtime.model
    gh, gw = model.grid_size
    S, k, classes = model.num_stages, runtime.topk, model.vit.num_classes
    inputs = [Tensor(name=protocol.INPUT, dtype=np.bytes_, shape=(1,))]
    outputs = [
        Tensor(name="label", dtype=np.bytes_, shape=(1,)),
        Tensor(name="labels", dtype=np.bytes_, shape=(k,)),
        Tensor(name="indices", dtype=np.int32, shape=(k,)),
        Tensor(name="probs", dtype=np.float32, shape=(k,)),
        Tensor(name="logits", dtype=np.float32, shape=(classes,)),
        Tensor(name="heatmap", dtype=np.float32, shape=(gh, gw)),
        Tensor(name="stage_masks", dtype=np.bool_, shape=(S, gh, gw)),
        Tensor(name="kept_counts", dtype=np.int32, shape=(S,)),
        Tensor(name="keep_ratio", dtype=np.float32, shape=(1,)),
        Tensor(name="input_size", dtype=np.int32, shape=(2,)),
        Tensor(name="fit", dtype=np.bytes_, shape=(1,)),
        Tensor(name="error", dtype=np.bytes_, shape=(1,)),
    ]
    return inputs, outputs


def serve(
    model: Any = "demo",
    runtime_config=None,
    config: Optional[ServerConfig] = None,
    stop: Optional[threading.Event] = None,
    on_ready: Optional[Callable[[], None]] = None,
) -> None:
    """Run the server until `stop` is set, or SIGINT/SIGTERM (when called on the main thread).
    model: what `Runtime` takes; runtime_config: a RuntimeConfig (policy, thresholds or keep
    level, device, precision; no latency budget: Triton's batches are the server's unit of work)."""
    from ..runtime import Runtime, RuntimeConfig

    check_environment()
    config = config or ServerConfig()
    runtime_config = runtime_config or RuntimeConfig()
    if runtime_config.budget_ms is not None:
        raise ValueError("serve runs without a latency budget (Triton batches the frames): leave budget_ms unset")
    bound_memory()
    runtime = Runtime(model, runtime_config)
    engine_batch = getattr(runtime._backend, "max_batch", None)  # TensorRT engines: built for batches up to it
    if engine_batch is not None and config.max_batch > engine_batch:
        runtime.close()
        raise ValueError(
            f"max_batch {config.max_batch} is over the {runtime.backend} backend's {engine_batch}: "
            f"serve with --max-batch {engine_batch} or less"
        )
    # the server inherits the environment when it starts; the stub then loads this libpython
    old_path = os.environ.get("LD_LIBRARY_PATH")
    os.environ["LD_LIBRARY_PATH"] = stub_library_path()

    from pytriton.model_config import DynamicBatcher, ModelConfig
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    triton_config = TritonConfig(
        http_address=config.address,
        http_port=config.http_port,
        grpc_address=config.address,
        grpc_port=config.grpc_port,
        metrics_address=config.address,
        metrics_port=config.metrics_port,
        allow_metrics=True,
        allow_cpu_metrics=True,
        exit_timeout_secs=5,
    )
    stop = stop or threading.Event()
    restore = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            restore[sig] = signal.signal(sig, lambda *_: stop.set())
    LOG.info("warming up: batches of 1 to %d frames at keep levels 0.1 to 1.0", config.max_batch)
    warm_up(runtime, config.max_batch)
    inputs, outputs = tensors(runtime)
    try:
        # Triton's admin endpoints stay behind pytriton's access token; its statistics (batch sizes,
        # queue times: what an operator watches) are open to read
        security = TritonSecurityConfig(restricted_endpoints=["shared-memory", "model-repository", "trace", "logging"])
        with Triton(config=triton_config, security_config=security) as triton:
            triton.bind(
                model_name=protocol.MODEL,
                infer_func=make_infer(runtime),
                inputs=inputs,
                outputs=outputs,
                config=ModelConfig(
                    max_batch_size=config.max_batch,
                    batcher=DynamicBatcher(max_queue_delay_microseconds=config.max_queue_delay_us),
                ),
                strict=True,
            )
            triton.run()
            LOG.info(
                "serving model %r on gRPC %s:%d, HTTP %d, metrics %d",
                protocol.MODEL,
                config.address,
                config.grpc_port,
                config.http_port,
                config.metrics_port,
            )
            if on_ready is not None:
                on_ready()
            while not stop.wait(0.5):
                if not triton.is_alive():
                    raise RuntimeError("Triton Inference Server exited on its own (see its log above)")
    finally:
        for sig, handler in restore.items():
            signal.signal(sig, handler)
        if old_path is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = old_path
        runtime.close()
