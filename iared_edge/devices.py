"""Which torch device a user's `device=` means (with a clear error when it is not there), and what
the CPU offers reduced precision."""

from __future__ import annotations

from typing import Optional

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto": CUDA when present, else the CPU. "cpu", "cuda", "cuda:N" or a torch.device: checked
    here, so a missing GPU is named at once rather than by a driver error deep inside torch."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f'device must be "auto", "cpu", "cuda" or "cuda:N", got {device!r}') from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r}: CUDA is not available here (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda or 'none'}; no GPU or driver found): "
                'use device="cpu" or "auto"'
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise ValueError(f'device must be "auto", "cpu", "cuda" or "cuda:N", got {device!r}')
    return dev


AMP_CHOICES = ("auto", "bf16", "fp16", "none")


def autocast_dtype(device: str | torch.device = "cpu", amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype that `amp` ("bf16", "fp16", "none" or "auto") means on `device`; None is
    float32. "auto": on a CPU, bfloat16 only where it has bf16 instructions (AVX512-BF16 or AMX):
    elsewhere torch emulates it, far slower than float32 (docs/benchmarks.md, 'Reduced precision');
    on CUDA, bfloat16 where supported, else float16."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    if amp != "auto":
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX); elsewhere torch emulates bf16."""
    # the probes exist from torch 2.5; NVIDIA's JetPack 6.0 wheels are 2.4 (ARM CPUs: no such units)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


# CPU flags (/proc/cpuinfo) of the int8 dot-product instructions ONNX Runtime's int8 GEMMs use
INT8_DOT_FLAGS = {
    "amx_int8": "AMX-INT8",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "asimddp": "ARM dot product",
}


def cpu_int8_dot(cpuinfo: str = "/proc/cpuinfo") -> Optional[str]:
    """The int8 dot-product instructions this CPU has ("AVX512-VNNI", "ARM dot product", ...), as
    Linux reports them; None where it has none or the OS does not say (int8 graphs then still
    run, with less to gain: docs/benchmarks.md)."""
    try:
        with open(cpuinfo) as f:
            flags = {
                w
                for line in f
                if line.lower().startswith(("flags", "features"))
                for w in line.split(":", 1)[-1].split()
            }
    except OSError:
        return None
    found = [name for flag, name in INT8_DOT_FLAGS.items() if flag in flags]
    return ", ".join(found) or None


PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = (*PRECISION_DTYPES, "auto")
# A Runtime also runs int8 graphs (backend "onnxruntime"): weights quantized, not a torch dtype
RUNTIME_PRECISIONS = (*PRECISIONS, "int8")


def inference_dtype(device: str | torch.device = "cpu", precision: str = "fp32") -> torch.dtype:
    """The weight dtype that `precision` ("fp32", "fp16", "bf16" or "auto") means for inference on
    `device`. "auto": float16 on CUDA (every GPU the SDK targets, Jetson Xavier and Orin included,
    has fp16 arithmetic; bfloat16 needs sm_80); on a CPU, bfloat16 only where it has bf16
    instructions (AVX512-BF16 or AMX), else float32 (torch emulates both half types there, far
    slower than float32: docs/benchmarks.md, 'Reduced precision')."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return PRECISION_DTYPES[precision]
    if torch.device(device).type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32
