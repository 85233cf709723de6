"""The demo task (digits in clutter), its backbone and the bundled demo model."""
from . import model as _model  # registers iared_digits_tiny with timm
from .digits import CLASSES, DigitsInClutter, read_boxes, write_dataset

DEMO_MODEL = _model.__file__.rsplit("/", 2)[0] + "/assets/demo/iared_digits_tiny.safetensors"

__all__ = ["CLASSES", "DigitsInClutter", "read_boxes", "write_dataset", "DEMO_MODEL"]
