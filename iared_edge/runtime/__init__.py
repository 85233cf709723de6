"""Streaming inference for camera apps: `Runtime`, its `Result`, and the latency-budget controller."""

from .backends import Backend, BackendOutput, TorchBackend, make_backend
from .config import RuntimeConfig
from .controller import BudgetController
from .runtime import Result, Runtime

__all__ = [
    "Runtime",
    "RuntimeConfig",
    "Result",
    "BudgetController",
    "Backend",
    "BackendOutput",
    "TorchBackend",
    "make_backend",
]
