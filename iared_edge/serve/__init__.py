"""Serving many cameras from one machine: `iared-edge serve` (Triton Inference Server through
nvidia-pytriton), `RemoteRuntime` (its client) and `export_triton_repository` (a model repository
for a Triton you run yourself). Needs the extra: pip install 'iared-edge[serve]'."""

from .client import RemoteRuntime, ServerError, ServerUnavailable
from .protocol import FrameError
from .repository import export_triton_repository

__all__ = ["RemoteRuntime", "ServerUnavailable", "ServerError", "FrameError", "export_triton_repository"]
