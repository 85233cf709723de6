"""Streaming inference for camera apps: `Runtime`, its `Result`, and the latency-budget controller."""
from .controller import BudgetController
from .runtime import Result, Runtime

__all__ = ["Runtime", "Result", "BudgetController"]
