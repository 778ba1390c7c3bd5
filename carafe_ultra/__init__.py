"""CARAFE (Content-Aware ReAssembly of FEatures) for PyTorch and Ultralytics RT-DETR/YOLO models."""

from .functional import carafe
from .integration import model_dir, model_yaml, register
from .module import CARAFE

__version__ = "0.1.0"
__all__ = ["CARAFE", "__version__", "carafe", "model_dir", "model_yaml", "register"]
