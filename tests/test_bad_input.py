"""Every wrong argument fails up front with an error that names it and says what was expected."""

import re

import pytest
import torch

from carafe_ultra import CARAFE, carafe, carafe_downsample
from carafe_ultra.__main__ import main


def good():
    return torch.randn(2, 4, 5, 6), torch.rand(2, 2 * 9, 10, 12)


@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        ({"kernel_size": 4}, ValueError, "kernel_size must be odd"),
        ({"kernel_size": 0}, ValueError, "kernel_size must be >= 1"),
        ({"kernel_size": -3}, ValueError, "kernel_size must be >= 1"),
        ({"kernel_size": 3.0}, TypeError, "kernel_size must be an int"),
        ({"kernel_size": True}, TypeError, "kernel_size must be an int"),
        ({"scale_factor": 1.5}, TypeError, "scale_factor must be an int"),
        ({"scale_factor": 0}, ValueError, "scale_factor must be >= 1"),
        ({"group_size": 0}, ValueError, "group_size must be >= 1"),
        ({"group_size": 3}, ValueError, r"features channels \(4\) must be divisible by group_size \(3\)"),
    ],
)
def test_bad_arguments(kwargs, error, pattern):
    features, masks = good()
    args = {"kernel_size": 3, "group_size": 2, "scale_factor": 2} | kwargs
    with pytest.raises(error, match=pattern):
        carafe(features, masks, **args)


@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        ({"kernel_size": 4}, ValueError, "kernel_size must be odd"),
        ({"kernel_size": 0}, ValueError, "kernel_size must be >= 1"),
        ({"scale_factor": 0}, ValueError, "scale_factor must be >= 1"),
        ({"scale_factor": 2.0}, TypeError, "scale_factor must be an int"),
        ({"group_size": 3}, ValueError, r"features channels \(4\) must be divisible by group_size \(3\)"),
    ],
)
def test_bad_downsample_arguments(kwargs, error, pattern):
    features, masks = torch.randn(2, 4, 5, 6), torch.rand(2, 2 * 9, 3, 3)
    args = {"kernel_size": 3, "group_size": 2, "scale_factor": 2} | kwargs
    with pytest.raises(error, match=pattern):
        carafe_downsample(features, masks, **args)


def test_downsample_masks_of_the_wrong_shape():
    features, masks = torch.randn(2, 4, 5, 6), torch.rand(2, 18, 3, 3)
    with pytest.raises(ValueError, match=r"masks must have shape \(N, group_size\*kernel_size\*\*2, ceil\(H/scale_factor\), "
                                         r"ceil\(W/scale_factor\)\) = \(N, 18, 3, 3\).*got \(2, 18, 2, 3\)"):
        carafe_downsample(features, masks[:, :, :2], 3, 2, 2)
    with pytest.raises(ValueError, match=r"masks must have shape"):
        carafe_downsample(features, torch.rand(2, 18, 10, 12), 3, 2, 2)  # upsampling's masks
    with pytest.raises(ValueError, match=r"masks batch size \(1\) must match features batch size \(2\)"):
        carafe_downsample(features, masks[:1], 3, 2, 2)
    with pytest.raises(ValueError, match=r"features must be 4-D"):
        carafe_downsample(features[0], masks, 3, 2, 2)
    with pytest.raises(TypeError, match="features must have a floating dtype"):
        carafe_downsample(features.long(), masks, 3, 2, 2)


def test_masks_with_wrong_channel_count_or_size():
    features, masks = good()
    with pytest.raises(ValueError, match=r"masks must have shape .*\(N, 18, 10, 12\).*got \(2, 9, 10, 12\)"):
        carafe(features, masks[:, :9], 3, 2, 2)
    with pytest.raises(ValueError, match=r"masks must have shape .*got \(2, 18, 10, 11\)"):
        carafe(features, masks[..., :11], 3, 2, 2)
    with pytest.raises(ValueError, match=r"masks must have shape"):
        carafe(features, masks, 3, 2, 3)  # right masks for scale 2, not for scale 3


def test_non_4d_tensors():
    features, masks = good()
    with pytest.raises(ValueError, match=r"features must be 4-D \(N, C, H, W\), got shape \(4, 5, 6\)"):
        carafe(features[0], masks, 3, 2, 2)
    with pytest.raises(ValueError, match=r"masks must be 4-D"):
        carafe(features, masks[None], 3, 2, 2)


def test_not_tensors():
    features, masks = good()
    with pytest.raises(TypeError, match="features must be a torch.Tensor, got ndarray"):
        carafe(features.numpy(), masks, 3, 2, 2)
    with pytest.raises(TypeError, match="masks must be a torch.Tensor, got list"):
        carafe(features, [1.0], 3, 2, 2)


def test_batch_mismatch():
    features, masks = good()
    with pytest.raises(ValueError, match=r"masks batch size \(1\) must match features batch size \(2\)"):
        carafe(features, masks[:1], 3, 2, 2)


def test_non_floating_dtypes():
    features, masks = good()
    with pytest.raises(TypeError, match="features must have a floating dtype.*got torch.int64"):
        carafe(features.long(), masks, 3, 2, 2)
    with pytest.raises(TypeError, match="masks must have a floating dtype.*got torch.bool"):
        carafe(features, masks > 0.5, 3, 2, 2)


def test_different_devices():
    features, masks = good()
    with pytest.raises(ValueError, match="features and masks must be on the same device, got cpu and meta"):
        carafe(features, masks.to("meta"), 3, 2, 2)


@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        ({"c1": 0}, ValueError, "c1 must be >= 1"),
        ({"c1": 64.0}, TypeError, "c1 must be an int"),
        ({"c2": -1}, ValueError, "c2 must be >= 1"),
        ({"kernel_size": 2}, ValueError, "kernel_size must be odd"),
        ({"up_factor": 2.5}, TypeError, "up_factor must be an int"),
        ({"up_factor": 0}, ValueError, "up_factor must be >= 1"),
        ({"encoder_kernel": 4}, ValueError, "encoder_kernel must be odd"),
        ({"compressed_channels": 0}, ValueError, "compressed_channels must be >= 1"),
        ({"groups": 3}, ValueError, r"output channels \(c2\) \(64\) must be divisible by groups \(3\)"),
        ({"centre_weight": 1.0}, ValueError, r"centre_weight must be None or a number in \[1/kernel_size\*\*2, 1\) "
                                             r"= \[0.04, 1\), got 1.0"),
        ({"centre_weight": 0.01}, ValueError, r"centre_weight must be None or a number in .*got 0.01"),
        ({"centre_weight": "0.8"}, ValueError, r"centre_weight must be None or a number in .*got '0.8'"),
        ({"centre_weight": True}, ValueError, r"centre_weight must be None or a number in .*got True"),
    ],
)
def test_module_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        CARAFE(**({"c1": 64} | kwargs))


def test_module_wrong_input_channels():
    with pytest.raises(ValueError, match=r"CARAFE expects input of shape \(N, 8, H, W\), got \(1, 4, 5, 5\)"):
        CARAFE(8)(torch.randn(1, 4, 5, 5))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["models", "yolov5-carafe.yaml"], "no shipped model YAML named 'yolov5-carafe.yaml'"),
        (["convert", "nosuch.yaml"], "no model YAML 'nosuch.yaml'"),
        (["convert", "yolo11n-cls.yaml"], r"yolo11n-cls.yaml \(.*\) has no upsampling row"),
        (["ablate", "--jobs", "0"], "jobs must be a positive int, got 0"),
        (["ablate", "--arms", "nearest", "carafe:bogus=1"], "carafe options must be among kernel_size, .*got bogus"),
        (["ablate", "--weights", "/nonexistent.pt"], "weights '/nonexistent.pt' is not a file"),
        (["ablate", "--shard", "4/4"], r"--shard must be I/N with 0 <= I < N \(SLURM: --array=0-\{N-1\}\), got '4/4'"),
        (["ablate", "--report", "--shard", "0/2"], "--report writes the summary of the whole grid: give it without"),
        (["ablate", "--device", "0,1", "--jobs", "4"], r"--jobs 4 with 1 GPU\(s\) per run needs 4 GPUs; --device '0,1'"),
        (["ablate", "--gpus-per-run", "0"], "gpus_per_run must be a positive int, got 0"),
        (["ablate", "--report", "--out", "/nonexistent/ablation"], "no run of this ablation has finished in"),
        (["ablate", "--data", "/nonexistent/data.yaml"], "--data /nonexistent/data.yaml: '/nonexistent/data.yaml' does "
                                                         "not exist"),
        (["ablate", "--restart", "--report"], "--restart deletes the runs of --out: give it without --report"),
        (["ablate", "--restart", "--shard", "0/2"], "--restart deletes .*with shards clear the folder once"),
        (["ablate", "--ray-retries", "-1"], "ray_retries must be an int >= 0, got -1"),
        (["gpu-check", "--stages", "everything"], "argument --stages: invalid choice: 'everything'"),
        (["benchmark", "--repeats", "0"], "--repeats must be a positive int, got 0"),
        (["benchmark", "--export", "--model", "nosuch.yaml"], "no model YAML 'nosuch.yaml'"),
        (["benchmark", "--gpu", "--export"], "argument --export: not allowed with argument --gpu"),
        (["benchmark", "--int8-accuracy", "nosuch.pt", "--data", "d.yaml"],
         "--int8-accuracy needs trained .*not files: nosuch.pt"),
        (["benchmark", "--int8-accuracy", __file__], "--int8-accuracy needs --data"),
    ],
)
def test_command_line_reports_wrong_input_as_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's way: usage, the message, status 2; no traceback
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(rf"python -m carafe_ultra {argv[0]}: error: {message}", error), error


def test_int8_accuracy_refuses_a_classifier_before_exporting(tmp_path, capsys):
    from ultralytics import YOLO

    YOLO("yolo26n-cls.yaml").save(tmp_path / "classifier.pt")
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "--int8-accuracy", str(tmp_path / "classifier.pt"), "--data", "d.yaml"])
    assert exit_info.value.code == 2
    message = "classifier.pt is a classify model; --int8-accuracy validates detect, segment, semantic, depth, pose, obb"
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*openvino*"))
