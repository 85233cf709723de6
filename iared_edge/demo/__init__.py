"""The demo task (digits in clutter), its backbone and the bundled demo model."""

import os

from . import model as _model  # noqa: F401  (registers iared_digits_tiny with timm)
from .digits import ASSETS, CLASSES, DigitsInClutter, read_boxes, write_dataset

DEMO_MODEL = os.path.join(ASSETS, "iared_digits_tiny.safetensors")

__all__ = ["CLASSES", "DigitsInClutter", "read_boxes", "write_dataset", "DEMO_MODEL"]
