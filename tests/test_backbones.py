"""Tests for sca_lib.backbones: every backbone x attention, placements, weights, groups, freezing.

Nothing here downloads: weights are None or local files written to tmp_path.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from sca_lib.attention import AttnResBlock, DualAttention, LiteDualAttention, attention_modules
from sca_lib.backbones import build_classifier, default_placement, list_backbones, list_placements
from sca_lib.groups import GROUPS, parameter_groups, set_trainable
from sca_lib.placements import AttnBasicBlock, AttnBottleneck, block_stride
from sca_lib.spec import AttentionSpec

BACKBONES = ["vgg16", "resnet50", "mobilenet_v3_large", "resnet18", "mobilenet_v3_small"]
ATTENTIONS = [None, "dual", "channel", "spatial", "lite"]


HEAVY = {"vgg16", "resnet50"}  # slow to build on CPU: the plain model and the default attention only


def _cases():
    for b in BACKBONES:
        for a in ATTENTIONS:
            if b in HEAVY and a not in (None, "dual"):
                continue
            yield b, a


@pytest.fixture(scope="module")
def vgg_dual():
    """One VGG16 + DualAttention (default placement) shared by the read-only tests."""
    return build_classifier("vgg16", attention="dual")


def test_list_backbones():
    assert set(list_backbones()) == set(BACKBONES)


@pytest.mark.parametrize("backbone,attention", list(_cases()))
def test_forward_backward_every_variant(backbone, attention):
    torch.manual_seed(0)
    model = build_classifier(backbone, attention=attention, num_classes=7)
    if attention is None:
        assert not attention_modules(model)
        trainable = ["late", "head"]
    else:
        mods = attention_modules(model)
        assert len(mods) == 1
        assert isinstance(next(iter(mods.values())), (DualAttention, AttnResBlock))
        trainable = ["attention", "head"]
    set_trainable(model, trainable)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    y = model(x)
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    names = {id(p): g for g, ps in parameter_groups(model).items() for p in ps}
    for name, p in model.named_parameters():
        if names[id(p)] in trainable:
            assert p.requires_grad and p.grad is not None, f"{name} got no gradient"
        else:
            assert not p.requires_grad and p.grad is None, f"frozen {name} got a gradient"


def test_vgg16_default_sits_after_conv5_3_relu(vgg_dual):
    model = vgg_dual
    f = model.features
    convs = [i for i, m in enumerate(f) if isinstance(m, nn.Conv2d)]
    assert convs[-1] == 28  # conv5_3 is features[28] in torchvision
    assert isinstance(f[29], nn.ReLU)
    assert isinstance(f[30], DualAttention) and f[30].channels == 512
    assert isinstance(f[31], nn.MaxPool2d) and len(f) == 32
    assert model.sca_config["placement"] == ["after_conv5_3"]


def test_vgg16_article_slice_is_before_conv5_3():
    f = build_classifier("vgg16", attention="dual", placement="article_slice").features
    assert isinstance(f[28], DualAttention)  # children()[:28] + [attn]: attention at index 28 ...
    assert isinstance(f[27], nn.ReLU) and isinstance(f[29], nn.Conv2d)  # ... BEFORE conv5_3


def test_vgg16_identity_attention_keeps_outputs_and_weights():
    torch.manual_seed(0)
    plain = build_classifier("vgg16").eval()
    model = build_classifier("vgg16", "dual", weights=plain.state_dict(), identity_init=True).eval()
    model.classifier[6].load_state_dict(plain.classifier[6].state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x))


def test_resnet50_default_replaces_layer4_1():
    model = build_classifier("resnet50", attention="dual")
    assert isinstance(model.layer4[1], AttnResBlock) and model.layer4[1].channels == 2048
    assert not isinstance(model.layer4[0], AttnResBlock) and not isinstance(model.layer4[2], AttnResBlock)
    assert default_placement("resnet50") == "layer4.1"


def test_resnet_any_block_and_refusal():
    model = build_classifier("resnet18", attention="dual", placement="layer3.1")
    assert isinstance(model.layer3[1], AttnResBlock) and model.layer3[1].channels == 256
    with pytest.raises(ValueError, match=r"layer4\.0 changes channels 256->512.*layer4\.0\.inside"):
        build_classifier("resnet18", attention="dual", placement="layer4.0")
    # resnet18's layer1.0 keeps 64 channels and stride 1: it can be replaced
    assert isinstance(build_classifier("resnet18", "dual", placement="layer1.0").layer1[0], AttnResBlock)


def test_resnet_inside_and_after_stage_keep_pretrained_blocks():
    torch.manual_seed(0)
    plain = build_classifier("resnet18").eval()
    x = torch.randn(2, 3, 32, 32)
    for placement, cls in [("layer4.0.inside", AttnBasicBlock), ("after_layer3", None)]:
        model = build_classifier("resnet18", "dual", placement=placement, weights=plain.state_dict(),
                                 identity_init=True).eval()
        model.fc.load_state_dict(plain.fc.state_dict())
        if cls is not None:
            assert isinstance(model.layer4[0], cls) and isinstance(model.layer4[0].attn, DualAttention)
        else:
            assert isinstance(model.layer3[2], DualAttention) and len(model.layer3) == 3
        with torch.no_grad():  # identity attention + same weights -> same outputs
            torch.testing.assert_close(model(x), plain(x))


def test_resnet50_inside_is_bottleneck():
    model = build_classifier("resnet50", "lite", placement="layer4.2.inside").eval()
    assert isinstance(model.layer4[2], AttnBottleneck) and model.layer4[2].attn.channels == 2048
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 20)


def test_resnet_detection_group():
    model = build_classifier("resnet18", "dual", placement="detection")
    assert set(attention_modules(model)) == {"layer3.1", "layer4.1"}
    places = list_placements("resnet50")
    assert "layer3.5" in places["detection"] and "layer4.2" in places["detection"]


def test_mobilenet_replace_se():
    plain = torchvision.models.mobilenet_v3_small()
    se = {n: m.fc1.in_channels for n, m in plain.named_modules()
          if isinstance(m, torchvision.ops.SqueezeExcitation)}
    model = build_classifier("mobilenet_v3_small", "lite", placement="replace_se")
    assert not any(isinstance(m, torchvision.ops.SqueezeExcitation) for m in model.modules())
    mods = attention_modules(model)
    assert {n: m.channels for n, m in mods.items()} == se
    assert all(isinstance(m, LiteDualAttention) for m in mods.values())
    one = build_classifier("mobilenet_v3_small", "lite", placement="replace_se.4")
    assert list(attention_modules(one)) == ["features.4.block.2"]


def test_mobilenet_default_after_last_block():
    model = build_classifier("mobilenet_v3_large", "lite")
    assert isinstance(model.features[17], LiteDualAttention) and model.features[17].channels == 960
    assert model.sca_config["placement"] == ["after_features.16"]


def test_list_placements():
    for b in BACKBONES:
        places = list_placements(b)
        assert default_placement(b) in places and "(default)" in places[default_placement(b)]
        assert all(isinstance(v, str) and v for v in places.values())
    r50 = list_placements("resnet50")
    assert "layer4.0" not in r50 and "layer4.0.inside" in r50 and "after_layer4" in r50
    assert "article_slice" in list_placements("vgg16")
    assert "replace_se" in list_placements("mobilenet_v3_large")


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown backbone 'vgg19'"):
        build_classifier("vgg19")
    with pytest.raises(ValueError, match="unknown backbone"):
        list_placements("alexnet")
    with pytest.raises(ValueError, match="unknown placement 'layer9.1'.*list_placements"):
        build_classifier("resnet18", "dual", placement="layer9.1")
    with pytest.raises(ValueError, match="unknown attention 'bam'"):
        build_classifier("resnet18", "bam")
    with pytest.raises(ValueError, match="attention=None"):
        build_classifier("resnet18", placement="layer4.1")
    with pytest.raises(ValueError, match="num_classes"):
        build_classifier("resnet18", num_classes=0)


def test_weights_round_trip_plain_to_attention(tmp_path):
    torch.manual_seed(0)
    plain = build_classifier("resnet18", num_classes=20)  # e.g. the pretrained stand-in
    path = tmp_path / "plain.pt"
    torch.save(plain.state_dict(), path)
    model = build_classifier("resnet18", "dual", placement="layer4.0.inside", weights=str(path), num_classes=5)
    ref = plain.state_dict()
    loaded = 0
    for k, v in model.state_dict().items():
        if k.startswith("fc."):
            continue
        if k in ref:
            torch.testing.assert_close(v, ref[k])
            loaded += 1
    assert loaded == len(ref) - 2  # everything but fc.weight, fc.bias
    assert model.fc.out_features == 5
    # a torchvision model with the 1000-class head loads too (here random, same format as ImageNet)
    tv = torchvision.models.resnet18()
    model = build_classifier("resnet18", "dual", weights=tv.state_dict())
    torch.testing.assert_close(model.conv1.weight, tv.conv1.weight)


def test_weights_errors(tmp_path):
    r18 = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), r18)
    with pytest.raises(ValueError, match="do not match a plain torchvision resnet50.*missing keys.*shape mismatches"):
        build_classifier("resnet50", weights=r18)
    sd = torchvision.models.resnet18().state_dict()
    sd["conv1.weight"] = torch.zeros(32, 3, 7, 7)
    with pytest.raises(ValueError, match=r"shape mismatches: conv1.weight: file \(32, 3, 7, 7\)"):
        build_classifier("resnet18", weights=sd)
    extra = dict(torchvision.models.resnet18().state_dict(), **{"layer5.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected keys: layer5.0.weight"):
        build_classifier("resnet18", weights=extra)
    attn = tmp_path / "attn.pt"
    torch.save(build_classifier("resnet18", "dual", placement="after_layer4").state_dict(), attn)
    with pytest.raises(ValueError, match="WITH attention"):
        build_classifier("resnet18", "dual", weights=attn)
    with pytest.raises(FileNotFoundError, match="not found.*state_dict"):
        build_classifier("resnet18", weights=tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="could not read"):
        build_classifier("resnet18", weights=junk)
    lst = tmp_path / "list.pt"
    torch.save([1, 2, 3], lst)
    with pytest.raises(ValueError, match="not a state_dict"):
        build_classifier("resnet18", weights=lst)
    with pytest.raises(ValueError, match="cannot use"):  # wrong family: refused before any download
        build_classifier("resnet18", weights=torchvision.models.VGG16_Weights.DEFAULT)


def test_parameter_groups_partition_and_vgg_early(vgg_dual):
    model = vgg_dual
    groups = parameter_groups(model)
    assert tuple(groups) == GROUPS
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    early = sum(m.weight.numel() + m.bias.numel() for m in convs[:10])  # conv1_1..conv4_3 (C3)
    assert sum(p.numel() for p in groups["early"]) == early
    assert [p.shape for p in groups["head"]] == [(20, 4096), (20,)]
    assert sum(p.numel() for p in groups["attention"]) == 66625
    r18 = build_classifier("resnet18")
    r = parameter_groups(r18)
    assert sum(p.numel() for p in r["late"]) == sum(p.numel() for p in torchvision.models.resnet18().layer4.parameters())
    assert r["attention"] == []
    with pytest.raises(ValueError, match="build_classifier"):
        parameter_groups(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown parameter group"):
        set_trainable(r18, ["backbone"])


def test_frozen_batchnorm_stays_frozen_after_train():
    torch.manual_seed(0)
    model = build_classifier("resnet18", "dual")
    set_trainable(model, ["attention", "head"])
    model.train()
    before = model.bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(model.bn1.running_mean, before)
    assert not model.bn1.training
    clone = copy.deepcopy(model)  # the freezing survives a deepcopy
    clone.train()
    clone(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(clone.bn1.running_mean, before)
    set_trainable(model, GROUPS)  # unfreeze: statistics update again
    model.train()
    model(torch.randn(2, 3, 32, 32))
    assert model.bn1.training and not torch.equal(model.bn1.running_mean, before)


def test_nan_weights_file_is_refused_naming_file_and_tensor(tmp_path):
    sd = torchvision.models.resnet18().state_dict()
    sd["layer1.0.conv2.weight"][0, 0, 0, 0] = float("nan")
    sd["layer2.0.bn1.running_var"][:3] = float("inf")
    path = tmp_path / "diverged.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"diverged\.pt.*non-finite.*'layer1\.0\.conv2\.weight' \(64, 64, 3, 3\) has 1 NaN/inf"):
        build_classifier("resnet18", weights=path)
    with pytest.raises(ValueError, match="a state_dict hold non-finite"):
        build_classifier("resnet18", "dual", weights=sd)
    sd = torchvision.models.resnet18().state_dict()
    sd["fc.weight"][:] = float("nan")  # the head is never loaded, so it may be anything
    build_classifier("resnet18", weights=sd)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_integer_image_batch_is_refused_naming_the_dtype(dtype):
    model = build_classifier("mobilenet_v3_small", "lite").eval()
    images = torch.randint(0, 255, (1, 3, 32, 32)).to(dtype)
    msg = rf"build_classifier\('mobilenet_v3_small'\) model expects a floating-point input .*got dtype {dtype}.*x\.float\(\)"
    with pytest.raises(TypeError, match=msg):
        model(images)
    with pytest.raises(TypeError, match=msg):
        copy.deepcopy(model)(images)  # the check travels with the model
    assert model(images.float() / 255).shape == (1, 20)


def test_weights_is_keyword_only():
    with pytest.raises(TypeError, match="positional"):
        build_classifier("resnet18", None, None, 20, None)


def test_attention_spec_gives_kind_placement_and_knobs():
    spec = AttentionSpec("dual", placement="layer4.1.inside", reduction=4, drop_rate=0.1, identity_init=True)
    model = build_classifier("resnet18", spec, num_classes=5)
    attn = model.layer4[1].attn
    assert isinstance(attn, DualAttention) and attn.channel.fc1.out_channels == 512 // 4 and attn.identity_init
    assert model.sca_config["placement"] == ["layer4.1.inside"] and model.sca_config["reduction"] == 4
    assert model.sca_config["attention_kwargs"] == spec.module_kwargs()
    assert not attention_modules(build_classifier("resnet18", AttentionSpec()))  # kind None: a plain model
    with pytest.raises(ValueError, match="put them in the spec"):
        build_classifier("resnet18", spec, placement="layer4.1")
    with pytest.raises(ValueError, match="put them in the spec"):
        build_classifier("resnet18", spec, reduction=8)


@pytest.mark.parametrize("backbone,attention,placement,modules", [
    ("vgg16", "dual", None, {"after_conv5_3": "features.30"}),
    ("resnet18", "dual", "detection", {"layer3.1": "layer3.1", "layer4.1": "layer4.1"}),
    ("resnet18", "spatial", ["layer4.0.inside", "after_layer4"],
     {"layer4.0.inside": "layer4.0.attn", "after_layer4": "layer4.2"}),
    ("mobilenet_v3_large", "lite", ["after_features.16", "after_features.13"],
     {"after_features.16": "features.18", "after_features.13": "features.14"}),
    ("mobilenet_v3_small", "lite_channel", "replace_se.4", {"replace_se.4": "features.4.block.2"}),
])
def test_sca_config_records_resolved_settings(backbone, attention, placement, modules):
    model = build_classifier(backbone, attention, placement=placement)
    cfg = model.sca_config
    assert cfg["modules"] == modules and list(cfg["modules"]) == cfg["placement"]
    assert set(attention_modules(model)) == set(modules.values())
    assert cfg["reduction"] == (16 if attention.startswith("lite") else 8)
    head = {"vgg16": "classifier.6", "resnet18": "fc"}.get(backbone, "classifier.3")
    assert cfg["head"] == head and model.get_submodule(head).out_features == 20
    plain = build_classifier(backbone, num_classes=3).sca_config
    assert plain["reduction"] is None and plain["modules"] == {} and plain["head"] == head


def test_mobilenet_late_stage_starts_at_the_last_stride_2_block():
    model = build_classifier("mobilenet_v3_large")
    assert [i for i, b in enumerate(model.features) if block_stride(b) == 2] == [0, 2, 4, 7, 13]
    assert block_stride(model.features[11]) == 1  # widens 80 -> 112 channels at stride 1
    assert [m._sca_group for m in model.features] == ["early"] * 13 + ["late"] * 4
