"""ResNet-18's stages (ResNetBasicLayer) and the RT-DETR-R18 base we ship: the same network as torchvision's
ResNet-18 given its weights, a YAML module like Conv, the paper's size."""

import pytest
import torch
import torchvision
from ultralytics.utils.torch_utils import get_num_params

from carafe_ultra import CARAFE, ResNetBasicLayer, model_yaml
from carafe_ultra.integration import ultralytics_model
from carafe_ultra.resnet import BasicBlock


def stages_from_torchvision(reference):
    """Our four ResNet-18 stages with the weights of torchvision's ``reference`` (layer1..layer4)."""
    stages = [ResNetBasicLayer(64, 64, 1), ResNetBasicLayer(64, 128, 2), ResNetBasicLayer(128, 256, 2),
              ResNetBasicLayer(256, 512, 2)]
    for number, stage in enumerate(stages, 1):
        theirs = getattr(reference, f"layer{number}").state_dict()
        renamed = {f"layer.{name}".replace("downsample", "shortcut"): value for name, value in theirs.items()}
        stage.load_state_dict(renamed)  # strict: every tensor has its counterpart, with its shape
    return stages


def test_stages_are_torchvisions_resnet18_given_its_weights():
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    for bn in (m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        torch.nn.init.uniform_(bn.running_mean, -0.5, 0.5), torch.nn.init.uniform_(bn.running_var, 0.5, 1.5)
        torch.nn.init.uniform_(bn.weight, 0.5, 1.5), torch.nn.init.uniform_(bn.bias, -0.5, 0.5)
    stages = torch.nn.Sequential(*stages_from_torchvision(reference)).eval()
    x = torch.randn(2, 64, 17, 23)
    with torch.no_grad():
        expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(x))))
        torch.testing.assert_close(stages(x), expected, rtol=1e-5, atol=1e-5)
    assert expected.shape == (2, 512, 3, 3)


def test_layer_shapes_and_arguments():
    layer = ResNetBasicLayer(32, 48, s=2, n=3)
    assert layer(torch.randn(1, 32, 9, 10)).shape == (1, 48, 5, 5)
    assert len(layer.layer) == 3 and all(isinstance(block, BasicBlock) for block in layer.layer)
    assert isinstance(layer.layer[1].shortcut, torch.nn.Identity)
    with pytest.raises(ValueError, match="n must be >= 1"):
        ResNetBasicLayer(32, 48, 1, 0)
    with pytest.raises(TypeError, match="s must be an int"):
        ResNetBasicLayer(32, 48, 2.0)


@pytest.mark.parametrize("name,carafes", [("rtdetr-r18.yaml", 0), ("rtdetr-r18-carafe.yaml", 2)])
def test_rtdetr_r18_is_the_papers_size_and_runs(name, carafes):
    model = ultralytics_model(model_yaml(name))
    network = model.model.eval()
    assert model.task == "detect" and type(model).__name__ == "RTDETR"
    assert sum(isinstance(m, ResNetBasicLayer) for m in network.modules()) == 4
    assert sum(isinstance(m, CARAFE) for m in network.modules()) == carafes
    assert 19.5e6 < get_num_params(network) < 21e6  # the paper: 20M
    decoder = network.model[-1]
    assert len(decoder.decoder.layers) == 3 and decoder.hidden_dim == 256
    with torch.no_grad():
        boxes = network(torch.zeros(1, 3, 64, 64))[0]
    assert boxes.shape == (1, 300, 6)  # x1 y1 x2 y2, score, class of each query
