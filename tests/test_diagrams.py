"""placement_diagram: the chain of units, the shapes under them and the highlighted attention agree with
the placement table, with build_classifier and with a real forward."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

import sca_lib  # noqa: E402
from sca_lib.diagrams import backbone_units, placement_layout  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _patches(ax, prefix):
    """gid -> x of every patch whose gid starts with prefix, in drawing order."""
    return {p.get_gid(): p.get_x() for p in ax.patches if (p.get_gid() or "").startswith(prefix)}


def _chain(ax):
    """The gids of the chain's boxes (units, inserts, replaced blocks), left to right."""
    boxes = [p for p in ax.patches if (p.get_gid() or "").split(":")[0] in ("unit", "insert", "replace_block")]
    return [p.get_gid() for p in sorted(boxes, key=lambda p: p.get_x())]


def _follows(chain, gid):
    k = chain.index(gid)
    return chain[k - 1], chain[k + 1]


def test_vgg16_default_sits_after_conv5_3_and_article_slice_after_conv5_2():
    chain = _chain(sca_lib.placement_diagram("vgg16"))
    assert [g for g in chain if g.startswith("insert:")] == ["insert:after_conv5_3"]
    assert _follows(chain, "insert:after_conv5_3") == ("unit:conv5_3", "unit:pool5")
    assert chain[0] == "unit:conv1_1" and chain[-1] == "unit:head" and len(chain) == 13 + 5 + 1 + 1

    chain = _chain(sca_lib.placement_diagram("vgg16", "article_slice"))
    assert _follows(chain, "insert:article_slice") == ("unit:conv5_2", "unit:conv5_3")
    # article_slice is after_conv5_2 under another name
    same = [(b.kind, b.name, b.shape) for b in placement_layout("vgg16", "after_conv5_2")]
    assert [(b.kind, b.name, b.shape) for b in placement_layout("vgg16", "article_slice")] == same


@pytest.mark.parametrize("backbone,placement", [
    ("vgg16", "after_conv5_3"), ("vgg16", "article_slice"), ("vgg16", "after_pool4"),
    ("resnet50", "after_layer3"), ("mobilenet_v3_large", "after_features.16"), ("mobilenet_v3_small", "after_features.3"),
])
def test_an_inserted_box_follows_the_unit_that_build_classifier_inserts_after(backbone, placement):
    with torch.device("meta"):  # structure only
        model = sca_lib.build_classifier(backbone, "dual", placement=placement)
    container, index = model.sca_config["modules"][placement].rsplit(".", 1)
    before = f"{container}.{int(index) - 1}"  # the module just before the new one, same index in the plain model
    unit = next(u for u in backbone_units(backbone) if any(before == p or before.startswith(p + ".") for p in u.paths))
    chain = _chain(sca_lib.placement_diagram(backbone, placement))
    assert _follows(chain, f"insert:{placement}")[0] == f"unit:{unit.name}"


def test_resnet50_detection_replaces_exactly_its_7_blocks():
    ax = sca_lib.placement_diagram("resnet50", "detection")
    replaced = [g for g in _chain(ax) if g.startswith("replace_block:")]
    expected = ["layer3.1", "layer3.2", "layer3.3", "layer3.4", "layer3.5", "layer4.1", "layer4.2"]
    assert replaced == [f"replace_block:{n}" for n in expected]
    assert not _patches(ax, "insert:") and not _patches(ax, "inside_block:")
    assert {"unit:layer3.0", "unit:layer4.0"} <= set(_chain(ax))  # they change shape and stay
    labels = [t.get_text() for t in ax.texts]
    assert sum("AttnResBlock" in t for t in labels) == 7
    assert "'detection' = 7 places" in ax.get_title()
    with torch.device("meta"):
        model = sca_lib.build_classifier("resnet50", "dual", placement="detection")
    assert sorted(model.sca_config["modules"].values()) == expected


def test_the_default_of_resnet50_recolours_layer4_1_and_inside_is_a_marker_in_the_block():
    chain = _chain(sca_lib.placement_diagram("resnet50"))
    assert [g for g in chain if not g.startswith("unit:")] == ["replace_block:layer4.1"]
    assert _follows(chain, "replace_block:layer4.1") == ("unit:layer4.0", "unit:layer4.2")

    ax = sca_lib.placement_diagram("resnet50", "layer4.1.inside")
    assert all(g.startswith("unit:") for g in _chain(ax)), "an inside placement adds no box"
    (marker,) = _patches(ax, "inside_block:").items()
    assert marker[0] == "inside_block:layer4.1.inside"
    block = next(p for p in ax.patches if p.get_gid() == "unit:layer4.1")
    assert block.get_x() < marker[1] < block.get_x() + block.get_width()


def test_replace_se_marks_the_eight_blocks_with_se():
    ax = sca_lib.placement_diagram("mobilenet_v3_large", "replace_se")
    markers = _patches(ax, "replace_se:")
    units = {g: p for p in ax.patches if (g := p.get_gid() or "").startswith("unit:")}
    inside = sorted(next(g for g, p in units.items() if p.get_x() < x < p.get_x() + p.get_width())
                    for x in markers.values())
    mnv3 = torchvision.models.mobilenet_v3_large(weights=None)
    with_se = sorted(f"unit:features.{i}" for i, b in enumerate(mnv3.features)
                     if any(isinstance(m, torchvision.ops.SqueezeExcitation) for m in b.modules()))
    assert len(markers) == 8 and inside == with_se
    assert all(g.startswith("unit:") for g in _chain(ax))


def _real_unit_shapes(backbone, size):
    """(C, H, W) after every unit, from a real forward written independently of sca_lib.diagrams."""
    model = torchvision.models.get_model(backbone, weights=None).eval()
    x, shapes = torch.randn(1, 3, size, size), []
    with torch.no_grad():
        if backbone == "vgg16":
            for m in model.features:
                x = m(x)
                if isinstance(m, (nn.ReLU, nn.MaxPool2d)):
                    shapes.append(tuple(x.shape[1:]))
        elif backbone.startswith("resnet"):
            x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
            shapes.append(tuple(x.shape[1:]))
            for s in range(1, 5):
                for block in getattr(model, f"layer{s}"):
                    x = block(x)
                    shapes.append(tuple(x.shape[1:]))
        else:
            for m in model.features:
                x = m(x)
                shapes.append(tuple(x.shape[1:]))
    return shapes


@pytest.mark.parametrize("backbone,size", [("vgg16", 64), ("resnet18", 96), ("mobilenet_v3_small", 64)])
def test_the_shapes_shown_are_those_of_a_real_forward(backbone, size):
    real = _real_unit_shapes(backbone, size)
    boxes = [b for b in placement_layout(backbone, image_size=size) if b.kind in ("unit", "replace_block")]
    assert [b.shape for b in boxes] == real
    ax = sca_lib.placement_diagram(backbone, image_size=size)
    shown = [t.get_text() for t in sorted((t for t in ax.texts if (t.get_gid() or "").startswith("shape:")),
                                          key=lambda t: t.get_position()[0])]
    changes = [s for k, s in enumerate(real) if k == 0 or s != real[k - 1]]
    assert shown == ["×".join(map(str, s)) for s in changes]  # written once, where the shape changes
    assert f"{size}×{size}" in ax.get_title()


def test_the_shapes_at_224_are_the_notebooks_ones():
    units = {u.name: u.shape for u in backbone_units("vgg16")}
    assert units["conv5_3"] == (512, 14, 14) and units["pool5"] == (512, 7, 7) and units["head"] is None
    units = {u.name: u.shape for u in backbone_units("resnet50")}
    assert units["layer4.1"] == (2048, 7, 7) and units["stem"] == (64, 56, 56)
    assert {u.name: u.shape for u in backbone_units("mobilenet_v3_large")}["features.16"] == (960, 7, 7)


def test_bad_backbone_placement_or_size_raise_the_librarys_errors():
    with pytest.raises(ValueError, match="unknown backbone 'vgg19'; expected one of vgg16, resnet50"):
        sca_lib.placement_diagram("vgg19")
    with pytest.raises(ValueError, match=r"unknown placement 'after_conv6_1' for vgg16; valid ones are listed by "
                                         r"list_placements\('vgg16'\)"):
        sca_lib.placement_diagram("vgg16", "after_conv6_1")
    with pytest.raises(ValueError, match=r"not valid for resnet50.*Use 'layer4.0.inside'.*'after_layer4'"):
        sca_lib.placement_diagram("resnet50", "layer4.0")
    with pytest.raises(ValueError, match="both replaces a block and inserts inside it"):
        sca_lib.placement_diagram("resnet18", ["layer4.1", "layer4.1.inside"])
    with pytest.raises(ValueError) as from_diagram:
        sca_lib.placement_diagram("resnet18", "layer9.1")
    with pytest.raises(ValueError) as from_builder:
        sca_lib.build_classifier("resnet18", "dual", placement="layer9.1")
    assert str(from_diagram.value) == str(from_builder.value)
    with pytest.raises(ValueError, match="image_size 16 is too small for vgg16"):
        sca_lib.placement_diagram("vgg16", image_size=16)
    with pytest.raises(ValueError, match="positive int"):
        sca_lib.placement_diagram("vgg16", image_size=0)


def test_title_legend_and_axes():
    ax = sca_lib.placement_diagram("mobilenet_v3_large")
    assert "mobilenet_v3_large" in ax.get_title() and "'after_features.16' (default)" in ax.get_title()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["backbone unit (kept)", "classification head (new)", "attention module inserted (new)"]
    assert ax.figure.get_figwidth() > 8  # 17 blocks + head + the module: wider than the default figure

    fig, axes = plt.subplots(1, 2)
    assert sca_lib.placement_diagram("resnet18", ["layer3.1", "after_layer4"], ax=axes[1]) is axes[1]
    assert not axes[0].patches and len(plt.get_fignums()) == 2  # drew on the given Axes, made no figure
    legend = [t.get_text() for t in axes[1].get_legend().get_texts()]
    assert "block replaced by a new AttnResBlock" in legend and "attention module inserted (new)" in legend
    assert "'layer3.1', 'after_layer4'" in axes[1].get_title() and "(default)" not in axes[1].get_title()


# --- module_diagram: inside the module ---------------------------------------------------------

def _texts(ax):
    return [t.get_text() for t in ax.texts]


def test_the_module_diagram_reads_widths_layers_and_fusion_from_the_module():
    from sca_lib.diagrams import module_diagram, module_steps

    ax = module_diagram(sca_lib.DualAttention(512))  # reduction 8: a 64-wide bottleneck
    texts = _texts(ax)
    assert "1×1 conv 512→64" in texts and "1×1 conv 64→512" in texts and "ReLU" in texts
    assert "c: 512×1×1" in texts and "s: 1×H×W" in texts and "y = x ⊙ c ⊙ s" in texts
    assert {p.get_gid() for p in ax.patches} >= {"input", "channel:4", "spatial:1", "output:0"}
    lite = module_steps(sca_lib.create_attention("lite", 960, alpha=0.3, beta=0.7, drop_rate=0.1))
    assert lite["channel"][1][0] == "1×1 conv 960→60" and lite["channel"][2][0] == "hard-swish"
    assert lite["channel"][-1][0] == "hard-sigmoid\nstrength β=0.7" and "α=0.3" in lite["spatial"][-1][0]
    assert lite["output"][-1][0] == "channel dropout\np=0.1"
    assert "2·σ (sigmoid)" == module_steps(sca_lib.DualAttention(64, identity_init=True))["channel"][-1][0]


def test_the_module_diagram_leaves_out_a_missing_path_and_names_the_fusion_rule():
    from sca_lib.diagrams import module_diagram, module_steps

    channel_only = module_steps(sca_lib.create_attention("channel", 64))
    assert "spatial" not in channel_only and channel_only["output"][0][0] == "y = x ⊙ c"
    assert not [p for p in module_diagram(sca_lib.create_attention("spatial", 64)).patches
                if (p.get_gid() or "").startswith("channel:")]
    assert module_steps(sca_lib.create_attention("dual_add", 64))["output"][0][0] == "y = x ⊙ c\n+ x ⊙ s"
    assert module_steps(sca_lib.create_attention("dual_seq", 64))["spatial"][0][0] == "1×1 conv 64→1\non x × c"


def test_the_module_diagram_refuses_other_modules_and_says_what_it_draws():
    from sca_lib.diagrams import module_diagram

    with pytest.raises(TypeError, match="draws a DualAttention .* got CBAM"):
        module_diagram(sca_lib.create_attention("cbam", 64))
