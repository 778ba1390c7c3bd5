"""Registration, the shipped YAMLs, errors that name the layer, FLOPs, half precision. No training here."""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import ultralytics
import yaml
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.torch_utils import get_flops, get_num_params

import carafe_ultra
from carafe_ultra import CARAFE, DySample, carafe_yaml, model_yaml
from carafe_ultra.integration import UnsupportedUltralyticsError, _parse_model_with_ours, ultralytics_model
from tests.ultralytics_helpers import SHIPPED_FROM as SHIPPED
from tests.ultralytics_helpers import STOCK_MODELS, output_shapes


def upsample_rows(path):
    cfg = yaml.safe_load(Path(path).read_text())
    return sum(row[2] == "nn.Upsample" for row in cfg.get("backbone", []) + cfg.get("head", []))


# Every model YAML the installed Ultralytics ships that upsamples with nn.Upsample (about 58 in 8.4).
STOCK_WITH_UPSAMPLING = sorted(p for p in STOCK_MODELS.rglob("*.yaml") if upsample_rows(p))


def test_the_stock_models_cover_every_task():
    tasks = {ultralytics_model(p).task for p in STOCK_WITH_UPSAMPLING if p.stem.startswith("yolo26")}
    assert len(STOCK_WITH_UPSAMPLING) >= 50 and tasks == {"detect", "segment", "pose", "obb", "semantic", "depth"}


def modules_of(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("stock", STOCK_WITH_UPSAMPLING, ids=lambda p: str(p.relative_to(STOCK_MODELS)))
def test_every_stock_model_with_upsampling_converts_builds_and_runs(stock, tmp_path):
    converted, original = ultralytics_model(carafe_yaml(stock, tmp_path)), ultralytics_model(stock)
    assert converted.task == original.task
    network, stock_network = converted.model.eval(), original.model.eval()
    assert modules_of(network, CARAFE) == upsample_rows(stock)
    # Heads may upsample inside their own modules (YOLOE's proto); only the YAML's rows change.
    assert modules_of(network, torch.nn.Upsample) == modules_of(stock_network, torch.nn.Upsample) - upsample_rows(stock)
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        assert output_shapes(network(x)) == output_shapes(stock_network(x))


def build(name):
    """The PyTorch model a YAML name builds, as the yolo command builds it."""
    return ultralytics_model(name).model


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_yaml_is_stock_except_upsample_rows(name):
    ours = yaml.safe_load(Path(model_yaml(name)).read_text())
    stock = yaml.safe_load(SHIPPED[name].read_text())
    changed = 0
    for section in ("backbone", "head"):
        for mine, theirs in zip(ours[section], stock[section], strict=True):
            if theirs[2] == "nn.Upsample":
                assert mine[2] == "CARAFE" and mine[:2] == theirs[:2]
                changed += 1
            else:
                assert mine == theirs
    assert changed == 2
    assert {k: v for k, v in ours.items() if k not in ("backbone", "head")} == {
        k: v for k, v in stock.items() if k not in ("backbone", "head")}


@pytest.mark.parametrize("ours,stock", [("yolov8n-carafe.yaml", "yolov8n.yaml"), ("yolov8x-carafe.yaml", "yolov8x.yaml"),
                                        ("yolo11s-carafe.yaml", "yolo11s.yaml"), ("yolo11l-carafe.yaml", "yolo11l.yaml"),
                                        ("yolo12n-carafe.yaml", "yolo12n.yaml"), ("yolo26s-carafe.yaml", "yolo26s.yaml"),
                                        ("yolo26l-carafe.yaml", "yolo26l.yaml"), ("rtdetr-l-carafe.yaml", "rtdetr-l.yaml"),
                                        ("rtdetr-resnet50-carafe.yaml", "rtdetr-resnet50.yaml")])
def test_channels_match_stock_model_at_every_scale(ours, stock):
    ours = build(model_yaml(ours))
    stock = build(stock)
    carafes = [m for m in ours.model if isinstance(m, CARAFE)]
    assert len(carafes) == 2 and all(m.projection is None for m in carafes)
    extra = sum(p.numel() for m in carafes for p in m.parameters())
    assert get_num_params(ours) - get_num_params(stock) == extra  # every other layer is the same size
    x = torch.zeros(1, 3, 64, 64)
    ours.eval(), stock.eval()
    with torch.no_grad():
        a, b = ours(x), stock(x)
    a, b = (a[0] if isinstance(a, (tuple, list)) else a), (b[0] if isinstance(b, (tuple, list)) else b)
    assert a.shape == b.shape


@pytest.mark.parametrize("name", ["rtdetr-x-carafe.yaml", "rtdetr-resnet101-carafe.yaml"])
def test_large_models_build(name):
    model = build(model_yaml(name))
    assert sum(isinstance(m, CARAFE) for m in model.model) == 2


def test_register_is_idempotent():
    from ultralytics.nn import tasks

    before = tasks.parse_model
    carafe_ultra.register()
    carafe_ultra.register()
    assert tasks.parse_model is before and tasks.CARAFE is CARAFE and tasks.DySample is DySample


def _yaml_with_row(tmp_path, row, name="yolov8n-bad.yaml"):
    cfg = yaml.safe_load(Path(model_yaml("yolov8-carafe.yaml")).read_text())
    cfg["head"][0] = row
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "row,pattern",
    [
        ([-1, 1, "CARAFE", [1024, 4, 2]], r"model YAML layer 10 .*-> CARAFE\(256, 256, 4, 2\): kernel_size must be odd"),
        ([-1, 1, "CARAFE", [1024, 5, 2, 3, 64, 3]], r"model YAML layer 10 .*divisible by groups \(3\)"),
        ([-1, 2, "CARAFE", [1024]], r"model YAML layer 10 .*'repeats' must be 1"),
        ([[-1, 6], 1, "CARAFE", [1024]], r"model YAML layer 10 .*single layer index \(CARAFE takes one input\)"),
        ([-1, 1, "CARAFE", []], r"model YAML layer 10 .*output channels"),
        ([-1, 1, "CARAFE", ["a"]], r"model YAML layer 10 .*args\[0\] must be the output channels"),
        ([-1, 1, "CARAFE", [1024, 5, 2, 3, 64, 1, 0.8, 9]],
         r"at most 7 args: \[c2, kernel_size, up_factor, encoder_kernel, compressed_channels, groups, "
         r"centre_weight\], got 8"),
        ([-1, 1, "DySample", [1024, 2, 3]], r"model YAML layer 10 .*-> DySample\(256, 256, 2, 3\): channels \(c1\) "
                                            r"\(256\) must be divisible by groups \(3\)"),
        ([-1, 1, "DySample", [512, 2]], r"model YAML layer 10 .*DySample keeps the channels: c2 must equal c1 \(256\)"),
        ([-1, 1, "DySample", [1024, 2, 4, 0.25, 1]], r"at most 4 args: \[c2, scale, groups, scope\], got 5"),
        ([[-1, 6], 1, "DySample", [1024]], r"single layer index \(DySample takes one input\)"),
    ],
)
def test_wrong_row_of_our_modules_names_the_layer(tmp_path, row, pattern):
    with pytest.raises(ValueError, match=pattern):
        DetectionModel(str(_yaml_with_row(tmp_path, row)), verbose=False)


def test_flops_count_the_reassembly():
    thop_profile = importlib.import_module("thop.profile")  # the module: thop.profile is also a function

    model = build(model_yaml("yolov8n-carafe.yaml"))
    with_rule = get_flops(model, imgsz=64)
    rule = thop_profile.register_hooks.pop(CARAFE)
    try:
        without_rule = get_flops(model, imgsz=64)
    finally:
        thop_profile.register_hooks[CARAFE] = rule
    # Layer 10 upsamples 256 x 2x2 -> 4x4, layer 13 128 x 4x4 -> 8x8 at 64 px; k=5: 25 MACs per output value.
    reassembly_gflops = 2 * 25 * (256 * 4 * 4 + 128 * 8 * 8) / 1e9
    assert without_rule > 0
    assert with_rule - without_rule == pytest.approx(reassembly_gflops, rel=1e-6)


@pytest.mark.parametrize("name", ["yolov8n-carafe.yaml", "rtdetr-l-carafe.yaml"])
def test_half_precision_inference(name):
    # What validation during training does on a GPU: model.half(), no autocast.
    model = build(model_yaml(name)).eval()
    outputs = []
    for m in model.modules():
        if isinstance(m, CARAFE):
            m.register_forward_hook(lambda module, args, out: outputs.append(out))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
        half = model.half()(x.half())[0]
    assert torch.isfinite(half).all()
    full_carafe, half_carafe = outputs[:2], outputs[2:]
    assert [o.dtype for o in half_carafe] == [torch.float16, torch.float16]
    for f, h in zip(full_carafe, half_carafe):  # (an untrained RT-DETR's top-k output may reorder)
        assert (h.float() - f).abs().max() <= 0.02 * f.abs().max() + 1e-3


def _python(code, **env):
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env})
    return run


def test_fresh_interpreter_registers_without_import_and_without_torch_at_startup():
    startup = _python("import sys; print('torch' in sys.modules, 'carafe_ultra' in sys.modules)")
    assert startup.stdout.split() == ["False", "False"], startup.stderr
    code = (f"from ultralytics.nn.tasks import DetectionModel; import sys\n"
            f"m = DetectionModel({model_yaml('yolov8n-carafe.yaml')!r}, verbose=False)\n"
            f"print(sorted({{type(l).__name__ for l in m.model}} & {{'CARAFE'}}))")
    run = _python(code)
    assert run.returncode == 0 and "['CARAFE']" in run.stdout, run.stderr
    off = _python(code, CARAFE_ULTRA_AUTOREGISTER="0")
    assert off.returncode != 0 and "KeyError: 'CARAFE'" in off.stderr


def test_unsupported_ultralytics_fails_clearly():
    code = ("import ultralytics; ultralytics.__version__ = '8.2.103'\n"
            "import carafe_ultra\n"
            "try:\n    carafe_ultra.register()\n"
            "except RuntimeError as e:\n    print(type(e).__name__, e)\n")
    run = _python(code, CARAFE_ULTRA_AUTOREGISTER="0")
    assert "UnsupportedUltralyticsError carafe-ultra supports Ultralytics >=8.3.65,<8.5, found 8.2.103" in run.stdout, run.stderr


def test_parse_model_without_base_modules_fails_clearly():
    class FakeTasks:
        @staticmethod
        def parse_model(d, ch, verbose=True):
            return d

    with pytest.raises(UnsupportedUltralyticsError, match="no longer builds a base_modules frozenset"):
        _parse_model_with_ours(FakeTasks, "9.0.0")


def test_parse_model_that_no_longer_names_the_stock_heads_fails_clearly():
    class FakeTasks:
        @staticmethod
        def parse_model(d, ch, verbose=True):
            base_modules = frozenset({Conv})  # only read, as source: parse_model never runs here
            return d

    from carafe_ultra.heads import HEAD_ROWS

    every_stock_head = ", ".join(sorted({row.stock for row in HEAD_ROWS.values()}))
    with pytest.raises(UnsupportedUltralyticsError,
                       match=re.escape(f"parse_model no longer names {every_stock_head} in a set or test of heads")):
        _parse_model_with_ours(FakeTasks, "9.0.0")


def test_the_upsampler_table_says_which_rows_parse_model_reads_like_conv_rows():
    from carafe_ultra.integration import conv_like_modules, yaml_module_class
    from carafe_ultra.upsamplers import UPSAMPLERS

    for entry in UPSAMPLERS.values():
        assert entry.conv_like == (yaml_module_class(entry.module) in conv_like_modules()), entry.name
        built = entry.build(16, 2)
        assert type(built) is yaml_module_class(entry.module)
        assert built(torch.zeros(1, 16, 4, 4)).shape == (1, 16, 8, 8)


def test_pyproject_declares_the_tested_range():
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert re.search(r'"ultralytics>=8\.3\.65,<8\.5"', text)
    assert (8, 3, 65) <= tuple(int(p) for p in ultralytics.__version__.split(".")[:3]) < (8, 5)
