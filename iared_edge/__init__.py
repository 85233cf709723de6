"""iared-edge: IA-RED² Vision Transformers that drop redundant tokens and explain themselves."""
from . import demo as _demo  # registers the demo backbone with timm before any model is loaded
from .checkpoint import load_model, save_model
from .model import IARedOutput, IARedViT
from .packed import Packed
from .runtime import Result, Runtime

__version__ = "0.1.0"
__all__ = ["IARedViT", "IARedOutput", "Packed", "Runtime", "Result", "load_model", "save_model", "__version__"]
