"""The semantic and depth heads whose decoders upsample with any upsampler of the table (SemanticSegmentUp, DepthUp):
the stock YAMLs convert with --heads at every scale and keep their outputs (the semantic logits brought to the
image); every upsampler fits both; stock weights transfer into every layer but the new upsamplers'; FLOPs count the
decoders' reassembly; the stock heads' eval and export contracts hold (class map baked, depth calibrated and resized);
torch.compile; rows checked with the layer named; safe loading in a fresh process; the yolo command trains both on
the generated semantic and depth sets."""

import importlib
import importlib.util
import subprocess
import sys

import pytest
import torch
import yaml
from ultralytics import YOLO
from ultralytics.utils.torch_utils import get_flops

from carafe_ultra import CARAFE, convert_yaml, model_yaml
from carafe_ultra.experiments.tasks import TASKS
from carafe_ultra.integration import ultralytics_model
from carafe_ultra.upsamplers import UPSAMPLERS
from tests.ultralytics_helpers import COMMON, STOCK_MODELS, output_shapes, tiny_seg_dataset, yolo

STOCK = {"semantic": STOCK_MODELS / "26" / "yolo26-sem.yaml", "depth": STOCK_MODELS / "26" / "yolo26-depth.yaml"}
SCALES = list(yaml.safe_load(STOCK["depth"].read_text())["scales"])
IMAGE = 64
SEMANTIC_DEFAULTS = {"carafe": {"kernel_size": 3, "encoder_kernel": 1, "compressed_channels": 16},
                     "dysample": {"groups": 1}}


def network(name, tmp_path=None, **conversion):
    return ultralytics_model(convert_yaml(name, out_dir=tmp_path, **conversion) if conversion else name).model


def outputs(model, mode):
    with torch.no_grad():
        return output_shapes(getattr(model, mode)()(torch.zeros(2, 3, IMAGE, IMAGE)))


def expected_shapes(stock_shapes, task):
    """The stock head's outputs with the semantic logits (the first output) at the image's size."""
    if task == "depth":
        return stock_shapes
    first, *rest = stock_shapes
    return [(*first[:2], IMAGE, IMAGE), *rest]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("task", list(STOCK))
def test_every_scale_converts_with_heads_builds_and_keeps_its_outputs(task, scale, tmp_path):
    name = STOCK[task].name.replace("26-", f"26{scale}-")
    stock = network(name)
    ours = network(name, tmp_path, upsampler_name="carafe", heads=True)
    assert type(ours.model[-1]).__name__ == {"semantic": "SemanticSegmentUp", "depth": "DepthUp"}[task]
    assert YOLO(convert_yaml(name, "carafe", tmp_path, heads=True)).task == task
    for mode in ("eval", "train"):
        assert outputs(ours, mode) == expected_shapes(outputs(stock, mode), task)


@pytest.mark.parametrize("upsampler", list(UPSAMPLERS))
@pytest.mark.parametrize("task", list(STOCK))
def test_every_upsampler_in_the_decoder_keeps_the_outputs(task, upsampler, tmp_path):
    name = STOCK[task].name.replace("26-", "26n-")
    ours = network(name, tmp_path, upsampler_name=None, heads=upsampler)
    head = ours.model[-1]
    stock = network(name)
    for mode in ("eval", "train"):
        assert outputs(ours, mode) == expected_shapes(outputs(stock, mode), task)
    if task == "semantic":  # the classes need not divide into DySample's 4 groups; CARAFE's is 3×3 from a 1×1 encoder
        assert head.upsampler_options == {"scale": 2, **SEMANTIC_DEFAULTS.get(upsampler, {})}
    else:
        assert len(head.lifts) == 2


def test_row_options_override_the_semantic_defaults(tmp_path):
    path = convert_yaml("yolo26n-sem.yaml", None, tmp_path, heads="carafe", head_options={"compressed_channels": 32})
    upsample = network(path).model[-1].upsample
    assert isinstance(upsample, CARAFE) and upsample.up_factor == 2
    assert upsample.compressor.out_channels == 32 and upsample.encoder.kernel_size == (1, 1)
    assert upsample.kernel_size == 3


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_the_semantic_decoder_upsamples_by_its_scale_then_bilinear_to_the_image(scale, tmp_path):
    path = convert_yaml("yolo26n-sem.yaml", None, tmp_path, heads="carafe", head_options={"scale": scale})
    head = network(path).model[-1].eval()
    assert head.upsample.up_factor == scale and head.upsampler_options["scale"] == scale
    x = head_inputs(head, "semantic")
    with torch.no_grad():
        near = head.upsample(head.classifier(x[0]))
        assert near.shape == (2, 19, 8 * scale, 8 * scale)
        expected = torch.nn.functional.interpolate(near, size=(64, 64), mode="bilinear", align_corners=False)
        torch.testing.assert_close(head(x), expected)


@pytest.mark.parametrize("task,new,gone", [
    ("semantic", [f"model.17.upsample.{conv}.{p}" for conv in ("compressor", "encoder") for p in ("bias", "weight")],
     []),
    ("depth", sorted([f"model.23.lifts.{i}.{conv}.{p}" for i in (0, 1) for conv in ("compressor", "encoder")
                      for p in ("bias", "weight")]
                     + [f"model.23.head.1.{conv}.{p}" for conv in ("compressor", "encoder") for p in ("bias", "weight")]),
     ["model.23.head.1.bias", "model.23.head.1.weight"]),  # the ConvTranspose2d
])
def test_stock_weights_transfer_into_every_layer_but_the_new_upsamplers(task, new, gone, tmp_path):
    name = STOCK[task].name.replace("26-", "26n-")
    stock = network(name)
    ours = network(name, tmp_path, upsampler_name=None, heads="carafe")
    ours.load(stock)  # what YOLO("...-carafe-head-only.yaml").load("yolo26n-....pt") does
    state, source = ours.state_dict(), stock.state_dict()
    assert sorted(k for k in state if k not in source) == sorted(new)
    assert sorted(k for k in source if k not in state) == gone
    assert all(torch.equal(state[k], source[k]) for k in source if k in state)


@pytest.mark.parametrize("task,reassembled", [
    # At 64 px, beside the neck's CARAFEs (256 channels 2x2 -> 4x4, 128 channels 4x4 -> 8x8, k=5: 25 multiply-adds per
    # output value): the semantic decoder brings 19 class logits from 8x8 to 16x16 (k=3: 9; bilinear does the rest);
    # the depth decoder (c_mid 256, k=5) lifts P5 2x2 -> 4x4 and P4 4x4 -> 8x8, then its head's 128 channels
    # 8x8 -> 16x16. 2 FLOPs per multiply-add.
    ("semantic", 25 * (256 * 16 + 128 * 64) + 9 * 19 * 16 * 16),
    ("depth", 25 * (256 * 16 + 128 * 64 + 256 * 16 + 256 * 64 + 128 * 256)),
])
def test_flops_count_the_decoders_reassembly(task, reassembled):
    thop_profile = importlib.import_module("thop.profile")
    model = network(model_yaml(STOCK[task].name.replace("26-", "26n-").replace(".yaml", "-carafe-head.yaml")))
    with_rule = get_flops(model, imgsz=IMAGE)
    rule = thop_profile.register_hooks.pop(CARAFE)
    try:
        without_rule = get_flops(model, imgsz=IMAGE)
    finally:
        thop_profile.register_hooks[CARAFE] = rule
    assert with_rule - without_rule == pytest.approx(2 * reassembled / 1e9, rel=1e-6)


def head_inputs(head, task):
    torch.manual_seed(0)
    channels = ([head.classifier[0].conv.in_channels, head.aux_head[0].conv.in_channels] if task == "semantic"
                else [proj.conv.in_channels for proj in head.proj])
    return [torch.randn(2, c, 8 // 2**i, 8 // 2**i) for i, c in enumerate(channels)]


def test_the_semantic_export_bakes_the_class_map_of_the_upsampled_logits(tmp_path):
    head = network("yolo26n-sem.yaml", tmp_path, upsampler_name=None, heads="carafe").model[-1].eval()
    x = head_inputs(head, "semantic")
    with torch.no_grad():
        logits = head(x)
        assert logits.shape == (2, 19, 64, 64)
        torch.testing.assert_close(logits, torch.nn.functional.interpolate(
            head.upsample(head.classifier(x[0])), scale_factor=4, mode="bilinear", align_corners=False))
        head.export = True
        for export_format, expected in [("onnx", logits.argmax(1).to(torch.uint8)), ("openvino", None),
                                        ("torchscript", logits)]:
            head.format = export_format
            out = head(x)
            if expected is None:  # OpenVINO bakes the map too
                assert out.dtype == torch.uint8 and out.shape == (2, 64, 64)
            else:
                assert torch.equal(out, expected)


def test_the_depth_head_keeps_calibration_and_the_export_resize(tmp_path):
    head = network("yolo26n-depth.yaml", tmp_path, upsampler_name=None, heads="carafe").model[-1].eval()
    x = head_inputs(head, "depth")
    with torch.no_grad():
        identity = head(x)
        head.cal_a.fill_(0.5)
        head.cal_b.fill_(0.25)
        calibrated = head(x)
        torch.testing.assert_close(calibrated, identity.pow(0.5) * torch.exp(torch.tensor(0.25)))
        head.export = True
        exported = head(x)
    assert identity.shape == (2, 1, 16, 16) and (identity > 0).all()
    torch.testing.assert_close(exported, torch.nn.functional.interpolate(calibrated, scale_factor=4.0,
                                                                          mode="bilinear", align_corners=True))
    head.train()
    assert head(x)["depth"].shape == (2, 1, 16, 16)


@pytest.mark.parametrize("task", list(STOCK))
def test_the_decoders_compile_without_a_graph_break(task, tmp_path):
    head = network(STOCK[task].name.replace("26-", "26n-"), tmp_path, upsampler_name=None,
                   heads="carafe").model[-1].train()
    inputs = [t.requires_grad_() for t in head_inputs(head, task)]
    expected = head(inputs)
    compiled = torch.compile(head, fullgraph=True, backend="aot_eager")(inputs)
    first = lambda out: out["depth"] if isinstance(out, dict) else out[0]
    torch.testing.assert_close(first(compiled), first(expected), rtol=1e-5, atol=1e-5)
    first(compiled).sum().backward()
    upsampler = head.upsample if task == "semantic" else head.head[1]
    assert all(t.grad is not None for t in inputs) and upsampler.encoder.weight.grad is not None


@pytest.mark.parametrize("row,args,pattern", [
    ("1, Depth, [256]", "[256, pixelshuffle]", r"unknown depth decoder upsampler 'pixelshuffle'; choose from"),
    ("1, Depth, [256]", "[256, carafe, 3]", r"the upsampler's options must be a mapping such as \{kernel_size: 3\}, got 3"),
    ("1, Depth, [256]", "[256, carafe, {groups: 3}]", r"depth decoder: carafe \{'groups': 3\} for 256 channels ×2"),
    ("1, SemanticSegment, [nc]", "[nc, carafe, {}, 1]",
     r"args must be SemanticSegment's 1 arguments, then the semantic decoder's upsampler"),
    ("1, SemanticSegment, [nc]", "[nc, eucb, {bogus: 1}]", r"semantic decoder: eucb \{'bogus': 1\} for 19 channels ×2"),
    ("1, SemanticSegment, [nc]", "[nc, carafe, {scale: 16}]",
     r"semantic decoder: scale must be one of \(2, 4, 8\) \(how far carafe brings the stride-8 logits"),
])
def test_a_wrong_head_row_is_an_error_naming_the_layer(row, args, pattern, tmp_path):
    stock = STOCK["depth" if "Depth" in row else "semantic"]
    head = row.split(", ")[1]
    path = tmp_path / stock.name.replace("26-", "26n-")
    path.write_text(stock.read_text().replace(row, f"1, {head}Up, {args}"))
    with pytest.raises(ValueError, match=rf"model YAML layer \d+ .*{head}Up.*: " + pattern):
        YOLO(str(path))


@pytest.mark.parametrize("task,metric", [("semantic", "metrics/mIoU"), ("depth", "metrics/delta1")])
def test_yolo_trains_and_validates_the_shipped_model_on_the_generated_set(task, metric, tmp_path):
    data = tiny_seg_dataset(tmp_path / "data", task)
    model = model_yaml(STOCK[task].name.replace("26-", "26n-").replace(".yaml", "-carafe-head.yaml"))
    yolo("train", tmp_path, model=model, data=data, epochs=1, project=tmp_path, name="run")
    header = (tmp_path / "run" / "results.csv").read_text().splitlines()[0].split(",")
    assert metric in [column.strip() for column in header]
    trained = YOLO(tmp_path / "run" / "weights" / "best.pt")
    assert trained.task == task and type(trained.model.model[-1]).__name__ == type(network(model).model[-1]).__name__
    validation = trained.val(data=data, **{**COMMON, "project": str(tmp_path), "name": "val"})
    assert metric in validation.results_dict
    if importlib.util.find_spec("nncf"):  # benchmark --int8-accuracy reads the task's own figures
        from carafe_ultra.experiments.export_cost import format_int8_accuracy, int8_accuracy

        (row,) = int8_accuracy([str(tmp_path / "run" / "weights" / "best.pt")], data)
        figure = {"semantic": "mIoU", "depth": "delta1"}[task]
        fields = {field for field, _ in TASKS[task].metrics.values()}  # pixel accuracy and mIoU; AbsRel and delta1
        assert row["task"] == task and set(row["fp32"]) == set(row["int8"]) == fields
        assert row[f"int8_loss_{figure}"] == row["fp32"][figure] - row["int8"][figure]
        assert all(0 <= value for precision in ("fp32", "int8") for value in row[precision].values())
        table = format_int8_accuracy([row])
        assert table.count("\n") == 2 and f"INT8 loss ({figure})" in table


@pytest.mark.parametrize("task", list(STOCK))
def test_safe_loading_of_a_saved_model_in_a_fresh_process(task, tmp_path):
    path = tmp_path / f"{task}.pt"
    YOLO(model_yaml(STOCK[task].name.replace("26-", "26n-").replace(".yaml", "-carafe-head.yaml"))).save(path)
    check = ("import sys\nfrom ultralytics.nn.tasks import torch_safe_load\n"
             "checkpoint, _ = torch_safe_load(sys.argv[1], safe_only=True)\n"
             "print(type(checkpoint['model'].model[-1]).__name__, checkpoint['model'].task)\n")
    run = subprocess.run([sys.executable, "-c", check, str(path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[-2:] == [{"semantic": "SemanticSegmentUp", "depth": "DepthUp"}[task], task]
