"""Solutions to the exercises of notebook 04 (MobileNetV3 + lite attention).

Run them: ``python notebooks/solutions/04_mobilenet_v3.py``; ``tests/test_exercises.py`` runs every
``exercise_*`` function here, so the solutions stay correct as the library changes. Offline and
fast: random weights, small tensors, structure-only models on the meta device.
"""

import torch
import torchvision
from torch import nn

import sca_lib


def se_blocks(model: nn.Module) -> dict:
    """block index -> torchvision SqueezeExcitation of every feature block that has one."""
    return {i: m for i, b in enumerate(model.features) for m in b.modules()
            if isinstance(m, torchvision.ops.SqueezeExcitation)}


def se_params(channels: int, squeeze: int) -> int:
    """Exercise 1: torchvision's SE: 1x1 conv C -> C_s and C_s -> C, both with biases."""
    return 2 * channels * squeeze + squeeze + channels


def lite_params(channels: int, reduction: int = 16) -> int:
    """Exercise 1: the lite module: channel path C -> C/16 -> C with biases, spatial path C -> 1."""
    hidden = channels // reduction
    return 2 * channels * hidden + hidden + channels + channels + 1


def exercise_1() -> None:
    mnv3 = torchvision.models.mobilenet_v3_large(weights=None)
    se = se_blocks(mnv3)
    for block in se.values():
        c, s = block.fc1.in_channels, block.fc1.out_channels
        assert s % 8 == 0 and abs(s - c / 4) < 8  # C/4 rounded to a multiple of 8
        assert se_params(c, s) == sum(p.numel() for p in block.parameters())
        assert lite_params(c) == sum(p.numel() for p in sca_lib.LiteDualAttention(c).parameters())
        assert lite_params(c) < se_params(c, s)  # r 16 instead of about 4: smaller despite the spatial path
    with torch.device("meta"):
        plain = sca_lib.count_parameters(sca_lib.build_classifier("mobilenet_v3_large"))["total"]
        swapped = sca_lib.count_parameters(sca_lib.build_classifier("mobilenet_v3_large", "lite", placement="replace_se"))
    change = sum(lite_params(b.fc1.in_channels) - se_params(b.fc1.in_channels, b.fc1.out_channels) for b in se.values())
    assert swapped["total"] - plain == change < 0


def exercise_2() -> None:
    """Hard-sigmoid is ReLU6(z + 3) / 6: a straight line between exactly 0 (z <= -3) and exactly 1 (z >= 3),
    within 0.07 of the sigmoid everywhere."""
    z = torch.linspace(-8, 8, 16001)
    hsig = nn.Hardsigmoid()(z)
    torch.testing.assert_close(hsig, torch.clamp(z / 6 + 0.5, 0, 1))
    assert (hsig[z <= -3] == 0).all() and (hsig[z >= 3] == 1).all()  # a gate can close a channel completely
    assert (torch.sigmoid(z[z <= -3]) > 0).all()  # the sigmoid never does
    gap = (hsig - torch.sigmoid(z)).abs().max().item()
    assert 0.05 < gap < 0.07


def exercise_3() -> None:
    """The default (after the last block) is the most expensive 'after' placement: the lite module's
    parameters grow as C^2 / 8, and features.16 has 960 channels."""
    with torch.device("meta"):
        mnv3 = torchvision.models.mobilenet_v3_large(weights=None)
    cost = {f"after_features.{i}": lite_params(b.out_channels) for i, b in enumerate(mnv3.features)}
    assert max(cost, key=cost.get) == sca_lib.default_placement("mobilenet_v3_large") == "after_features.16"
    assert cost["after_features.16"] == 117_181  # the 'attention' group of section 5
    with torch.device("meta"):
        model = sca_lib.build_classifier("mobilenet_v3_large", "lite")
    assert sum(p.numel() for p in sca_lib.parameter_groups(model)["attention"]) == cost["after_features.16"]


def exercise_4() -> None:
    """MobileNetV3-Small: replace_se expands to exactly the blocks that have a built-in SE (nine of them)."""
    with torch.device("meta"):
        small = torchvision.models.mobilenet_v3_small(weights=None)
        model = sca_lib.build_classifier("mobilenet_v3_small", "lite", placement="replace_se")
    expected = [f"replace_se.{i}" for i in se_blocks(small)]
    assert model.sca_config["placement"] == expected and len(expected) == 9
    assert not se_blocks(model)  # none left
    assert all(isinstance(model.get_submodule(path), sca_lib.LiteDualAttention)
               for path in model.sca_config["modules"].values())


if __name__ == "__main__":
    for name, fn in sorted(globals().items()):
        if name.startswith("exercise_"):
            fn()
            print(f"{name}: ok")
