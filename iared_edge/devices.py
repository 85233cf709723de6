"""Which torch device a user's `device=` means, with a clear error when it is not there."""
from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto": CUDA when present, else the CPU. "cpu", "cuda", "cuda:N" or a torch.device: checked
    here, so a missing GPU is named at once rather than by a driver error deep inside torch."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f'device must be "auto", "cpu", "cuda" or "cuda:N", got {device!r}') from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available here (torch {torch.__version__}, "
                             f"built for CUDA {torch.version.cuda or 'none'}; no GPU or driver found): "
                             'use device="cpu" or "auto"')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise ValueError(f'device must be "auto", "cpu", "cuda" or "cuda:N", got {device!r}')
    return dev
