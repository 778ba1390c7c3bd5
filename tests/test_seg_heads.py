"""Segmentation heads whose mask branch upsamples with any upsampler of the table: every stock seg YAML converts with
--heads, builds and keeps its outputs; rows are checked with the layer named; stock weights transfer; FLOPs count the
mask branch's reassembly; torch.compile; training with the yolo command and the Python API; safe loading."""

import functools
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from ultralytics import YOLO
from ultralytics.utils.torch_utils import get_flops

from carafe_ultra import CARAFE, DySample, convert_yaml, model_yaml
from carafe_ultra.heads import HEAD_ROWS, head_classes
from carafe_ultra.integration import ultralytics_model
from carafe_ultra.upsamplers import UPSAMPLERS
from tests.ultralytics_helpers import COMMON, SHIPPED_HEAD, STOCK_MODELS, output_shapes, tiny_seg_dataset, yolo

STOCK_HEADS = {row.stock for row in HEAD_ROWS.values() if row.part == "mask branch"}


def head_of(path: Path) -> str:
    return yaml.safe_load(path.read_text())["head"][-1][2]


# Every instance-segmentation YAML the installed Ultralytics ships (v8, v8-p6, 9c/9e, 11, 12, 26, YOLOE).
STOCK_SEG = sorted(p for p in STOCK_MODELS.rglob("*.yaml") if head_of(p) in STOCK_HEADS)


def scaled(path: Path) -> str:
    """The stock file's name at its smallest scale, as a user writes it (yolo11-seg.yaml -> yolo11n-seg.yaml)."""
    scales = yaml.safe_load(path.read_text()).get("scales")
    return path.name.replace("-seg", f"{next(iter(scales))}-seg", 1) if scales else path.name


def built(name, tmp_path=None, **conversion):
    model = ultralytics_model(convert_yaml(name, out_dir=tmp_path, **conversion) if conversion else name)
    return model.model


def shapes_in_both_modes(network):
    x = torch.zeros(2, 3, 64, 64)  # two images: BatchNorm trains on the 1x1 maps of a P6 model
    with torch.no_grad():
        return output_shapes(network.eval()(x)), output_shapes(network.train()(x))


def test_every_stock_head_with_an_upsampling_has_ours():
    assert len(STOCK_SEG) >= 10 and {head_of(p) for p in STOCK_SEG} == STOCK_HEADS
    assert set(head_classes()) == {*HEAD_ROWS, "Proto26Up"}


@pytest.mark.parametrize("stock", STOCK_SEG, ids=lambda p: p.name)
def test_every_stock_seg_model_converts_with_heads_builds_and_keeps_its_outputs(stock, tmp_path):
    name = scaled(stock)
    converted = ultralytics_model(convert_yaml(name, "carafe", tmp_path, heads=True))
    original = ultralytics_model(name)
    head = converted.model.model[-1]
    assert converted.task == original.task == "segment"
    assert type(head).__name__ == f"{head_of(stock)}Up"
    assert isinstance(head.proto.upsample, CARAFE) and head.upsampler == "carafe"
    lifts = getattr(head.proto, "lifts", [])  # YOLO26: P4 and P5 come up by CARAFE too
    assert [m.up_factor for m in lifts] == [2**i for i in range(1, len(lifts) + 1)]
    assert shapes_in_both_modes(converted.model) == shapes_in_both_modes(original.model)


@functools.cache
def stock_shapes(model: str):
    return shapes_in_both_modes(built(model))


@pytest.mark.parametrize("model", ["yolo11n-seg.yaml", "yolo26n-seg.yaml"])
@pytest.mark.parametrize("upsampler", list(UPSAMPLERS))
def test_every_upsampler_in_the_mask_branch_keeps_the_outputs(model, upsampler, tmp_path):
    ours = built(model, tmp_path, upsampler_name=None, heads=upsampler)
    stock = built(model)
    assert shapes_in_both_modes(ours) == stock_shapes(model)
    mask_branch = ours.model[-1].proto
    kind = {"nearest": torch.nn.Upsample, "bilinear": torch.nn.Upsample, "convtranspose": torch.nn.ConvTranspose2d,
            "carafe": CARAFE, "dysample": DySample}.get(upsampler)
    if kind is not None:
        assert isinstance(mask_branch.upsample, kind)
    if upsampler == "convtranspose" and model == "yolo11n-seg.yaml":  # the stock Proto's own layer, shape for shape
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in stock.parameters())


@pytest.mark.parametrize("ours,stock", [("yolo11s-seg-carafe-head.yaml", "yolo11s-seg.yaml"),
                                        ("yolo26m-seg-carafe-head.yaml", "yolo26m-seg.yaml")])
def test_the_mask_branch_has_the_stock_channels_at_every_scale(ours, stock):
    ours, stock = build_head(model_yaml(ours)), build_head(stock)
    assert (ours.npr, ours.nm) == (stock.npr, stock.nm)
    assert ours.proto.cv1.conv.out_channels == stock.proto.cv1.conv.out_channels == ours.proto.upsample.c1


def build_head(name):
    return ultralytics_model(name).model.model[-1]


@pytest.mark.parametrize("name", sorted(SHIPPED_HEAD))
def test_shipped_yaml_is_stock_except_the_swapped_rows(name):
    ours = yaml.safe_load(Path(model_yaml(name)).read_text())
    stock = yaml.safe_load(SHIPPED_HEAD[name].read_text())
    rows = [(mine, theirs) for section in ("backbone", "head")
            for mine, theirs in zip(ours[section], stock[section], strict=True) if mine != theirs]
    assert [(mine[2], theirs[2]) for mine, theirs in rows] == [("CARAFE", "nn.Upsample")] * 2 + [
        (f"{stock['head'][-1][2]}Up", stock["head"][-1][2])]
    assert rows[-1][0][3] == [*rows[-1][1][3], "carafe"]


def test_stock_weights_transfer_into_every_layer_but_the_new_upsampler(tmp_path):
    stock = YOLO("yolo11n-seg.yaml").model
    ours = built("yolo11n-seg.yaml", tmp_path, upsampler_name=None, heads="carafe")
    ours.load(stock)  # what YOLO("...-carafe-head.yaml").load("yolo11n-seg.pt") does
    state, source = ours.state_dict(), stock.state_dict()
    new = sorted(name for name in state if name not in source)
    assert new == [f"model.23.proto.upsample.{conv}.{p}" for conv in ("compressor", "encoder") for p in ("bias", "weight")]
    gone = sorted(name for name in source if name not in state)
    assert gone == ["model.23.proto.upsample.bias", "model.23.proto.upsample.weight"]  # the ConvTranspose2d
    assert all(torch.equal(state[name], source[name]) for name in source if name in state)


def test_flops_count_the_mask_branch_reassembly(tmp_path):
    thop_profile = importlib.import_module("thop.profile")
    network = built(model_yaml("yolo11n-seg-carafe-head.yaml"))
    with_rule = get_flops(network, imgsz=64)
    rule = thop_profile.register_hooks.pop(CARAFE)
    try:
        without_rule = get_flops(network, imgsz=64)
    finally:
        thop_profile.register_hooks[CARAFE] = rule
    # At 64 px: layer 10's CARAFE brings 256 channels from 2x2 to 4x4, layer 13's 128 from 4x4 to 8x8 (k=5: 25
    # multiply-adds per output value), and the mask branch 64 prototype channels from 8x8 to 16x16 (k=3: 9); 2 FLOPs
    # per multiply-add.
    reassembled = 25 * (256 * 16 + 128 * 64) + 9 * 64 * 256
    assert with_rule - without_rule == pytest.approx(2 * reassembled / 1e9, rel=1e-6)


@pytest.mark.parametrize("model", ["yolo11n-seg.yaml", "yolo26n-seg.yaml"])
def test_the_mask_branch_compiles_without_a_graph_break(model, tmp_path):
    proto = built(model, tmp_path, upsampler_name=None, heads="carafe").model[-1].proto.train()
    if hasattr(proto, "lifts"):  # YOLO26: P3, P4 and P5
        channels = [proto.feat_fuse.conv.in_channels, *(conv.conv.in_channels for conv in proto.feat_refine)]
    else:
        channels = [proto.cv1.conv.in_channels]
    inputs = [torch.randn(2, c, 8 // 2**i, 8 // 2**i, requires_grad=True) for i, c in enumerate(channels)]
    argument = inputs[0] if len(inputs) == 1 else inputs
    expected = proto(argument)
    compiled = torch.compile(proto, fullgraph=True, backend="aot_eager")(argument)
    for want, got in zip(output_shapes(expected), output_shapes(compiled)):
        assert want == got
    first = lambda out: out[0] if isinstance(out, tuple) else out  # prototypes (and the semantic logits, training)
    torch.testing.assert_close(first(compiled), first(expected), rtol=1e-5, atol=1e-5)
    first(compiled).sum().backward()
    assert all(x.grad is not None for x in inputs) and proto.upsample.encoder.weight.grad is not None


@pytest.mark.parametrize("args,pattern", [
    ("[nc, 32, 256, pixelshuffle]", r"unknown mask branch upsampler 'pixelshuffle'; choose from nearest, bilinear"),
    ("[nc, 32, 256, carafe, 3]", r"the upsampler's options must be a mapping such as \{kernel_size: 3\}, got 3"),
    ("[nc, 32]", r"args must be Segment's 3 arguments, then the mask branch's upsampler"),
    ("[nc, 32, 256, carafe, {groups: 3}]",  # the mask branch's default kernel size shown with the row's options
     r"mask branch: carafe \{'kernel_size': 3, 'groups': 3\} for 64 channels ×2: .*groups"),
    ("[nc, 32, 256, carafe, {bogus: 1}]",
     r"mask branch: carafe \{'kernel_size': 3, 'bogus': 1\} .*carafe options must be among"),
])
def test_a_wrong_head_row_is_an_error_naming_the_layer(args, pattern, tmp_path):
    text = (STOCK_MODELS / "11" / "yolo11-seg.yaml").read_text().replace("1, Segment, [nc, 32, 256]",
                                                                         f"1, SegmentUp, {args}")
    path = tmp_path / "yolo11n-seg-wrong.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"model YAML layer 23 .*SegmentUp.*: " + pattern):
        YOLO(str(path))


@pytest.mark.parametrize("model,head", [("yolo11n.yaml", "Detect"), ("yolo11n-pose.yaml", "Pose"),
                                        ("yolo11n-obb.yaml", "OBB"), ("yolo26n-pose.yaml", "Pose26")])
def test_heads_swap_of_a_model_without_a_mask_branch_is_an_error(model, head, tmp_path):
    with pytest.raises(ValueError, match=rf"{model} \(.*\): its {head} head has no upsampling of its own for --heads"):
        convert_yaml(model, "carafe", tmp_path, heads=True)
    from carafe_ultra.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["convert", model, "--heads", "-o", str(tmp_path)])
    assert exit_info.value.code == 2


def test_heads_names_and_errors_of_the_converter(tmp_path):
    names = {Path(convert_yaml("yolo11n-seg.yaml", u, tmp_path, downsample=d, heads=h)).name
             for u, d, h in [("carafe", False, True), ("carafe", True, True), (None, False, "carafe"),
                             ("nearest", False, "carafe"), ("dysample", False, True)]}
    assert names == {"yolo11n-seg-carafe-head.yaml", "yolo11n-seg-carafe-both-head.yaml",
                     "yolo11n-seg-carafe-head-only.yaml", "yolo11n-seg-nearest-carafe-head.yaml",
                     "yolo11n-seg-dysample-head.yaml"}
    again = convert_yaml(tmp_path / "yolo11n-seg-carafe-head.yaml", "eucb", tmp_path, heads=True)  # ours, converted
    assert Path(again).name == "yolo11n-seg-eucb-head.yaml" and head_row(again) == ["SegmentUp", ["nc", 32, 256, "eucb"]]
    assert built(tmp_path / "yolo11n-seg-carafe-head.yaml").model[-1].proto.upsample.kernel_size == 3  # the default
    options = convert_yaml("yolo11n-seg.yaml", None, tmp_path, heads="carafe", head_options={"kernel_size": 5})
    assert head_row(options)[1] == ["nc", 32, 256, "carafe", {"kernel_size": 5}]
    assert built(options).model[-1].proto.upsample.kernel_size == 5
    with pytest.raises(ValueError, match="--heads gives the task head the upsampler of --upsampler: name one"):
        convert_yaml("yolo11n-seg.yaml", None, tmp_path, heads=True)
    with pytest.raises(ValueError, match="unknown upsampler 'bogus'"):
        convert_yaml("yolo11n-seg.yaml", "carafe", tmp_path, heads="bogus")


def head_row(path):
    row = yaml.safe_load(Path(path).read_text())["head"][-1]
    return [row[2], row[3]]


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    return tiny_seg_dataset(tmp_path_factory.mktemp("seg-data"))


def test_yolo_train_val_and_safe_loading_of_a_carafe_mask_branch(seg_data, tmp_path):
    yolo("train", tmp_path, model=model_yaml("yolo11n-seg-carafe-head.yaml"), data=seg_data, epochs=1,
         project=tmp_path, name="run")
    best = tmp_path / "run" / "weights" / "best.pt"
    trained = YOLO(best)
    assert trained.task == "segment" and type(trained.model.model[-1]).__name__ == "SegmentUp"
    out = yolo("val", tmp_path, env={"ULTRALYTICS_SAFE_LOAD": "1"}, model=best, data=seg_data, project=tmp_path,
               name="safe")
    assert "Mask(P" in out and "Unsupported global" not in out
    check = ("import sys\nfrom ultralytics.nn.tasks import torch_safe_load\n"
             "checkpoint, _ = torch_safe_load(sys.argv[1], safe_only=True)\n"
             "print(type(checkpoint['model'].model[-1].proto.upsample).__name__)\n")
    run = subprocess.run([sys.executable, "-c", check, str(best)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("CARAFE"), run.stderr[-3000:]


def test_python_api_trains_a_yolo26_carafe_mask_branch_with_its_own_loss(seg_data, tmp_path):
    model = YOLO(model_yaml("yolo26n-seg-carafe-head.yaml"))
    model.train(data=seg_data, epochs=1, project=str(tmp_path), name="run", **COMMON)
    criterion = model.trainer.model.criterion  # YOLO26 is end-to-end: both of its branches' losses
    assert {type(criterion.one2many).__name__, type(criterion.one2one).__name__} == {"SegmentLoss26"}
    head = YOLO(tmp_path / "run" / "weights" / "best.pt").model.model[-1]
    assert type(head).__name__ == "Segment26Up" and len(head.proto.lifts) == 2
    assert all(isinstance(m, CARAFE) for m in (head.proto.upsample, *head.proto.lifts))
