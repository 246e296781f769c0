"""Faster R-CNN builders with attention: every backbone and option runs forward/backward, C13's fusion
on the real pyramid of each backbone, weights, parameter groups and errors."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import FrozenBatchNorm2d

from sca_lib.attention import AttnResBlock, DualAttention, attention_modules
from sca_lib.backbones import build_classifier
from sca_lib.detection import (DETECTION_GROUPS, DETECTION_STAGE_GROUPS, FPNAttention, build_detector,
                               list_detector_backbones)
from sca_lib.groups import parameter_groups, set_trainable

SMALL = dict(min_size=64, max_size=80)


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 72, generator=g), torch.rand(3, 70, 64, generator=g)]
    targets = [{"boxes": torch.tensor([[8.0, 8, 40, 50]]), "labels": torch.tensor([3])},
               {"boxes": torch.tensor([[4.0, 10, 30, 60], [35, 30, 60, 66]]), "labels": torch.tensor([1, 20])}]
    return images, targets


OPTIONS = [dict(), dict(attention="dual"), dict(fpn_attention="dual"),
           dict(attention="lite", fpn_attention="lite", fpn_shared=False)]


@pytest.mark.parametrize("backbone", list_detector_backbones())
@pytest.mark.parametrize("option", OPTIONS, ids=["plain", "trunk", "fpn", "both-lite"])
def test_every_backbone_and_option_trains_and_detects(backbone, option):
    torch.manual_seed(0)
    model = build_detector(backbone, **SMALL, **option)
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    attn = attention_modules(model)
    assert bool(attn) == bool(option)
    for name, m in attn.items():  # every attention module gets a gradient
        grads = [p.grad for p in m.parameters()]
        assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads), name
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "scores"}
    assert model.sca_config["num_classes"] == 21 and model.sca_config["backbone"] == backbone


def test_c4_replaces_every_keeping_block_of_stages_3_and_4():
    model = build_detector("resnet50", attention="dual", **SMALL)
    assert model.sca_config["placement"] == ["layer3.1", "layer3.2", "layer3.3", "layer3.4", "layer3.5",
                                             "layer4.1", "layer4.2"]
    body = model.backbone.body
    assert all(isinstance(body.get_submodule(p), AttnResBlock) for p in model.sca_config["placement"])
    assert not isinstance(body.layer3[0], AttnResBlock) and not isinstance(body.layer4[0], AttnResBlock)
    with pytest.raises(ValueError, match="layer3.0 changes channels"):
        build_detector("resnet50", attention="dual", placement="layer3.0", **SMALL)


def test_detection_strengths_are_the_default_and_can_be_overridden():
    m = build_detector("resnet18", attention="dual", placement="layer3.1", fpn_attention="dual", **SMALL)
    mods = [x for x in m.modules() if isinstance(x, DualAttention)]
    assert len(mods) == 2 and all((x.alpha, x.beta) == (0.7, 0.5) for x in mods)  # C10, detection
    m = build_detector("resnet18", fpn_attention="dual", alpha=1.0, beta=1.0, **SMALL)
    assert [(x.alpha, x.beta) for x in m.modules() if isinstance(x, DualAttention)] == [(1.0, 1.0)]


def _article_fusion(attn, pyramid):
    """The article's snippet, run from the coarsest level down (its text: "upsampled")."""
    attn_features = []
    for feat in list(pyramid.values())[::-1]:
        attn_feat = attn(feat)
        if len(attn_features) > 0:
            attn_feat += F.interpolate(attn_features[-1], size=attn_feat.shape[2:], mode="bilinear",
                                       align_corners=False)
        attn_features.append(attn_feat)
    return dict(zip(list(pyramid)[::-1], attn_features))


@pytest.mark.parametrize("backbone,levels", [("resnet50", 5), ("resnet18", 5), ("mobilenet_v3_large", 3),
                                             ("mobilenet_v3_small", 3)])
def test_c13_fusion_on_the_real_pyramid(backbone, levels):
    torch.manual_seed(0)
    model = build_detector(backbone, fpn_attention="dual", **SMALL).eval()
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        pyramid = model.backbone.fpn(model.backbone.body(x))
        assert list(pyramid) == model.sca_config["pyramid"] and len(pyramid) == levels
        sizes = [tuple(v.shape[-2:]) for v in pyramid.values()]
        assert sizes == sorted(sizes, reverse=True)  # fine to coarse
        # torchvision's MobileNetV3 pyramid taps two stride-32 maps (the last strided block and the
        # last conv), so its first two levels have one size: fusion there adds without resizing
        assert len(set(sizes)) == (levels if backbone.startswith("resnet") else levels - 1)
        fused = model.backbone.fpn_attention(pyramid)
        reference = _article_fusion(model.backbone.fpn_attention.attn, pyramid)
        for k in pyramid:
            torch.testing.assert_close(fused[k], reference[k])
            assert fused[k].shape == pyramid[k].shape
        torch.testing.assert_close(model.backbone(x)["0"], fused["0"])  # the detector runs it
        # without fusion each level is just attended; the coarsest level is the same either way
        plain = FPNAttention(256, list(pyramid), fusion=False, strength="detection")
        plain.load_state_dict(model.backbone.fpn_attention.state_dict())
        alone = plain(pyramid)
        top = list(pyramid)[-1]
        torch.testing.assert_close(alone[top], fused[top])
        assert float((alone["0"] - fused["0"]).abs().max()) > 1e-3 * float(fused["0"].abs().max())


def test_fpn_attention_errors_and_per_level_modules():
    fa = FPNAttention(8, ["0", "1"], shared=False)
    assert fa.module_for("0") is not fa.module_for("1")
    with pytest.raises(ValueError, match=r"built for levels \('0', '1'\)"):
        fa({"1": torch.rand(1, 8, 2, 2), "0": torch.rand(1, 8, 4, 4)})
    with pytest.raises(ValueError, match="expects 8 channels"):
        fa({"0": torch.rand(1, 4, 4, 4), "1": torch.rand(1, 4, 2, 2)})
    with pytest.raises(TypeError, match="ordered dict"):
        fa(torch.rand(1, 8, 4, 4))


def test_parameter_groups_and_staged_freezing():
    model = build_detector("resnet18", attention="dual", placement="layer4.1", fpn_attention="dual", **SMALL)
    groups = parameter_groups(model)
    assert tuple(groups) == DETECTION_GROUPS
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))
    ids = {g: {id(p) for p in ps} for g, ps in groups.items()}
    assert {id(p) for p in model.backbone.fpn.parameters()} == ids["fpn"]
    assert {id(p) for p in model.rpn.parameters()} == ids["rpn"]
    assert {id(p) for p in model.roi_heads.parameters()} == ids["roi_heads"]
    assert {id(p) for p in model.backbone.fpn_attention.parameters()} <= ids["attention"]
    assert {id(p) for p in model.backbone.body.layer1.parameters()} <= ids["early"]
    set_trainable(model, DETECTION_STAGE_GROUPS[0])
    assert not any(p.requires_grad for g in ("late", "early") for p in groups[g])
    assert all(p.requires_grad for g in DETECTION_STAGE_GROUPS[0] for p in groups[g])
    with pytest.raises(ValueError, match="unknown parameter group"):
        set_trainable(model, ["head"])


def test_weights_backbone_and_detector_weights_from_local_files(tmp_path):
    torch.manual_seed(1)
    trunk = build_classifier("resnet18", num_classes=7)
    torch.save(trunk.state_dict(), tmp_path / "trunk.pt")
    det = build_detector("resnet18", weights_backbone=tmp_path / "trunk.pt", **SMALL)
    torch.testing.assert_close(det.backbone.body.layer2[0].conv1.weight, trunk.layer2[0].conv1.weight)
    bn = det.backbone.body.layer2[0].bn1
    assert isinstance(bn, FrozenBatchNorm2d) and det.sca_config["frozen_bn"]  # torchvision's choice
    torch.testing.assert_close(bn.running_var, trunk.layer2[0].bn1.running_var)

    torch.save(det.state_dict(), tmp_path / "det.pt")
    again = build_detector("resnet18", attention="dual", placement="layer3.1", fpn_attention="dual",
                           weights=tmp_path / "det.pt", **SMALL)
    torch.testing.assert_close(again.rpn.head.conv[0][0].weight, det.rpn.head.conv[0][0].weight)
    torch.testing.assert_close(again.roi_heads.box_predictor.cls_score.weight, det.roi_heads.box_predictor.cls_score.weight)
    other = build_detector("resnet18", weights=tmp_path / "det.pt", num_classes=5, **SMALL)  # new predictor
    assert other.roi_heads.box_predictor.cls_score.out_features == 5
    torch.testing.assert_close(other.backbone.fpn.layer_blocks[0][0].weight, det.backbone.fpn.layer_blocks[0][0].weight)
    with pytest.raises(ValueError, match="do not match a plain mobilenet_v3_small"):
        build_detector("mobilenet_v3_small", weights=tmp_path / "det.pt", **SMALL)
    torch.save(again.state_dict(), tmp_path / "with-attention.pt")
    with pytest.raises(ValueError, match="looks like a detector WITH attention"):
        build_detector("resnet18", weights=tmp_path / "with-attention.pt", **SMALL)
    with pytest.raises(FileNotFoundError, match="not found"):
        build_detector("resnet18", weights=tmp_path / "missing.pt")


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="unknown detector backbone 'vgg16'"):
        build_detector("vgg16")
    with pytest.raises(ValueError, match="unknown fpn_attention 'sse'"):
        build_detector("resnet18", fpn_attention="sse")
    with pytest.raises(ValueError, match="attention=None"):
        build_detector("resnet18", placement="layer3.1")
    with pytest.raises(ValueError, match="no attention"):
        build_detector("resnet18", reduction=4)
    with pytest.raises(ValueError, match="one size per pyramid level"):
        build_detector("resnet18", anchor_sizes=(16, 32))


def test_detector_attention_maps_crop_the_padding_and_name_every_pyramid_level():
    from sca_lib.attention import DualAttention
    from sca_lib.maps import detector_attention_maps

    torch.manual_seed(0)
    det = build_detector("mobilenet_v3_small", attention="dual", fpn_attention="dual", min_size=64, max_size=96)
    images = [torch.rand(3, 40, 80), torch.rand(3, 60, 40)]  # resized to 48 x 96 and 96 x 64, padded to 96 x 96

    def ramp(axis):  # a spatial gate that is the cell's position along one axis of the padded batch, 0 -> 1
        def weights(x):
            n, _, h, w = x.shape
            r = torch.linspace(0, 1, w if axis == "x" else h)
            r = r.view(1, 1, 1, w) if axis == "x" else r.view(1, 1, h, 1)
            return r.expand(n, 1, h, w)
        return weights

    for axis in ("x", "y"):
        for m in det.modules():
            if isinstance(m, DualAttention):
                m.spatial.weights = ramp(axis)
        maps = detector_attention_maps(det, images)
        assert set(maps) == {"backbone.body.12.1", "backbone.fpn_attention.attn[0]",
                             "backbone.fpn_attention.attn[1]", "backbone.fpn_attention.attn[pool]"}
        for name, m in maps.items():
            a, b = m["spatial"]
            assert a.shape == (40, 80) and b.shape == (60, 40), name
            if axis == "x":  # the tall image was padded on the right: its right edge sits at 64/96 of the batch
                assert float(a[:, -1].mean()) > 0.85 and abs(float(b[:, -1].mean()) - 64 / 96) < 0.2, name
            else:            # the wide image was padded below: its bottom edge sits at 48/96
                assert float(b[-1].mean()) > 0.85 and abs(float(a[-1].mean()) - 48 / 96) < 0.2, name
    assert maps["backbone.fpn_attention.attn[0]"]["grid"][0] > maps["backbone.fpn_attention.attn[pool]"]["grid"][0]
    with pytest.raises(ValueError, match="list of \\(3, H, W\\) tensors"):
        detector_attention_maps(det, torch.rand(2, 3, 40, 40))
