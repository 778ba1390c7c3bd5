"""The CARAFE module: structure, parameter counts, initialisation, dtypes, pickling and copying."""

import copy
import io
import pickle

import pytest
import torch

from carafe_ultra import CARAFE
from tests.reference import carafe_reference


def conv_params(c_in, c_out, k):
    return c_in * c_out * k * k + c_out


@pytest.mark.parametrize(
    "args,kwargs,out_channels,scale",
    [
        ((256,), {}, 256, 2),
        ((256, 256, 3, 2), {}, 256, 2),  # the widely copied YAML row [256, 3, 2] after parse_model
        ((128, 64, 5, 4), {"groups": 4}, 64, 4),
        ((32, None, 3, 3), {"encoder_kernel": 5, "compressed_channels": 16}, 32, 3),
        ((16, 16, 1, 1), {}, 16, 1),
    ],
)
def test_shapes_and_parameter_count(args, kwargs, out_channels, scale):
    module = CARAFE(*args, **kwargs)
    c1 = args[0]
    k = args[2] if len(args) > 2 else 5
    groups = kwargs.get("groups", 1)
    c_m = kwargs.get("compressed_channels", 64)
    k_enc = kwargs.get("encoder_kernel", 3)
    expected = conv_params(c1, c_m, 1) + conv_params(c_m, groups * k * k * scale * scale, k_enc)
    if out_channels != c1:
        expected += conv_params(c1, out_channels, 1)
    assert sum(p.numel() for p in module.parameters()) == expected
    x = torch.randn(2, c1, 7, 5)
    assert module(x).shape == (2, out_channels, 7 * scale, 5 * scale)


def test_paper_defaults_parameter_count():
    # C=256, k_up=5, k_enc=3, C_m=64, s=2: about 74k parameters, as the paper reports.
    assert sum(p.numel() for p in CARAFE(256).parameters()) == 16448 + 57700


def test_no_projection_when_c2_equals_c1():
    assert CARAFE(64, 64).projection is None and CARAFE(64).projection is None
    assert isinstance(CARAFE(64, 32).projection, torch.nn.Conv2d)


def test_module_matches_reference_on_its_own_masks():
    module = CARAFE(8, 4, kernel_size=3, up_factor=2, groups=2).double()
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    masks = module.masks(x)
    # Softmax over each group's k² taps: every group sums to one at every output pixel.
    torch.testing.assert_close(masks.view(2, 2, 9, 10, 12).sum(2), torch.ones(2, 2, 10, 12, dtype=torch.float64))
    expected = carafe_reference(module.projection(x), masks, 3, 2, 2)
    torch.testing.assert_close(module(x), expected)


def test_initialisation_starts_near_uniform_averaging():
    module = CARAFE(16, kernel_size=5)
    masks = module.masks(torch.randn(1, 16, 6, 6))
    torch.testing.assert_close(masks, torch.full_like(masks, 1 / 25), rtol=0.1, atol=0)
    assert module.encoder.weight.std() < 2e-3
    assert torch.all(module.compressor.bias == 0) and torch.all(module.encoder.bias == 0)


def test_every_parameter_gets_a_gradient():
    # Ultralytics' DDP uses find_unused_parameters=False.
    module = CARAFE(8, 16, kernel_size=3, groups=2)
    module(torch.randn(2, 8, 4, 4)).square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_module_on_cpu(dtype):
    # What model.half() validation does, without autocast.
    module = CARAFE(8, kernel_size=3).to(dtype)
    x = torch.randn(1, 8, 5, 5, dtype=dtype)
    out = module(x)
    assert out.dtype == dtype and torch.isfinite(out).all()
    reference = CARAFE(8, kernel_size=3)
    reference.load_state_dict({k: v.float() for k, v in module.state_dict().items()})
    torch.testing.assert_close(out.float(), reference(x.float()), rtol=2e-2, atol=2e-2)


def test_autocast_mixed_dtypes():
    # Under autocast the projection conv hands bfloat16 features on while the softmax gives float32 masks.
    module = CARAFE(8, 16, kernel_size=3)
    x = torch.randn(1, 8, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), module(x), rtol=3e-2, atol=3e-2)


def test_pickle_deepcopy_and_state_dict():
    module = CARAFE(8, 4, kernel_size=3, groups=2)
    x = torch.randn(1, 8, 4, 5)
    expected = module(x)
    for clone in (pickle.loads(pickle.dumps(module)), copy.deepcopy(module)):
        torch.testing.assert_close(clone(x), expected)
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), expected)
    fresh = CARAFE(8, 4, kernel_size=3, groups=2)
    fresh.load_state_dict(module.state_dict())
    torch.testing.assert_close(fresh(x), expected)


def test_repr_names_the_configuration():
    assert "c1=8, c2=4, kernel_size=3, up_factor=2, groups=2" in repr(CARAFE(8, 4, 3, groups=2))


def test_torch_compile_fullgraph_on_cpu():
    """Traced whole, forward and backward (aot_eager: inductor's C++ code generation would add a minute of compiling
    and test torch rather than us; tests/test_cuda_gpu.py runs inductor on the GPU)."""
    module = CARAFE(16, kernel_size=3)
    x = torch.randn(1, 16, 6, 6, requires_grad=True)
    expected = module(x)
    out = torch.compile(module, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert x.grad is not None and module.encoder.weight.grad is not None


def test_torch_fx_and_feature_extraction():
    from torchvision.models.feature_extraction import create_feature_extractor

    network = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), CARAFE(8, 16, kernel_size=3),
                                  torch.nn.Conv2d(16, 4, 1))
    x = torch.randn(2, 3, 5, 6)
    expected = network(x)
    traced = torch.fx.symbolic_trace(network)
    torch.testing.assert_close(traced(x), expected)
    features = create_feature_extractor(network, return_nodes={"1": "upsampled", "2": "out"})(x)
    assert features["upsampled"].shape == (2, 16, 10, 12)
    torch.testing.assert_close(features["out"], expected)
    with pytest.raises(ValueError, match=r"CARAFE expects input of shape \(N, 8, H, W\), got \(1, 3, 5, 5\)"):
        torch.fx.symbolic_trace(network[1])(torch.randn(1, 3, 5, 5))  # the traced graph still checks its input


@pytest.mark.parametrize("kernel,groups,scale", [(5, 1, 2), (3, 2, 3)])
def test_centre_weight_starts_each_window_at_its_centre(kernel, groups, scale):
    module = CARAFE(8, kernel_size=kernel, up_factor=scale, groups=groups, centre_weight=0.8)
    masks = module.masks(torch.randn(2, 8, 4, 5)).view(2, groups, kernel**2, 4 * scale, 5 * scale)
    torch.testing.assert_close(masks[:, :, kernel**2 // 2], torch.full_like(masks[:, :, 0], 0.8), rtol=0.01, atol=0)
    others = torch.cat([masks[:, :, : kernel**2 // 2], masks[:, :, kernel**2 // 2 + 1 :]], dim=2)
    torch.testing.assert_close(others, torch.full_like(others, 0.2 / (kernel**2 - 1)), rtol=0.05, atol=0)
    assert "centre_weight=0.8" in repr(module)
    uniform = CARAFE(8, kernel_size=kernel, centre_weight=1 / kernel**2).masks(torch.randn(1, 8, 3, 3))
    torch.testing.assert_close(uniform, torch.full_like(uniform, 1 / kernel**2), rtol=0.05, atol=0)


def test_checkpoints_from_before_centre_weight_still_load():
    module = CARAFE(8)
    del module.centre_weight  # what unpickling an older module gives: no instance attribute
    assert module.centre_weight is None and "centre_weight" not in repr(module)
