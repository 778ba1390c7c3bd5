"""CARAFE (Content-Aware ReAssembly of FEatures) for PyTorch and Ultralytics RT-DETR/YOLO models."""

from .functional import carafe
from .module import CARAFE

__version__ = "0.1.0"
__all__ = ["CARAFE", "__version__", "carafe"]
