"""Checks, on any machine, that a function may be captured in a CUDA graph and run on fake CUDA.

A CUDA graph records kernels; while a stream captures, anything that waits for the device or
copies host data to it raises (or is silently baked in). `capture_safe(fn, *args)` runs `fn` under
a dispatch mode that fails on every such op, so a CPU test catches what would fail on the first
GPU. `fake_cuda(module)` gives the module's parameters and buffers as fake CUDA tensors (no GPU
needed: shapes, dtypes and devices are tracked, no data), for `torch.func.functional_call`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# op -> why it may not run inside CUDA-graph capture
HOST_OPS = {
    aten._local_scalar_dense.default: "reads a device value back to the host (.item(), .tolist(), bool(), int())",
    aten.nonzero.default: "its output size depends on the data (a host sync)",
    aten.masked_select.default: "its output size depends on the data (a host sync)",
    aten.lift_fresh.default: "makes a tensor from Python data (torch.tensor(...): a host-to-device copy)",
    aten.lift_fresh_copy.default: "makes a tensor from Python data (torch.tensor(...): a host-to-device copy)",
    aten._unique2.default: "its output size depends on the data (a host sync)",
    aten.repeat_interleave.Tensor: "without output_size, its output size depends on the data (a host sync)",
}


class HostSyncError(RuntimeError):
    """An op that would sync with or copy from the host ran where that is not allowed."""


class CaptureSafetyMode(TorchDispatchMode):
    """Fails on any op that syncs with the host or copies host data to the device: the ops that
    CUDA-graph capture forbids. `allowed`: ops to let through (with the reason given by the caller)."""

    def __init__(self, allowed: Tuple = ()):
        super().__init__()
        self.allowed = set(allowed)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in self.allowed:
            why = HOST_OPS.get(func)
            if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is not None:
                why = None
            if why is None and func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
                indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
                if any(i is not None and i.dtype == torch.bool for i in indices):
                    why = "boolean-mask indexing: its size depends on the data (a host sync)"
            if why is None and func in (aten._to_copy.default, aten.copy_.default):
                why = _host_transfer(func, args, kwargs)
            if why is not None:
                raise HostSyncError(f"{func}: {why}; not allowed inside CUDA-graph capture")
        return func(*args, **kwargs)


def _host_transfer(func, args, kwargs) -> Optional[str]:
    """A copy between host and a CUDA device (only visible when the tensors are (fake) CUDA ones)."""
    if func is aten._to_copy.default:
        src, dst = args[0].device, kwargs.get("device")
    else:
        dst, src = args[0].device, args[1].device
    if dst is None or src is None:
        return None
    if torch.device(src).type != torch.device(dst).type:
        return f"copies from {src} to {dst}"
    return None


def capture_safe(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` under CaptureSafetyMode: returns its result, or raises HostSyncError
    naming the first op that CUDA-graph capture would refuse."""
    with CaptureSafetyMode():
        return fn(*args, **kwargs)


@contextmanager
def fake_cuda_mode() -> Iterator:
    """A FakeTensorMode with a ShapeEnv (data-dependent sizes become symbols): inside it, tensors
    made on "cuda" are fake CUDA tensors, on a machine with no GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    mode = FakeTensorMode(shape_env=ShapeEnv())
    with mode:
        yield mode


def fake_cuda(
    module: torch.nn.Module, mode, dtype: Optional[torch.dtype] = None, device: str = "cuda"
) -> Dict[str, torch.Tensor]:
    """The module's parameters and buffers as fake tensors on `device` (floating ones cast to
    `dtype` when given), for `torch.func.functional_call(module, state, args)` inside `mode`."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():  # the real tensors, detached outside the fake mode
        state = {k: v.detach() for k, v in [*module.named_parameters(), *module.named_buffers()]}
    out = {}
    for name, t in state.items():
        f = mode.from_tensor(t)
        out[name] = f.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)
    return out
