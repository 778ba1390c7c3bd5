"""CARAFE (Content-Aware ReAssembly of FEatures) for PyTorch and Ultralytics RT-DETR/YOLO models.

The core, bottom up: ``_checks`` -> ``backends`` -> ``functional`` (:func:`carafe`) -> ``module`` (:class:`CARAFE`),
``dysample`` (:class:`DySample`), ``eucb`` (:class:`EUCB`) and ``downsample`` (:class:`CARAFEDown`, CARAFE++'s
downsampler, :func:`carafe_downsample`) -> ``upsamplers`` (the table of upsamplers) -> ``heads`` (segmentation
heads with any upsampler in their mask branch), with ``resnet`` (:class:`ResNetBasicLayer`, RT-DETR-R18's backbone)
-> ``integration`` (Ultralytics)
-> ``yamls`` (model YAMLs). The experiment tooling (data, baselines, ablation, report, benchmark) lives in
``carafe_ultra.experiments``; the core never imports it.
"""

from .downsample import CARAFEDown
from .dysample import DySample
from .eucb import EUCB
from .functional import carafe, carafe_downsample
from .integration import UnsupportedUltralyticsError, register
from .module import CARAFE
from .resnet import ResNetBasicLayer
from .yamls import carafe_yaml, convert_yaml, model_dir, model_yaml

__version__ = "0.2.0"
__all__ = ["CARAFE", "CARAFEDown", "EUCB", "DySample", "ResNetBasicLayer", "UnsupportedUltralyticsError", "__version__", "carafe",
           "carafe_downsample",
           "carafe_yaml", "convert_yaml", "model_dir", "model_yaml", "register"]
