"""The DySample module: bilinear at initialisation, learns offsets, checked arguments, traceable, picklable."""

import copy
import pickle

import pytest
import torch

from carafe_ultra import DySample


@pytest.mark.parametrize("scale", [2, 3])
def test_starts_as_bilinear_upsampling(scale):
    module = DySample(8, scale=scale, groups=4)
    torch.nn.init.zeros_(module.offset.weight)
    x = torch.randn(2, 8, 5, 7)
    bilinear = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    torch.testing.assert_close(module(x), bilinear, rtol=1e-5, atol=1e-5)


def test_learns_offsets_and_counts_parameters():
    module = DySample(8)
    module(torch.randn(1, 8, 4, 4)).square().sum().backward()
    assert module.offset.weight.grad.abs().sum() > 0
    assert sum(p.numel() for p in DySample(256).parameters()) == 256 * 32 + 32
    assert "c1=8, scale=3, groups=2, scope=0.25" in repr(DySample(8, scale=3, groups=2))


@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        ({"c1": 0}, ValueError, "c1 must be >= 1"),
        ({"c2": 16}, ValueError, r"DySample keeps the channels: c2 must equal c1 \(8\), got 16"),
        ({"scale": 1.5}, TypeError, "scale must be an int"),
        ({"groups": 3}, ValueError, r"channels \(c1\) \(8\) must be divisible by groups \(3\)"),
        ({"scope": 0}, ValueError, "scope must be a positive number, got 0"),
        ({"scope": "x"}, ValueError, "scope must be a positive number, got 'x'"),
        ({"scope": True}, ValueError, "scope must be a positive number, got True"),
    ],
)
def test_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        DySample(**({"c1": 8} | kwargs))


def test_symbolic_trace_and_copies():
    module = DySample(8, scale=2)
    torch.nn.init.normal_(module.offset.weight, std=0.1)
    x = torch.randn(2, 8, 5, 6)
    expected = module(x)
    traced = torch.fx.symbolic_trace(module)
    torch.testing.assert_close(traced(x), expected)
    for clone in (pickle.loads(pickle.dumps(module)), copy.deepcopy(module)):
        torch.testing.assert_close(clone(x), expected)
