"""``python -m carafe_ultra show``: the panels, the kernels it draws are the layer's own masks, the letterbox
mapping of points, YOLO and RT-DETR checkpoints with CARAFE, CARAFEDown or DySample layers, and every bad input."""

import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ultralytics import YOLO

from carafe_ultra import CARAFE, convert_yaml, model_yaml
from carafe_ultra.experiments.show import default_points, draw, inspect_image, show, to_letterboxed, letterbox
from carafe_ultra.integration import ultralytics_model
from tests.ultralytics_helpers import tiny_dataset

IMGSZ = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def image(data):
    from pathlib import Path

    return sorted((Path(data).parent / "images" / "val").glob("*.png"))[0]


@pytest.fixture(scope="module")
def checkpoints(data, tmp_path_factory):
    """A YOLOv8n-CARAFE trained for an epoch; untrained RT-DETR-l-CARAFE, YOLOv8n-DySample and YOLOv8n with CARAFE
    (2 groups) and CARAFEDown."""
    folder = tmp_path_factory.mktemp("checkpoints")
    trained = YOLO(model_yaml("yolov8n-carafe.yaml"))
    trained.train(data=data, epochs=1, imgsz=IMGSZ, batch=4, workers=0, device="cpu", plots=False,
                  project=str(folder), name="yolo", exist_ok=True)
    paths = {"yolo": folder / "yolo" / "weights" / "best.pt"}
    for name, yaml in (("rtdetr", model_yaml("rtdetr-l-carafe.yaml")),
                       ("dysample", convert_yaml("yolov8n.yaml", "dysample", folder)),
                       ("both", convert_yaml("yolov8n.yaml", "carafe", folder, {"groups": 2}, downsample=True))):
        paths[name] = folder / f"{name}.pt"
        ultralytics_model(yaml).save(paths[name])
    return paths


def titles(figure):
    return [axes.get_title() for axes in figure.axes]


@pytest.mark.parametrize("name,layers", [("yolo", [10, 13]), ("rtdetr", [13, 18])])
def test_every_panel_of_a_carafe_model(checkpoints, image, name, layers, tmp_path):
    figure, inspection = show(checkpoints[name], image, imgsz=IMGSZ, out=tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 20_000
    assert [v.index for v in inspection.layers] == layers and {v.kind for v in inspection.layers} == {"CARAFE"}
    text = "\n".join(titles(figure))
    assert text.startswith(f"Input as the model sees it ({IMGSZ} px), points 1-3")
    for layer in layers:
        for point in (1, 2, 3):
            assert f"layer {layer} CARAFE, point {point}\ncentre w " in text
        assert f"layer {layer}: CARAFE output" in text and f"layer {layer}: nearest of the same" in text
        assert f"layer {layer}: centre weight over the map" in text
    colour_bars = [axes.get_ylabel() for axes in figure.axes if axes.get_ylabel()]
    assert colour_bars.count("kernel weight") == len(layers) and colour_bars.count("centre weight") == len(layers)
    for view in inspection.layers:
        assert view.upsampled.shape == view.nearest.shape == (*view.masks.shape[1:], 3)
        assert 0 <= view.upsampled.min() and view.upsampled.max() <= 1


def test_the_kernels_drawn_are_the_masks_the_layer_computed(checkpoints, image):
    # A hook of our own on each CARAFE's encoder, and the masks rebuilt from its output by the formula.
    network = ultralytics_model(checkpoints["yolo"]).model
    logits = {}
    for index, layer in enumerate(network.model):
        if isinstance(layer, CARAFE):
            layer.encoder.register_forward_hook(lambda m, args, out, index=index: logits.__setitem__(index, out))
    boxed, _ = letterbox(cv2.imread(str(image)), IMGSZ)
    with torch.no_grad():
        network.float().eval()(torch.from_numpy(boxed[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255)
    inspection = inspect_image(checkpoints["yolo"], image, imgsz=IMGSZ)
    for view in inspection.layers:
        layer = network.model[view.index]
        k, groups = layer.kernel_size, layer.groups
        masks = F.pixel_shuffle(logits[view.index], layer.up_factor)[0]
        masks = masks.view(groups, k * k, *masks.shape[1:]).softmax(1)
        np.testing.assert_allclose(view.masks, masks.flatten(0, 1).numpy(), rtol=1e-5, atol=1e-7)
        for (row, column), kernel in zip(view.cells, view.kernels):
            np.testing.assert_array_equal(kernel, view.masks.reshape(groups, k, k, *masks.shape[2:])[..., row, column])
        np.testing.assert_array_equal(view.centre_weight, masks[:, k * k // 2].numpy())
    assert not np.allclose(inspection.layers[0].kernels[0], 1 / 25)  # trained: no longer uniform


def test_a_point_lands_in_its_feature_cell_at_every_stride(checkpoints, tmp_path):
    # A white dot at a known pixel of a wide image; the letterbox moves it, and every layer's cell must hold it.
    picture = np.full((45, 100, 3), 40, np.uint8)
    x, y = 71, 30
    picture[y, x] = 255
    path = tmp_path / "dot.png"
    cv2.imwrite(str(path), picture)
    inspection = inspect_image(checkpoints["rtdetr"], path, points=[(x + 0.5, y + 0.5)], imgsz=IMGSZ)
    brightness = inspection.image.astype(float).sum(2)
    found_y, found_x = np.unravel_index(np.argmax(brightness), brightness.shape)
    (mapped_x, mapped_y), = inspection.letterboxed_points
    assert abs(mapped_x - (found_x + 0.5)) <= 1 and abs(mapped_y - (found_y + 0.5)) <= 1
    for view in inspection.layers:
        assert view.cells == [(int(found_y // view.stride_out), int(found_x // view.stride_out))]
        assert view.stride_in == 2 * view.stride_out
    assert to_letterboxed([(0, 0)], letterbox(picture, IMGSZ)[1]) == [(0.0, (IMGSZ - round(45 * 0.64)) // 2)]


def test_carafe_down_layers_show_their_kernels_beside_strided_sampling(checkpoints, image, tmp_path):
    figure, inspection = show(checkpoints["both"], image, imgsz=IMGSZ, out=tmp_path / "both.png")
    assert [(v.index, v.kind) for v in inspection.layers] == [(10, "CARAFE"), (13, "CARAFE"), (16, "CARAFEDown"),
                                                               (19, "CARAFEDown")]
    text = "\n".join(titles(figure))
    for layer in (16, 19):
        assert f"layer {layer} CARAFEDown, point 1\ncentre w " in text
        assert f"layer {layer}: CARAFEDown reassembly" in text and f"layer {layer}: strided sampling of the same" in text
    network = ultralytics_model(checkpoints["both"]).model.float().eval()
    boxed, _ = letterbox(cv2.imread(str(image)), IMGSZ)
    x = torch.from_numpy(boxed[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    inputs = {}
    for index in (16, 19):
        network.model[index].register_forward_hook(lambda m, a, o, index=index: inputs.__setitem__(index, a[0]))
    with torch.no_grad():
        network(x)
    for view in inspection.layers[2:]:
        layer = network.model[view.index]
        assert view.stride_out == 2 * view.stride_in  # a downsampler
        with torch.no_grad():  # the masks the layer computed, by the formula: softmax over each group's taps
            logits = layer.encoder(layer.compressor(inputs[view.index]))[0]
        masks = logits.view(1, 25, *logits.shape[1:]).softmax(1).flatten(0, 1).numpy()
        np.testing.assert_allclose(view.masks, masks, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(view.centre_weight, masks[None, 12], rtol=1e-5, atol=1e-7)
        assert view.upsampled.shape == view.nearest.shape == (*masks.shape[1:], 3)
        for (row, column), inside in zip(view.cells, view.inside):
            # Rows 2·row - 2 .. 2·row + 2 of the input: those off the map are outside.
            height = inputs[view.index].shape[2]
            expected_rows = [0 <= 2 * row + i - 2 < height for i in range(5)]
            assert inside.any(1).tolist() == expected_rows


def test_dysample_layers_show_their_sampling_offsets(checkpoints, image, tmp_path):
    figure, inspection = show(checkpoints["dysample"], image, imgsz=IMGSZ, points=[(10, 10)],
                              out=tmp_path / "dysample.png")
    assert [(v.index, v.kind) for v in inspection.layers] == [(10, "DySample"), (13, "DySample")]
    for view in inspection.layers:
        assert view.offsets.shape == (4, 2, *(IMGSZ // int(view.stride_out),) * 2)
        assert np.abs(view.offsets).max() < 0.05  # untrained: (nearly) where bilinear upsampling samples
    text = "\n".join(titles(figure))
    assert "layer 10 DySample: sampling offsets, every output pixel, arrows x20" in text
    assert "layer 13: offset length" in text


def test_default_points_pick_a_detection_its_edge_and_the_background():
    boxes = np.array([[10.0, 10, 30, 50], [60, 60, 90, 90]])
    centre, edge, background = default_points(boxes, 100, 100)
    assert centre == (20.0, 30.0) and edge == (10.0, 30.0)
    assert not any(b[0] <= background[0] <= b[2] and b[1] <= background[1] <= b[3] for b in boxes)
    assert default_points(np.zeros((0, 4)), 100, 60) == [(50, 30), (25, 15), (75, 45)]


def test_the_python_function_checks_its_input_too(checkpoints, image):
    from carafe_ultra.experiments.show import UsageError

    with pytest.raises(UsageError, match="--imgsz must be a positive multiple of 32, got 100"):
        inspect_image(checkpoints["yolo"], image, imgsz=100)


def test_draw_returns_a_figure_for_the_arrays(checkpoints, image):
    inspection = inspect_image(checkpoints["rtdetr"], image, layers=[18], points=[(5, 5)], imgsz=IMGSZ)
    figure = draw(inspection)
    assert [v.index for v in inspection.layers] == [18] and "layer 18 CARAFE, point 1" in titles(figure)[2]


def command(*args):
    return subprocess.run([sys.executable, "-m", "carafe_ultra", "show", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_command_line(checkpoints, image, tmp_path):
    run = command(checkpoints["yolo"], image, "--imgsz", IMGSZ, "--points", "10,12", "40,30", "--layers", 13,
                  "--out", tmp_path / "fig.png")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == f"{tmp_path / 'fig.png'}: layers 13 (CARAFE); points 10,12 40,30"
    assert (tmp_path / "fig.png").is_file()


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    path = tmp_path_factory.mktemp("stock") / "yolov8n.pt"
    ultralytics_model("yolov8n.yaml").save(path)
    return path


@pytest.mark.parametrize("case,message", [
    ("stock", r"yolov8n.pt has no CARAFE, CARAFEDown or DySample layer to show"),
    ("layer", r"layer\(s\) \[3\] of .*best.pt are not CARAFE, CARAFEDown or DySample layers; those are 10 \(CARAFE\), 13 \(CARAFE\)"),
    ("point", r"point\(s\) \[\(70.0, 5.0\)\] lie outside the image \(64 x 64 pixels; x in \[0, 64\), y in \[0, 64\)\)"),
    ("image", r"cannot read an image from .*not-an-image.png \(expected a file OpenCV reads"),
    ("checkpoint", r"no checkpoint .*missing.pt \(expected an Ultralytics .pt with CARAFE, CARAFEDown or DySample "
                      r"layers\)"),
    ("imgsz", r"--imgsz must be a positive multiple of 32, got 50"),
    ("syntax", r"argument --points: a point is x,y in the image's pixels, e.g. 120,80; got '7'"),
])
def test_bad_input_is_a_usage_error(case, message, checkpoints, image, stock, tmp_path):
    (tmp_path / "not-an-image.png").write_text("text")
    args = {"stock": (stock, image), "layer": (checkpoints["yolo"], image, "--layers", 3),
            "point": (checkpoints["yolo"], image, "--points", "70,5"),
            "image": (checkpoints["yolo"], tmp_path / "not-an-image.png"),
            "checkpoint": (tmp_path / "missing.pt", image), "imgsz": (checkpoints["yolo"], image, "--imgsz", 50),
            "syntax": (checkpoints["yolo"], image, "--points", "7")}[case]
    run = command(*args, "--imgsz" if case != "imgsz" else "--out", IMGSZ if case != "imgsz" else tmp_path / "x.png")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert re.search(rf"python -m carafe_ultra show: error: (\S*/)?{message}", run.stderr), run.stderr[-2000:]


@pytest.mark.parametrize("model", ["yolo11n-seg.yaml", "yolo26n-seg.yaml"])
def test_the_mask_branch_kernels_and_prototypes(model, image, tmp_path):
    path = tmp_path / "seg.pt"
    ultralytics_model(convert_yaml(model, "carafe", tmp_path, heads=True)).save(path)
    figure, inspection = show(path, image, imgsz=IMGSZ, out=tmp_path / "figure.png")
    inside = [v for v in inspection.layers if isinstance(v.index, str)]
    expected = ["23.proto.upsample"] + (["23.proto.lifts.0", "23.proto.lifts.1"] if "26" in model else [])
    assert [v.index for v in inspection.layers] == [11, 14, *expected]
    network = ultralytics_model(path).model.float().eval()
    captured = {}
    network.model[23].proto.register_forward_hook(lambda m, args, out: captured.__setitem__("protos", out))
    network.model[23].proto.upsample.register_forward_hook(lambda m, args, out: captured.__setitem__("up", args[0]))
    boxed, _ = letterbox(cv2.imread(str(image)), IMGSZ)
    with torch.no_grad():
        network(torch.from_numpy(boxed[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255)
        masks = network.model[23].proto.upsample.masks(captured["up"])[0].numpy()
    mask_branch = inside[0]
    np.testing.assert_allclose(mask_branch.masks, masks, atol=1e-6)  # the kernels drawn are its own masks
    assert mask_branch.prototypes.shape == (*captured["protos"].shape[2:], 3)  # 2x P3: the upsampled prototypes
    assert all(v.prototypes is not None for v in inside) and all(v.prototypes is None for v in inspection.layers[:2])
    text = "\n".join(titles(figure))
    assert "23 mask upsample CARAFE, point 1" in text and "layer 23: the mask branch's\nprototypes" in text
    with pytest.raises(ValueError, match=r"layer\(s\) \['23.proto.nothing'\] of .* are not CARAFE.*; those are 11 "
                                         r"\(CARAFE\), 14 \(CARAFE\), 23.proto.upsample \(CARAFE\)"):
        inspect_image(path, image, layers=["23.proto.nothing"], imgsz=IMGSZ)


@pytest.mark.parametrize("model,decoder", [("yolo26n-sem.yaml", ["17.upsample"]),
                                           ("yolo26n-depth.yaml", ["23.head.1", "23.lifts.0", "23.lifts.1"])])
def test_the_semantic_and_depth_decoders_kernels(model, decoder, image, tmp_path):
    path = tmp_path / "dense.pt"
    ultralytics_model(convert_yaml(model, "carafe", tmp_path, heads=True)).save(path)
    figure, inspection = show(path, image, imgsz=IMGSZ, out=tmp_path / "figure.png")
    assert [v.index for v in inspection.layers] == [11, 14, *decoder]
    assert inspection.points == [(32.0, 32.0), (16.0, 16.0), (48.0, 48.0)]  # no boxes: the centre and two more
    network = ultralytics_model(path).model.float().eval()
    first = decoder[0].split(".", 1)
    layer = network.model[int(first[0])].get_submodule(first[1])
    captured = {}
    layer.register_forward_hook(lambda m, args, out: captured.__setitem__("in", args[0]))
    boxed, _ = letterbox(cv2.imread(str(image)), IMGSZ)
    with torch.no_grad():
        network(torch.from_numpy(boxed[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255)
        masks = layer.masks(captured["in"])[0].numpy()
    view = inspection.layers[2]
    np.testing.assert_allclose(view.masks, masks, atol=1e-6)  # the kernels drawn are the decoder's own
    assert view.prototypes is None and f"{decoder[0].replace('.', ' ', 1)} CARAFE, point 1" in "\n".join(titles(figure))


def test_the_command_line_takes_a_mask_branch_layer(image, tmp_path):
    path = tmp_path / "seg.pt"
    ultralytics_model(model_yaml("yolo11n-seg-carafe-head.yaml")).save(path)
    run = subprocess.run([sys.executable, "-m", "carafe_ultra", "show", str(path), str(image), "--imgsz", str(IMGSZ),
                          "--layers", "23.proto.upsample", "--out", str(tmp_path / "f.png")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"{tmp_path / 'f.png'}: layers 23.proto.upsample (CARAFE)" in run.stdout
