"""Solutions to the exercises of notebook 02 (VGG16 + dual attention).

Run them: ``python notebooks/solutions/02_vgg16.py``; ``tests/test_exercises.py`` runs every
``exercise_*`` function here, so the solutions stay correct as the library changes. Offline and
fast: random weights, and models that only need their structure are built on the meta device.
"""

import torch
import torchvision
from torch import nn

import sca_lib


def conv_index(features: nn.Sequential, name: str) -> int:
    """Exercise 1: the index in VGG16's ``features`` of the conv called ``name`` ("conv4_3"): count the
    convs, and start a new block after every max-pool."""
    block, conv = 1, 0
    for i, m in enumerate(features):
        if isinstance(m, nn.Conv2d):
            conv += 1
            if f"conv{block}_{conv}" == name:
                return i
        elif isinstance(m, nn.MaxPool2d):
            block, conv = block + 1, 0
    raise KeyError(name)


def exercise_1() -> None:
    with torch.device("meta"):
        vgg = torchvision.models.vgg16(weights=None)
    assert conv_index(vgg.features, "conv4_3") == 21 and conv_index(vgg.features, "conv5_3") == 28
    assert isinstance(vgg.features[22], nn.ReLU) and isinstance(vgg.features[23], nn.MaxPool2d)  # its ReLU, pool4
    # after_conv4_3 inserts the module after conv4_3's ReLU: it becomes features[23], pool4 moves to 24
    with torch.device("meta"):
        model = sca_lib.build_classifier("vgg16", "dual", placement="after_conv4_3")
    assert model.sca_config["modules"] == {"after_conv4_3": "features.23"}
    assert isinstance(model.features[24], nn.MaxPool2d)


def exercise_2() -> None:
    """article_slice and after_conv5_2 are the same model: the module at features[28], the same keys,
    and with the same weights the same outputs."""
    with torch.device("meta"):  # structure first; weights only for `features` below (fc6 alone is 103 M)
        slice_ = sca_lib.build_classifier("vgg16", "dual", placement="article_slice")
        conv52 = sca_lib.build_classifier("vgg16", "dual", placement="after_conv5_2")
    assert slice_.sca_config["modules"]["article_slice"] == conv52.sca_config["modules"]["after_conv5_2"] == "features.28"
    assert [type(m) for m in slice_.features] == [type(m) for m in conv52.features]
    torch.manual_seed(0)
    a, b = slice_.features.to_empty(device="cpu"), conv52.features.to_empty(device="cpu")
    for p in a.parameters():
        nn.init.normal_(p, std=0.05)
    b.load_state_dict(a.state_dict())  # strict: the same keys and shapes
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def dual_params(channels: int, reduction: int = 8) -> int:
    """Exercise 3: channel path C -> C/r -> C (two 1x1 convs with biases), spatial path C -> 1."""
    hidden = channels // reduction
    return 2 * channels * hidden + hidden + channels + channels + 1


def exercise_3() -> None:
    with torch.device("meta"):
        plain = sca_lib.count_parameters(sca_lib.build_classifier("vgg16"))["total"]
        for placement, channels in [("after_conv1_2", 64), ("after_pool2", 128), ("after_conv4_3", 512),
                                    ("after_conv5_3", 512)]:
            added = sca_lib.count_parameters(sca_lib.build_classifier("vgg16", "dual", placement=placement))["total"] - plain
            assert added == dual_params(channels), (placement, added)
    assert dual_params(512) == 66_625  # the table of section 7
    # Same parameters after conv4_3 and conv5_3, but conv4_3's map is 28x28, conv5_3's 14x14: the
    # per-position work (spatial gate, products) is 4x, the channel MLP is not, so a bit under 4x.
    flops = {hw: sca_lib.count_flops(sca_lib.create_attention("dual", 512), (1, 512, hw, hw)) for hw in (28, 14)}
    assert 3.5 < flops[28] / flops[14] < 4


def exercise_4() -> None:
    """C6 stage 1 trains the attention module and the new head only: 66,625 + (4096 + 1) * 20."""
    with torch.device("meta"):
        model = sca_lib.build_classifier("vgg16", "dual", num_classes=20)
    sca_lib.set_trainable(model, ["attention", "head"])
    assert sca_lib.count_parameters(model)["trainable"] == dual_params(512) + (4096 + 1) * 20 == 148_565


if __name__ == "__main__":
    for name, fn in sorted(globals().items()):
        if name.startswith("exercise_"):
            fn()
            print(f"{name}: ok")
