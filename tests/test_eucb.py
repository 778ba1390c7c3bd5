"""The EUCB module: its definition (nearest, depthwise conv, BatchNorm, ReLU, 1×1 conv), checked arguments, a YAML
row like Conv's, and exports that run and agree with PyTorch."""

import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from carafe_ultra import EUCB, convert_yaml
from carafe_ultra.integration import ultralytics_model


def randomised(module):
    """``module`` with random weights and BatchNorm statistics, in eval mode (what a trained one looks like)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return module.eval()


@pytest.mark.parametrize("c2,scale,kernel", [(None, 2, 3), (12, 2, 3), (4, 3, 5), (8, 1, 1)])
def test_is_its_definition(c2, scale, kernel):
    module = randomised(EUCB(8, c2, scale, kernel))
    x = torch.randn(2, 8, 5, 7)
    up = x.repeat_interleave(scale, 2).repeat_interleave(scale, 3)  # nearest, written out
    depthwise = F.conv2d(up, module.depthwise.weight, padding=kernel // 2, groups=8)
    norm = module.norm
    normed = (depthwise - norm.running_mean[:, None, None]) / torch.sqrt(norm.running_var[:, None, None] + norm.eps)
    normed = normed * norm.weight[:, None, None] + norm.bias[:, None, None]
    expected = F.conv2d(normed.clamp(min=0), module.pointwise.weight, module.pointwise.bias)
    out = module(x)
    assert out.shape == (2, c2 or 8, 5 * scale, 7 * scale)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_parameters_gradients_and_copies():
    module = EUCB(16, 32)
    # depthwise 16·3·3 (no bias), BatchNorm 2·16, pointwise 16·32 + 32
    assert sum(p.numel() for p in module.parameters()) == 16 * 9 + 2 * 16 + 16 * 32 + 32
    module(torch.randn(2, 16, 4, 4)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert "c1=16, c2=32, scale=2, kernel_size=3" in repr(module)
    module = randomised(module)
    x = torch.randn(1, 16, 3, 5)
    for clone in (pickle.loads(pickle.dumps(module)), copy.deepcopy(module), torch.fx.symbolic_trace(module)):
        torch.testing.assert_close(clone(x), module(x))


@pytest.mark.parametrize("kwargs,error,pattern", [
    ({"c1": 0}, ValueError, "c1 must be >= 1"),
    ({"c2": 0}, ValueError, "c2 must be >= 1"),
    ({"scale": 1.5}, TypeError, "scale must be an int"),
    ({"kernel_size": 2}, ValueError, "kernel_size must be odd"),
    ({"kernel_size": True}, TypeError, "kernel_size must be an int"),
])
def test_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        EUCB(**({"c1": 8} | kwargs))


def test_onnx_export_runs_and_agrees(tmp_path):
    import onnxruntime

    model = ultralytics_model(convert_yaml("yolov8n.yaml", "eucb", tmp_path))
    network = model.model
    eucbs = [randomised(m) for m in network.modules() if isinstance(m, EUCB)]  # trained-looking BatchNorm statistics
    assert len(eucbs) == 2
    path = model.export(format="onnx", imgsz=64)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = network.float().eval()(x)[0].numpy()
    assert np.isfinite(want).all() and np.abs(got - want).max() <= 1e-3 * max(1.0, np.abs(want).max())
