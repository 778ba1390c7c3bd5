"""Model YAMLs: the converter (text kept, rows rewritten with the right channels and scale), the shipped files,
and finding models by name."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from carafe_ultra import carafe_yaml, convert_yaml, model_dir, model_yaml
from carafe_ultra.yamls import find_model_yaml
from tests.ultralytics_helpers import SHIPPED_BASES, SHIPPED_BOTH, SHIPPED_FROM, SHIPPED_HEAD
from tests.ultralytics_helpers import STOCK_MODELS as STOCK

ROOT = Path(__file__).resolve().parents[1]  # the shipped YAMLs' one source: the checkout's models/


def rows(path):
    cfg = yaml.safe_load(Path(path).read_text())
    return cfg["backbone"] + cfg["head"]


def test_every_shipped_yaml_is_the_converters_output(tmp_path):
    shipped = set(SHIPPED_FROM) | set(SHIPPED_BOTH) | set(SHIPPED_HEAD) | SHIPPED_BASES
    assert {p.name for p in (ROOT / "models").glob("*.yaml")} == shipped
    assert model_dir() == ROOT / "models"
    for name, stock in SHIPPED_FROM.items():
        written = carafe_yaml(stock.name, tmp_path)
        assert Path(written).name == name
        assert Path(written).read_text() == (ROOT / "models" / name).read_text(), name
    for name, stock in SHIPPED_BOTH.items():
        written = convert_yaml(stock.name, "carafe", tmp_path, downsample=True)
        assert Path(written).name == name
        assert Path(written).read_text() == (ROOT / "models" / name).read_text(), name
    for name, stock in SHIPPED_HEAD.items():
        written = convert_yaml(stock.name, "carafe", tmp_path, heads=True)
        assert Path(written).name == name
        assert Path(written).read_text() == (ROOT / "models" / name).read_text(), name


def test_conversion_keeps_every_other_line_and_writes_carafe_rows(tmp_path):
    path = Path(carafe_yaml("yolo26n-seg.yaml", tmp_path))
    assert path == tmp_path / "yolo26n-seg-carafe.yaml"  # the scale letter stays in the name
    stock = (STOCK / "26" / "yolo26-seg.yaml").read_text().splitlines()
    ours = path.read_text().splitlines()
    assert ours[0].startswith("# carafe-ultra (convert_yaml): yolo26-seg.yaml with its upsampling rows (layers 11, 14)")
    changed = [(a, b) for a, b in zip(ours[2:], stock, strict=True) if a != b]
    assert changed == [('  - [-1, 1, CARAFE, [1024, 5, 2]]', '  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]'),
                       ('  - [-1, 1, CARAFE, [512, 5, 2]]', '  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]')]


@pytest.mark.parametrize("upsampler,row", [("nearest", ["nn.Upsample", ["None", 2, "nearest"]]),
                                           ("bilinear", ["nn.Upsample", ["None", 2, "bilinear"]]),
                                           ("dysample", ["DySample", [256, 2]]),
                                           ("eucb", ["EUCB", [256, 2]]),
                                           ("convtranspose", ["nn.ConvTranspose2d", [256, 2, 2]])])
def test_every_upsampler_writes_its_rows_with_the_feeding_layers_channels(upsampler, row, tmp_path):
    path = convert_yaml("rtdetr-l-carafe.yaml", upsampler, tmp_path)
    assert Path(path).name == f"rtdetr-l-{upsampler}.yaml"  # not rtdetr-l-carafe-nearest
    converted = rows(path)
    assert converted[13][2:] == row and converted[18][2:] == row


def test_our_yaml_converted_to_nearest_is_the_stock_model(tmp_path):
    assert rows(convert_yaml("yolov8n-carafe.yaml", "nearest", tmp_path)) == rows(STOCK / "v8" / "yolov8.yaml")


def test_a_model_without_upsampling_rows_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"yolov6n.yaml \(.*yolov6.yaml\) has no upsampling row \(CARAFE, DySample, "
                                         r"EUCB, nn.Upsample\) to replace"):
        carafe_yaml("yolov6n.yaml", tmp_path)


def test_unknown_model_and_unknown_upsampler(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no model YAML 'yolo99n.yaml': not a file, not one carafe-ultra "
                                                r"ships \(rtdetr-l-carafe-both.yaml, rtdetr-l-carafe.yaml"):
        carafe_yaml("yolo99n.yaml", tmp_path)
    with pytest.raises(ValueError, match="unknown upsampler 'pixelshuffle'; choose from nearest, bilinear"):
        convert_yaml("yolov8n.yaml", "pixelshuffle", tmp_path)


def test_finding_models_by_name():
    assert find_model_yaml("yolov8n.yaml") == STOCK / "v8" / "yolov8.yaml"
    assert find_model_yaml("yolov8s-carafe.yaml") == model_dir() / "yolov8-carafe.yaml"
    assert find_model_yaml(STOCK / "v8" / "yolov8.yaml") == STOCK / "v8" / "yolov8.yaml"
    assert Path(model_yaml("yolov8n-carafe.yaml")) == model_dir() / "yolov8n-carafe.yaml"
    assert Path(model_yaml("rtdetr-l-carafe")).is_file()
    with pytest.raises(FileNotFoundError, match="no shipped model YAML named 'yolov5-carafe.yaml'; available: rtdetr-l"):
        model_yaml("yolov5-carafe.yaml")


def test_command_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "carafe_ultra", "convert", "yolo11s-pose.yaml", "-o", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == str(tmp_path / "yolo11s-pose-carafe.yaml")
    assert [r[2] for r in rows(run.stdout.strip())].count("CARAFE") == 2
    both = subprocess.run([sys.executable, "-m", "carafe_ultra", "convert", "yolov8n.yaml", "--downsample", "--upsampler",
                           "none", "-o", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert both.returncode == 0 and both.stdout.strip() == str(tmp_path / "yolov8n-carafe-down.yaml"), both.stderr
    assert [r[2] for r in rows(both.stdout.strip())].count("CARAFEDown") == 2
    nothing = subprocess.run([sys.executable, "-m", "carafe_ultra", "convert", "yolov8n.yaml", "--upsampler", "none"],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert nothing.returncode == 2 and "nothing to convert" in nothing.stderr
    models = subprocess.run([sys.executable, "-m", "carafe_ultra", "models", "yolo11s-carafe.yaml"],
                            capture_output=True, text=True, timeout=300)
    assert models.returncode == 0 and models.stdout.strip() == model_yaml("yolo11s-carafe.yaml")
    listing = subprocess.run([sys.executable, "-m", "carafe_ultra", "models"], capture_output=True, text=True,
                             timeout=300).stdout.split()
    assert listing == [str(p) for p in sorted(model_dir().glob("*.yaml"))]


def test_options_set_our_modules_keyword_arguments(tmp_path):
    path = convert_yaml("yolov8n.yaml", "carafe", tmp_path, {"compressed_channels": 32, "kernel_size": 3})
    assert [r[2:] for r in rows(path) if r[2] == "CARAFE"] == [["CARAFE", [1024, 3, 2, 3, 32]],
                                                                ["CARAFE", [512, 3, 2, 3, 32]]]
    with pytest.raises(ValueError, match="carafe options must be among kernel_size, encoder_kernel, "
                                         "compressed_channels, groups, centre_weight; got up_factor"):
        convert_yaml("yolov8n.yaml", "carafe", tmp_path, {"up_factor": 4})
    with pytest.raises(ValueError, match="nearest takes no options"):
        convert_yaml("yolov8n.yaml", "nearest", tmp_path, {"kernel_size": 3})


def test_the_downsampling_swap_alone_and_with_an_upsampler(tmp_path):
    stock = (STOCK / "11" / "yolo11.yaml").read_text().splitlines()
    down = Path(convert_yaml("yolo11s.yaml", None, tmp_path, downsample=True))
    assert down.name == "yolo11s-carafe-down.yaml"
    lines = down.read_text().splitlines()
    assert lines[0] == ("# carafe-ultra (convert_yaml): yolo11.yaml with its neck's strided Conv rows (layers 17, 20) "
                        "as CARAFEDown rows (same output channels and stride).")
    changed = [(a, b) for a, b in zip(lines[1:], stock, strict=True) if a != b]
    assert changed == [("  - [-1, 1, CARAFEDown, [256, 5, 2]]", "  - [-1, 1, Conv, [256, 3, 2]]"),
                       ("  - [-1, 1, CARAFEDown, [512, 5, 2]]", "  - [-1, 1, Conv, [512, 3, 2]]")]
    both = rows(convert_yaml("rtdetr-l.yaml", "carafe", tmp_path, downsample=True))
    assert [i for i, r in enumerate(both) if r[2] == "CARAFE"] == [13, 18]
    assert [(i, r[3]) for i, r in enumerate(both) if r[2] == "CARAFEDown"] == [(22, [256, 5, 2]), (25, [256, 5, 2])]
    assert all(r[2] != "CARAFEDown" for r in both[:12])  # never the backbone, whose strided Convs stay
    assert Path(convert_yaml("yolov8n.yaml", "dysample", tmp_path, downsample=True)).name == \
        "yolov8n-dysample-carafe-down.yaml"
    # No upsampling rows: the downsampling swap alone still converts it.
    assert Path(convert_yaml("yolov6n.yaml", None, tmp_path, downsample=True)).name == "yolov6n-carafe-down.yaml"


def test_converting_our_converted_files_again_names_them_by_the_new_swaps(tmp_path):
    both = convert_yaml("yolo11-carafe-both.yaml", "nearest", tmp_path)
    assert Path(both).name == "yolo11-nearest.yaml"
    assert [r[2] for r in rows(both)].count("CARAFEDown") == 2  # the downsampling rows stay as they were


def test_downsampling_swap_errors(tmp_path):
    with pytest.raises(ValueError, match="nothing to convert: name an upsampler, ask for the downsampling swap"):
        convert_yaml("yolov8n.yaml", None, tmp_path)
    (tmp_path / "plain.yaml").write_text("nc: 1\nbackbone:\n  - [-1, 1, Conv, [16, 3, 2]]\nhead:\n"
                                         "  - [-1, 1, nn.Upsample, [None, 2, nearest]]\n  - [-1, 1, Conv, [16, 3, 1]]\n")
    with pytest.raises(ValueError, match=r"has no stride-2 \(or more\) Conv row \[c2, k, s\] in its head"):
        convert_yaml(tmp_path / "plain.yaml", "carafe", tmp_path / "out", downsample=True)
