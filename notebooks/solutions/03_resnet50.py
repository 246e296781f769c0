"""Solutions to the exercises of notebook 03 (ResNet50 + attention residual blocks).

Run them: ``python notebooks/solutions/03_resnet50.py``; ``tests/test_exercises.py`` runs every
``exercise_*`` function here, so the solutions stay correct as the library changes. Offline and
fast: random weights, ResNet18 where weights are compared, structure-only models on the meta device.
"""

import torch

import sca_lib


def bottleneck_params(channels: int) -> int:
    """Exercise 1: a Bottleneck that keeps C channels squeezes to m = C/4: 1x1 C->m, 3x3 m->m, 1x1 m->C
    (no biases), and three BatchNorms with a weight and a bias per channel."""
    m = channels // 4
    return channels * m + 9 * m * m + m * channels + 2 * (m + m + channels)


def attn_res_params(channels: int, reduction: int = 8) -> int:
    """Exercise 1: a dense 3x3 conv C->C with bias, plus DualAttention(C, r)."""
    hidden = channels // reduction
    return 9 * channels * channels + channels + 2 * channels * hidden + hidden + channels + channels + 1


def exercise_1() -> None:
    with torch.device("meta"):  # parameter counts need shapes only
        plain = sca_lib.count_parameters(sca_lib.build_classifier("resnet50"))["total"]
        for placement, channels in [("layer2.1", 512), ("layer3.1", 1024), ("layer4.1", 2048)]:
            model = sca_lib.build_classifier("resnet50", "dual", placement=placement)
            added = sca_lib.count_parameters(model)["total"] - plain
            assert added == attn_res_params(channels) - bottleneck_params(channels), placement
    assert bottleneck_params(2048) == 4_462_592 and attn_res_params(2048) == 38_803_713  # section 4's numbers
    # the dense 3x3 conv dominates: 9 C^2 against the bottleneck's C^2/2 + 9 C^2/16 = 17 C^2/16, about 8.5x for the convolutions alone (8.7x for the whole blocks, biases and BatchNorm included, as the notebook prints)
    assert 8 < attn_res_params(2048) / bottleneck_params(2048) < 9


def exercise_2() -> None:
    """Replacing layer4.1 drops its weights (and the new block's are not them); inserting inside keeps all."""
    torch.manual_seed(0)
    pretrained = sca_lib.build_classifier("resnet18").state_dict()  # stands in for ImageNet weights
    replaced = sca_lib.build_classifier("resnet18", "dual", placement="layer4.1", weights=pretrained).state_dict()
    inside = sca_lib.build_classifier("resnet18", "dual", placement="layer4.1.inside", weights=pretrained).state_dict()
    backbone = [k for k in pretrained if not k.startswith("fc.")]
    block = [k for k in backbone if k.startswith("layer4.1.")]
    assert block and not any(k in replaced for k in block)  # gone
    assert all(torch.equal(replaced[k], pretrained[k]) for k in backbone if k not in block)  # the rest is loaded
    assert sorted(k for k in replaced if k.startswith("layer4.1.")) == [
        "layer4.1.attn.channel.fc1.bias", "layer4.1.attn.channel.fc1.weight", "layer4.1.attn.channel.fc2.bias",
        "layer4.1.attn.channel.fc2.weight", "layer4.1.attn.spatial.conv.bias", "layer4.1.attn.spatial.conv.weight",
        "layer4.1.conv.bias", "layer4.1.conv.weight"]  # a new block: nothing of the old one survives
    assert all(torch.equal(inside[k], pretrained[k]) for k in backbone)  # inside: every weight kept


def exercise_3() -> None:
    """The replaceable blocks are exactly those that keep channels and resolution; 'detection' is the
    ones of stages 3 and 4."""
    with torch.device("meta"):
        r50 = sca_lib.build_classifier("resnet50")
    keep_shape = [f"layer{s}.{b}" for s in range(1, 5) for b, block in enumerate(getattr(r50, f"layer{s}"))
                  if block.conv1.in_channels == block.conv3.out_channels and block.stride == 1]
    places = sca_lib.list_placements("resnet50")
    replaceable = [n for n in places if n.startswith("layer") and n.count(".") == 1]  # "layerS.B", not ".inside"
    assert replaceable == keep_shape and len(replaceable) == 16 - 4
    with torch.device("meta"):
        det = sca_lib.build_classifier("resnet50", "dual", placement="detection")
    assert det.sca_config["placement"] == [n for n in keep_shape if n.startswith(("layer3.", "layer4."))]
    assert len(det.sca_config["placement"]) == 7


def exercise_4() -> None:
    """identity_init makes an AttnResBlock the identity, so a replaced block starts as a *deleted* block;
    the inside form with identity_init starts as the plain model itself."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    plain = sca_lib.build_classifier("resnet18").eval()
    block = sca_lib.AttnResBlock(512, identity_init=True)
    h = torch.randn(2, 512, 2, 2)
    torch.testing.assert_close(block(h), h)
    outputs = {}
    for placement in ("layer4.1", "layer4.1.inside"):
        m = sca_lib.build_classifier("resnet18", "dual", placement=placement, weights=plain.state_dict(),
                                     identity_init=True).eval()
        m.fc.load_state_dict(plain.fc.state_dict())  # the head is always new: copy it to compare
        with torch.no_grad():
            outputs[placement] = m(x)
    with torch.no_grad():
        ref = plain(x)
        h = plain.maxpool(plain.relu(plain.bn1(plain.conv1(x))))
        h = plain.layer4[0](plain.layer3(plain.layer2(plain.layer1(h))))  # layer4.1 skipped
        without = plain.fc(torch.flatten(plain.avgpool(h), 1))  # the plain model minus layer4.1
    torch.testing.assert_close(outputs["layer4.1.inside"], ref)
    torch.testing.assert_close(outputs["layer4.1"], without)
    assert not torch.allclose(outputs["layer4.1"], ref)


if __name__ == "__main__":
    for name, fn in sorted(globals().items()):
        if name.startswith("exercise_"):
            fn()
            print(f"{name}: ok")
