"""iared-edge: IA-RED² Vision Transformers that drop redundant tokens and explain themselves."""

from .checkpoint import load_model, save_model
from .model import IARedOutput, IARedViT
from .packed import Packed
from .runtime import Result, Runtime, RuntimeConfig

__version__ = "0.1.0"
__all__ = [
    "IARedViT",
    "IARedOutput",
    "Packed",
    "Runtime",
    "RuntimeConfig",
    "Result",
    "load_model",
    "save_model",
    "__version__",
]
