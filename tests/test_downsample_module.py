"""The CARAFEDown module: shapes, masks, initialisation, argument checks, graph tools, YAML rows."""

import copy
import pickle

import pytest
import torch
from ultralytics.nn.modules import Conv

from carafe_ultra import CARAFEDown, carafe_downsample
from carafe_ultra.integration import ultralytics_model


@pytest.mark.parametrize("size", [(16, 16), (13, 10), (1, 1)])
@pytest.mark.parametrize("scale", [1, 2, 3])
def test_output_shape_and_masks(size, scale):
    module = CARAFEDown(8, 12, kernel_size=3, scale_factor=scale, group_size=2)
    x = torch.randn(2, 8, *size)
    out_size = (-(-size[0] // scale), -(-size[1] // scale))
    assert module(x).shape == (2, 12, *out_size)
    masks = module.masks(x)
    assert masks.shape == (2, 2 * 9, *out_size)
    torch.testing.assert_close(masks.unflatten(1, (2, 9)).sum(2), torch.ones(2, 2, *out_size))


def test_forward_is_the_reassembly_then_ultralytics_conv():
    module = CARAFEDown(6, 10).eval()
    assert isinstance(module.conv, Conv) and module.conv.conv.kernel_size == (1, 1)
    x = torch.randn(1, 6, 9, 7)
    expected = module.conv(carafe_downsample(x, module.masks(x), 5, 1, 2))
    torch.testing.assert_close(module(x), expected)


def test_starts_near_uniform_averaging():
    module = CARAFEDown(16, 16, kernel_size=3)
    masks = module.masks(torch.randn(1, 16, 12, 12))
    torch.testing.assert_close(masks, torch.full_like(masks, 1 / 9), atol=1e-2, rtol=0)


def test_gradients_reach_every_parameter():
    module = CARAFEDown(8, 8, group_size=2)
    module(torch.randn(2, 8, 10, 10)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize("kwargs,error,pattern", [
    ({"kernel_size": 4}, ValueError, "kernel_size must be odd"),
    ({"scale_factor": 0}, ValueError, "scale_factor must be >= 1"),
    ({"encoder_kernel_size": 2}, ValueError, "encoder_kernel_size must be odd"),
    ({"compressed_channels": 0}, ValueError, "compressed_channels must be >= 1"),
    ({"group_size": 3}, ValueError, r"input channels \(c1\) \(8\) must be divisible by group_size \(3\)"),
    ({"c2": 2.5}, TypeError, "c2 must be an int"),
])
def test_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        CARAFEDown(**({"c1": 8, "c2": 16} | kwargs))


def test_wrong_input_channels():
    with pytest.raises(ValueError, match=r"CARAFEDown expects input of shape \(N, 8, H, W\), got \(1, 4, 6, 6\)"):
        CARAFEDown(8, 8)(torch.randn(1, 4, 6, 6))


def test_fx_tracing_pickling_and_copies():
    module = CARAFEDown(8, 4).eval()
    x = torch.randn(1, 8, 11, 9)
    traced = torch.fx.symbolic_trace(module)
    torch.testing.assert_close(traced(x), module(x))
    for clone in (pickle.loads(pickle.dumps(module)), copy.deepcopy(module)):
        torch.testing.assert_close(clone(x), module(x))


def test_torch_compile_without_graph_break():
    module = CARAFEDown(8, 8).eval()
    x = torch.randn(1, 8, 10, 10)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(module, fullgraph=True, backend="aot_eager")(x), module(x))


def test_a_bad_yaml_row_names_its_layer(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("nc: 2\nbackbone:\n  - [-1, 1, Conv, [16, 3, 2]]\nhead:\n  - [-1, 1, CARAFEDown, [16, 4, 2]]\n"
                    "  - [[-1], 1, Detect, [nc]]\n")
    with pytest.raises(ValueError, match=r"model YAML layer 1 .*CARAFEDown.*kernel_size must be odd"):
        ultralytics_model(path)


def test_model_info_counts_the_reassembly(tmp_path):
    from ultralytics.utils.torch_utils import get_flops

    from carafe_ultra import convert_yaml

    stock = ultralytics_model("yolo11n.yaml").model
    ours = ultralytics_model(convert_yaml("yolo11n.yaml", None, tmp_path, downsample=True)).model
    layers = [m for m in ours.model if isinstance(m, CARAFEDown)]
    sizes = {}
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.__setitem__(m, i[0].shape[2])) for m in layers]
    ours.eval()(torch.zeros(1, 3, 640, 640))
    for hook in hooks:
        hook.remove()
    # Each swapped row: a 3x3 stride-2 Conv (conv + BatchNorm, as thop counts them) gives way to the compressor, the
    # stride-2 encoder, the reassembly (k² = 25 multiply-adds per element of its c1 channels) and a 1x1 Conv.
    macs = 0
    for layer in layers:
        c1, c2, cm, taps = layer.c1, layer.c2, layer.compressor.out_channels, layer.kernel_size**2
        inputs, outputs = sizes[layer] ** 2, (sizes[layer] // 2) ** 2
        replaced = (c1 * c2 * 9 + c2) * outputs
        added = c1 * cm * inputs + (cm * taps * 9 + c1 * taps + c1 * c2 + c2) * outputs
        macs += added - replaced
    assert get_flops(ours, 640) - get_flops(stock, 640) == pytest.approx(2 * macs / 1e9, rel=0.02)
