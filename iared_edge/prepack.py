"""oneDNN-prepacked weights for CPU linears that see few rows.

At a low keep level a batch-1 forward runs each Linear on a handful of rows, and the time goes to
reading the weights, not to arithmetic. The default CPU GEMM re-lays-out (packs) its weight on
every call; oneDNN can take the weight packed once (`torch.ops.mkldnn._reorder_linear_weight`)
and skip that. At many rows packing is a small share and the default GEMM is as fast or faster,
so the packed weight is used only up to `max_rows` rows.

    prepack_linears(model.vit)      # every nn.Linear in it, from now on
    with PrepackedLinears(model.vit):   # only inside the block (the Runtime's way on a CPU, so a
        out = model(x)                  # model it was given behaves as before outside its calls)

Parameters and state dict are unchanged; each packed copy (the weights once more in memory) is
made again when its weight changes. Anything the packed call can't serve (gradients, other
devices or dtypes, autocast, tracing, export, compiling) goes to `F.linear` as before.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_ROWS = 256  # above this the default GEMM is as fast (docs/benchmarks.md, "Prepacked linears")


def available() -> bool:
    """Whether this torch has oneDNN's packed linear (x86 and aarch64 builds with mkldnn)."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


class PrepackedForward:
    """A Linear's forward with a packed copy of its weight, installed as `linear.forward`."""

    def __init__(self, linear: nn.Linear, max_rows: int = MAX_ROWS):
        self.linear, self.max_rows = linear, max_rows
        self._packed = None  # (key, packed weight)

    def __reduce__(self):  # copies and pickles carry the patch, not the packed (opaque) weight
        return (PrepackedForward, (self.linear, self.max_rows))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.linear.weight, self.linear.bias
        if self._packs(x, w):
            return torch.ops.mkldnn._linear_pointwise(x, self._weight(w), b, "none", [], "")
        return F.linear(x, w, b)

    def _packs(self, x: torch.Tensor, w: torch.Tensor) -> bool:
        if x.device.type != "cpu" or w.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32:
            return False
        if torch.is_grad_enabled() and (w.requires_grad or x.requires_grad):
            return False  # the packed call has no backward
        if type(x) is not torch.Tensor and not isinstance(x, nn.Parameter):
            return False  # fake, functional or other tensor subclasses: the plain op
        if (
            torch.jit.is_tracing()
            or torch.jit.is_scripting()
            or torch.compiler.is_compiling()
            or torch.onnx.is_in_onnx_export()
            or torch.is_autocast_enabled("cpu")
        ):
            return False
        rows = x.numel() // max(x.shape[-1], 1)
        return 0 < rows <= self.max_rows

    def _weight(self, w: torch.Tensor) -> torch.Tensor:
        try:
            version = w._version
        except RuntimeError:  # an inference tensor keeps no version
            version = None
        key = (w.data_ptr(), version, tuple(w.shape))
        if self._packed is None or self._packed[0] != key:
            with torch.no_grad():
                self._packed = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach()))
        return self._packed[1]


def _check_max_rows(max_rows: int) -> None:
    if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1:
        raise ValueError(f"max_rows must be a positive int, got {max_rows!r}")


def prepack_linears(module: nn.Module, max_rows: int = MAX_ROWS) -> int:
    """Patch every nn.Linear in `module` to use a prepacked weight at up to `max_rows` rows on a
    CPU. Returns how many were patched (0 where oneDNN's packed linear is missing). Idempotent."""
    _check_max_rows(max_rows)
    if not available():
        return 0
    n = 0
    for m in module.modules():
        if type(m) is nn.Linear:  # subclasses (quantised, LoRA...) have forwards of their own
            current = m.__dict__.get("forward")
            if isinstance(current, PrepackedForward):
                current.max_rows = max_rows
            else:
                m.forward = PrepackedForward(m, max_rows)
            n += 1
    return n


class PrepackedLinears:
    """Prepacked weights for `module`'s Linears, in use only inside `with` (entering installs the
    patched forwards, leaving removes them; the packed weights are kept between uses). Linears
    that already have a forward of their own (`prepack_linears`) are left as they are."""

    def __init__(self, module: nn.Module, max_rows: int = MAX_ROWS):
        _check_max_rows(max_rows)
        linears = [m for m in module.modules() if type(m) is nn.Linear and "forward" not in m.__dict__]
        self.forwards = {m: PrepackedForward(m, max_rows) for m in linears} if available() else {}

    def __enter__(self) -> PrepackedLinears:
        for m, f in self.forwards.items():
            m.__dict__["forward"] = f  # the instance dict itself: no Module.__setattr__ per Linear per call
        return self

    def __exit__(self, *exc) -> None:
        for m, f in self.forwards.items():
            if m.__dict__.get("forward") is f:
                del m.__dict__["forward"]


def unprepack_linears(module: nn.Module) -> int:
    """Undo `prepack_linears`: the Linears' own forward again. Returns how many were restored."""
    n = 0
    for m in module.modules():
        if isinstance(m.__dict__.get("forward"), PrepackedForward):
            del m.forward
            n += 1
    return n


def is_prepacked(module: nn.Module) -> bool:
    return any(isinstance(m.__dict__.get("forward"), PrepackedForward) for m in module.modules())
