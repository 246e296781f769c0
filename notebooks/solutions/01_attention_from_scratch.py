"""Solutions to the exercises of notebook 01 (dual attention from scratch).

Run them: ``python notebooks/solutions/01_attention_from_scratch.py``; ``tests/test_exercises.py``
runs every ``exercise_*`` function here, so the solutions stay correct as the library changes.
"""

import torch
from torch import nn

import sca_lib


def dual_params(channels: int, reduction: int) -> int:
    """Exercise 1: the channel path is two 1x1 convs with biases (C -> C/r -> C), the spatial path
    one 1x1 conv C -> 1 with a bias."""
    hidden = channels // reduction
    channel_path = (channels * hidden + hidden) + (hidden * channels + channels)
    spatial_path = channels + 1
    return channel_path + spatial_path


def exercise_1() -> None:
    for channels in (64, 512, 2048):
        for reduction in (4, 8, 16):
            module = sca_lib.DualAttention(channels, reduction)
            assert dual_params(channels, reduction) == sum(p.numel() for p in module.parameters())


def exercise_2() -> None:
    """Zero weights and biases: both pre-activations are 0, sigmoid(0) = 0.5, so the module multiplies
    every element by 0.5 * 0.5 = 0.25. With identity_init the gates are 2 * sigmoid, so 1 * 1 = 1."""
    x = torch.randn(2, 16, 5, 5)
    module = sca_lib.DualAttention(16)
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
        torch.testing.assert_close(module(x), 0.25 * x)
    torch.testing.assert_close(sca_lib.DualAttention(16, identity_init=True)(x), x)


def exercise_3() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 5)
    off = sca_lib.DualAttention(16, alpha=0.0, beta=0.0)
    for p in off.parameters():
        nn.init.normal_(p.data)  # any weights
    torch.testing.assert_close(off(x), x)
    spatial_only = sca_lib.DualAttention(16, alpha=1.0, beta=0.0)
    reference = sca_lib.create_attention("spatial", 16)
    reference.spatial.load_state_dict(spatial_only.spatial.state_dict())
    torch.testing.assert_close(spatial_only(x), reference(x))


def exercise_4() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 5)
    parallel = sca_lib.DualAttention(16, 4)
    sequential = sca_lib.DualAttention(16, 4, fusion="sequential")
    sequential.load_state_dict(parallel.state_dict())  # the same weights
    c, s = parallel.channel.weights(x), parallel.spatial.weights(x)
    torch.testing.assert_close(parallel(x), x * s * c)  # parallel: the order of the two products is free
    assert not torch.allclose(parallel(x), sequential(x))  # sequential: s reads x * c, not x
    torch.testing.assert_close(sequential(x), (x * c) * parallel.spatial.weights(x * c))


if __name__ == "__main__":
    for name, fn in sorted(globals().items()):
        if name.startswith("exercise_"):
            fn()
            print(f"{name}: ok")
