"""CARAFE++ downsampling in Ultralytics models: the converter's swap on every stock YAML that has strided neck Convs,
and the shipped YAMLs with both swaps. RT-DETR-l with both swaps through model.train and ONNX is in
test_ultralytics_workflows.py (test_python_api_rtdetr_end_to_end); the yolo command's
train/val/export of YOLO11n with both swaps, every export format and safe loading are in test_exports.py, DDP in
test_ddp.py."""

from pathlib import Path

import pytest
import torch
import yaml
from ultralytics.nn.modules import Conv
from ultralytics.utils.torch_utils import get_num_params

from carafe_ultra import CARAFE, CARAFEDown, convert_yaml, model_yaml
from carafe_ultra.integration import ultralytics_model
from tests.ultralytics_helpers import SHIPPED_BOTH, STOCK_MODELS, output_shapes


def strided_neck_convs(path):
    cfg = yaml.safe_load(Path(path).read_text())
    return [row for row in cfg.get("head") or [] if row[2] == "Conv" and len(row[3]) == 3 and row[3][2] >= 2]


def upsampling_rows(path):
    cfg = yaml.safe_load(Path(path).read_text())
    return [row for row in (cfg.get("backbone") or []) + (cfg.get("head") or []) if row[2] == "nn.Upsample"]


# Every stock model YAML with strided Conv rows in its neck (about 45 in Ultralytics 8.4).
STOCK_WITH_STRIDED_NECK = sorted(p for p in STOCK_MODELS.rglob("*.yaml") if strided_neck_convs(p))


def count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


def test_most_stock_models_have_strided_neck_convs():
    assert len(STOCK_WITH_STRIDED_NECK) >= 40


@pytest.mark.parametrize("stock", STOCK_WITH_STRIDED_NECK, ids=lambda p: str(p.relative_to(STOCK_MODELS)))
def test_every_stock_model_converts_builds_and_keeps_its_shapes(stock, tmp_path):
    both = bool(upsampling_rows(stock))  # the upsampling swap too where the model upsamples with nn.Upsample
    path = convert_yaml(stock, "carafe" if both else None, tmp_path, downsample=True)
    ours, theirs = ultralytics_model(path).model.eval(), ultralytics_model(stock).model.eval()
    assert count(ours, CARAFEDown) == len(strided_neck_convs(stock))
    assert count(ours, CARAFE) == (len(upsampling_rows(stock)) if both else 0)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert output_shapes(ours(x)) == output_shapes(theirs(x))


@pytest.mark.parametrize("name", sorted(SHIPPED_BOTH))
def test_shipped_yaml_is_stock_except_the_swapped_rows(name):
    ours = yaml.safe_load(Path(model_yaml(name)).read_text())
    stock = yaml.safe_load(SHIPPED_BOTH[name].read_text())
    swapped = {"nn.Upsample": "CARAFE", "Conv": "CARAFEDown"}
    changed = []
    for section in ("backbone", "head"):
        for mine, theirs in zip(ours[section], stock[section], strict=True):
            if mine != theirs:
                assert mine[:2] == theirs[:2] and swapped[theirs[2]] == mine[2] and section == "head"
                if mine[2] == "CARAFEDown":
                    assert mine[3] == [theirs[3][0], 5, theirs[3][2]]  # the same output channels and stride
                changed.append(mine[2])
    assert sorted(changed) == ["CARAFE", "CARAFE", "CARAFEDown", "CARAFEDown"]


@pytest.mark.parametrize("ours,stock", [("yolo11n-carafe-both.yaml", "yolo11n.yaml"),
                                        ("yolo11l-carafe-both.yaml", "yolo11l.yaml"),
                                        ("rtdetr-l-carafe-both.yaml", "rtdetr-l.yaml")])
def test_channels_match_the_stock_model_at_every_scale(ours, stock):
    ours, stock = ultralytics_model(model_yaml(ours)).model, ultralytics_model(stock).model
    downs = [m for m in ours.modules() if isinstance(m, CARAFEDown)]
    replaced = [stock.model[m.i] for m in ours.model if isinstance(m, CARAFEDown)]
    assert len(downs) == 2 and all(isinstance(m, Conv) and m.conv.stride == (2, 2) for m in replaced)
    assert [(m.c1, m.c2) for m in downs] == [(c.conv.in_channels, c.conv.out_channels) for c in replaced]
    extra = sum(p.numel() for m in ours.modules() if isinstance(m, (CARAFE, CARAFEDown)) for p in m.parameters())
    assert get_num_params(ours) - get_num_params(stock) == extra - sum(p.numel() for c in replaced
                                                                      for p in c.parameters())
