"""Tests for sca_lib.attention against an independent reference of the article's claim C1."""

import pytest
import torch
from torch import nn

import sca_lib
from sca_lib.attention import (
    AttentionModule,
    ATTENTION_TYPES,
    PATHS,
    STRENGTHS,
    AttnResBlock,
    ChannelAttention,
    DualAttention,
    LiteDualAttention,
    SpatialAttention,
    create_attention,
    init_attention_,
    attention_modules,
    default_reduction,
    is_attention,
    list_attentions,
)
from sca_lib.maps import record_attention


class ArticleDualAttention(nn.Module):
    """The article's code (C1), verbatim apart from formatting: the reference implementation."""

    def __init__(self, in_channels):
        super().__init__()
        self.channel_att = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, in_channels // 8, 1),
            nn.ReLU(),
            nn.Conv2d(in_channels // 8, in_channels, 1),
            nn.Sigmoid(),
        )
        self.spatial_att = nn.Sequential(nn.Conv2d(in_channels, 1, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.channel_att(x) * self.spatial_att(x)


def copy_from_article(ref: ArticleDualAttention, mod: DualAttention) -> None:
    with torch.no_grad():
        mod.channel.fc1.weight.copy_(ref.channel_att[1].weight)
        mod.channel.fc1.bias.copy_(ref.channel_att[1].bias)
        mod.channel.fc2.weight.copy_(ref.channel_att[3].weight)
        mod.channel.fc2.bias.copy_(ref.channel_att[3].bias)
        mod.spatial.conv.weight.copy_(ref.spatial_att[0].weight)
        mod.spatial.conv.bias.copy_(ref.spatial_att[0].bias)


@pytest.fixture
def x():
    torch.manual_seed(0)
    return torch.randn(2, 32, 7, 5)


def test_default_equals_article_reference(x):
    torch.manual_seed(1)
    ref = ArticleDualAttention(32)
    mod = DualAttention(32)
    copy_from_article(ref, mod)
    torch.testing.assert_close(mod(x), ref(x))


def test_parameter_count_matches_formula():
    c, r = 512, 8
    expected = (c * (c // r) + c // r) + ((c // r) * c + c) + (c + 1)
    assert expected == 66625
    assert sum(p.numel() for p in DualAttention(512).parameters()) == expected
    assert sum(p.numel() for p in DualAttention(512, paths="channel").parameters()) == expected - (c + 1)
    assert sum(p.numel() for p in DualAttention(512, paths="spatial").parameters()) == c + 1


def test_shape_preserved_and_state_dict_names(x):
    mod = DualAttention(32)
    assert mod(x).shape == x.shape
    assert set(mod.state_dict()) == {
        "channel.fc1.weight", "channel.fc1.bias", "channel.fc2.weight", "channel.fc2.bias",
        "spatial.conv.weight", "spatial.conv.bias",
    }


@pytest.mark.parametrize("paths", ["channel", "spatial"])
def test_single_path_variants_equal_their_building_block(x, paths):
    torch.manual_seed(2)
    mod = DualAttention(32, paths=paths)
    block = mod.channel if paths == "channel" else mod.spatial
    assert (mod.spatial is None) == (paths == "channel")
    assert (mod.channel is None) == (paths == "spatial")
    torch.testing.assert_close(mod(x), block(x))


def test_channel_and_spatial_weights_shapes(x):
    ca, sa = ChannelAttention(32), SpatialAttention(32)
    assert ca.weights(x).shape == (2, 32, 1, 1)
    assert sa.weights(x).shape == (2, 1, 7, 5)
    assert ca(x).shape == sa(x).shape == x.shape


def test_strength_limits(x):
    torch.manual_seed(3)
    full = DualAttention(32)
    one = DualAttention(32, alpha=1.0, beta=1.0)
    zero = DualAttention(32, alpha=0.0, beta=0.0)
    one.load_state_dict(full.state_dict())
    zero.load_state_dict(full.state_dict())
    torch.testing.assert_close(one(x), full(x))
    torch.testing.assert_close(zero(x), x)


def test_strength_formula_and_named_strengths(x):
    torch.manual_seed(4)
    mod = DualAttention(32, strength="detection")
    assert (mod.alpha, mod.beta) == (0.7, 0.5)
    c = mod.channel.weights(x)
    s = mod.spatial.weights(x)
    torch.testing.assert_close(mod(x), x * (0.5 + 0.5 * c) * (0.3 + 0.7 * s))
    for name, ab in STRENGTHS.items():
        m = DualAttention(8, strength=name)
        assert (m.alpha, m.beta) == (ab["alpha"], ab["beta"])


def test_dropout_only_in_training():
    torch.manual_seed(5)
    x = torch.randn(4, 64, 6, 6)
    mod = DualAttention(64, drop_rate=0.5)
    plain = DualAttention(64)
    plain.load_state_dict(mod.state_dict())
    mod.eval()
    plain.eval()
    torch.testing.assert_close(mod(x), plain(x))
    mod.train()
    out = mod(x)
    dropped = (out.abs().sum(dim=(2, 3)) == 0)  # Dropout2d zeroes whole channels
    assert 0 < dropped.float().mean() < 1
    assert isinstance(mod.dropout, nn.Dropout2d) and isinstance(plain.dropout, nn.Identity)


def test_lite_is_a_configuration_of_dual():
    lite = LiteDualAttention(64)
    assert isinstance(lite, DualAttention)
    assert isinstance(lite.channel.act, nn.Hardswish)
    assert isinstance(lite.channel.gate, nn.Hardsigmoid)
    assert isinstance(lite.spatial.gate, nn.Hardsigmoid)
    assert lite.channel.fc1.out_channels == 64 // 16
    dual = DualAttention(64, reduction=16, act_layer=nn.Hardswish, gate_layer=nn.Hardsigmoid)
    dual.load_state_dict(lite.state_dict())
    x = torch.randn(2, 64, 4, 4)
    torch.testing.assert_close(lite(x), dual(x))


def test_identity_init_is_exact_identity_and_still_learns():
    x = torch.randn(2, 16, 5, 5)
    for cls in (DualAttention, LiteDualAttention):
        mod = cls(16, identity_init=True)
        torch.testing.assert_close(mod(x), x)
        mod(x).pow(2).sum().backward()
        assert mod.channel.fc2.weight.grad.abs().sum() > 0
        assert mod.spatial.conv.weight.grad.abs().sum() > 0
    block = AttnResBlock(16, identity_init=True)
    torch.testing.assert_close(block(x), x)


def test_plain_start_scales_features_by_about_a_quarter():
    torch.manual_seed(6)
    x = torch.rand(8, 64, 8, 8)
    mod = DualAttention(64)
    with torch.no_grad():  # zero pre-activations: both sigmoids give 0.5
        for p in mod.parameters():
            p.zero_()
    torch.testing.assert_close(mod(x), 0.25 * x)


ARTICLE = ("channel", "dual", "lite", "lite_channel", "lite_spatial", "spatial")  # the article's module and paths


def test_gradients_reach_every_parameter():
    x = torch.randn(2, 16, 4, 4, requires_grad=True)
    for name in ARTICLE:
        mod = create_attention(name, 16, reduction=4)
        mod(x).sum().backward()
        for pname, p in mod.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (name, pname)
    block = AttnResBlock(16, reduction=4)
    block(x).sum().backward()
    assert all(p.grad is not None for p in block.parameters())


def test_factory_names_and_kwargs():
    assert set(ARTICLE) <= set(list_attentions())
    assert create_attention("dual", 32).paths == "dual"
    assert create_attention("Channel", 32).paths == "channel"
    assert isinstance(create_attention("lite_spatial", 32), LiteDualAttention)
    assert create_attention("dual", 32, reduction=4).channel.fc1.out_channels == 8
    assert sca_lib.create_attention is create_attention


def test_attn_res_block_matches_formula():
    torch.manual_seed(7)
    x = torch.randn(2, 16, 6, 6)
    block = AttnResBlock(16, attention="dual", reduction=4)
    torch.testing.assert_close(block(x), x + block.conv(block.attn(x)))
    assert block.attn.channel.fc1.out_channels == 4  # the article's unused `reduction` is passed on


def test_init_attention_only_touches_given_module():
    torch.manual_seed(8)
    backbone = nn.Conv2d(3, 16, 3)
    attn = DualAttention(16)
    before = backbone.weight.clone()
    init_attention_(attn)
    assert torch.equal(backbone.weight, before)
    for conv in (attn.channel.fc1, attn.channel.fc2, attn.spatial.conv):
        assert torch.count_nonzero(conv.bias) == 0
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert abs(conv.weight.std().item() - (2.0 / fan_out) ** 0.5) < 0.5 * (2.0 / fan_out) ** 0.5
    ident = DualAttention(16, identity_init=True)
    init_attention_(ident)
    x = torch.randn(1, 16, 3, 3)
    torch.testing.assert_close(ident(x), x)
    with pytest.raises(ValueError, match="nn.Module"):
        init_attention_("not a module")


def test_record_attention_maps_and_no_cost_when_off():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), DualAttention(16), nn.ReLU(), DualAttention(16, paths="channel"))
    x = torch.randn(2, 3, 10, 8)
    model(x)
    assert model[1].last_maps is None
    with record_attention(model) as maps:
        model(x)
    assert maps["1"]["spatial"].shape == (2, 1, 10, 8)
    assert maps["1"]["channel"].shape == (2, 16)
    assert maps["3"]["spatial"] is None and maps["3"]["channel"].shape == (2, 16)
    assert not maps["1"]["spatial"].requires_grad
    assert model[1].record_maps is False and model[1].last_maps is None
    with pytest.raises(ValueError, match="no attention module in Conv2d"):
        with record_attention(nn.Conv2d(3, 3, 1)):
            pass


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: DualAttention(0), "positive int"),
        (lambda: DualAttention(16, reduction=32), "reduction 32 is larger than channels 16"),
        (lambda: DualAttention(16, reduction=0), "positive int"),
        (lambda: DualAttention(16, paths="both"), "unknown paths 'both'; expected one of dual, channel, spatial"),
        (lambda: DualAttention(16, alpha=1.5), r"`alpha` in \[0, 1\], got 1.5"),
        (lambda: DualAttention(16, beta=-0.1), r"`beta` in \[0, 1\], got -0.1"),
        (lambda: DualAttention(16, strength="captioning"), "unknown strength 'captioning'"),
        (lambda: DualAttention(16, strength="detection", alpha=0.2), "either strength"),
        (lambda: DualAttention(16, paths="channel", alpha=0.5), "spatial path"),
        (lambda: DualAttention(16, paths="spatial", beta=0.5), "channel path"),
        (lambda: DualAttention(16, drop_rate=1.0), "drop_rate"),
        (lambda: create_attention("bam", 16), "unknown attention 'bam'; expected one of cbam, channel, coord"),
        (lambda: create_attention("eca", 16, reduction=4), "attention 'eca' takes no reduction \\(or its name fixes it\\); it accepts b, gamma, kernel_size"),
    ],
)
def test_construction_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_forward_errors_name_expected_and_actual():
    mod = DualAttention(512)
    with pytest.raises(ValueError, match=r"expects 512 channels, got 256 \(input shape \(8, 256, 14, 14\)\)"):
        mod(torch.randn(8, 256, 14, 14))
    with pytest.raises(ValueError, match=r"4-D input \(N, C, H, W\), got a 3-D tensor of shape \(512, 14, 14\)"):
        mod(torch.randn(512, 14, 14))
    with pytest.raises(ValueError, match="expects 16 channels, got 8"):
        AttnResBlock(16)(torch.randn(1, 8, 4, 4))


def test_numpy_and_python_numbers_are_accepted():
    np = pytest.importorskip("numpy")
    mod = DualAttention(np.int64(16), np.int64(4), alpha=np.float32(0.5), beta=np.float64(0.25),
                        drop_rate=np.float32(0.1))
    assert (mod.alpha, mod.beta) == (0.5, 0.25) and type(mod.alpha) is float
    assert mod.channels == 16 and mod.channel.fc1.out_channels == 4 and mod.dropout.p == pytest.approx(0.1)
    assert DualAttention(8, alpha=1, beta=0).beta == 0.0  # Python ints are real numbers too
    with pytest.raises(ValueError, match=r"`alpha` in \[0, 1\]"):
        DualAttention(8, alpha=np.float32(1.5))
    with pytest.raises(ValueError, match=r"`alpha` in \[0, 1\]"):
        DualAttention(8, alpha=float("nan"))
    with pytest.raises(ValueError, match=r"`beta` in \[0, 1\]"):
        DualAttention(8, beta=True)
    with pytest.raises(ValueError, match=r"`beta` in \[0, 1\]"):
        DualAttention(8, beta="0.5")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
@pytest.mark.parametrize("build", [lambda: DualAttention(4, 2), lambda: AttnResBlock(4, reduction=2),
                                   lambda: ChannelAttention(4, 2), lambda: SpatialAttention(4)])
def test_integer_inputs_are_refused_naming_the_dtype(build, dtype):
    x = torch.ones(1, 4, 3, 3, dtype=dtype)
    with pytest.raises(TypeError, match=rf"floating-point input .*got dtype {dtype}; convert it with x.float\(\)"):
        build()(x)
    with pytest.raises(TypeError, match="expects a torch.Tensor.*got a list"):
        build()([[1.0]])


def test_attention_identity_and_attention_modules():
    assert ATTENTION_TYPES == (AttentionModule, ChannelAttention, SpatialAttention, AttnResBlock)
    assert all(is_attention(m) for m in (LiteDualAttention(16), AttnResBlock(8), ChannelAttention(8), SpatialAttention(8)))
    assert not is_attention(nn.Conv2d(8, 8, 1)) and not is_attention("dual")
    model = nn.Sequential(nn.Conv2d(3, 8, 1), DualAttention(8), AttnResBlock(8), ChannelAttention(8))
    assert list(attention_modules(model)) == ["1", "2", "3"]  # outermost ones only
    block = AttnResBlock(8)
    assert attention_modules(block) == {"": block}  # the model itself, counted once
    assert attention_modules(nn.Conv2d(3, 3, 1)) == {}


def test_registry_builds_configurations_of_two_classes():
    for name in ARTICLE:
        mod = create_attention(name, 32)
        assert type(mod) is (LiteDualAttention if name.startswith("lite") else DualAttention)
        assert mod.paths == {"lite": "dual"}.get(name, name.replace("lite_", "")) and mod.paths in PATHS
        if mod.channel is not None:
            assert mod.channel.fc1.out_channels == 32 // default_reduction(name)
    assert default_reduction("dual") == 8 and default_reduction("LITE_channel") == 16
    assert "paths='channel'" in repr(create_attention("channel", 8))
    with pytest.raises(ValueError, match="unknown attention 'sse'"):
        default_reduction("sse")


def test_a_float_input_of_another_dtype_is_named():
    import sca_lib

    attn = DualAttention(8)
    with pytest.raises(TypeError, match="torch.float32 weights but got a torch.float64 input"):
        attn(torch.randn(2, 8, 4, 4, dtype=torch.float64))
    model = sca_lib.build_classifier("resnet18", attention="dual", num_classes=3)
    with pytest.raises(TypeError, match="x.to\\(torch.float32\\)"):
        model(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    assert attn.double()(torch.randn(2, 8, 4, 4, dtype=torch.float64)).dtype == torch.float64


def test_attention_maps_in_image_pixels_put_the_peak_where_the_input_has_it():
    from sca_lib import DualAttention, attention_maps, record_attention

    att = DualAttention(4, reduction=2)
    with torch.no_grad():  # spatial gate = sigmoid(sum of channels): it peaks where the input is bright
        att.spatial.conv.weight.fill_(1.0)
        att.spatial.conv.bias.zero_()
    model = nn.Sequential(nn.Identity(), att).train()
    x = torch.zeros(2, 4, 4, 5)
    x[0, :, 0, 0] = 3.0   # image 0: top-left cell
    x[1, :, 3, 4] = 3.0   # image 1: bottom-right cell
    out = attention_maps(model, x, sizes=[(40, 50), (20, 30)])
    assert model.training  # the mode is restored
    m = out["1"]
    assert m["grid"] == (4, 5) and m["channel"].shape == (2, 4)
    s0, s1 = m["spatial"]
    assert s0.shape == (40, 50) and s1.shape == (20, 30) and 0 <= float(s0.min()) <= float(s0.max()) <= 1
    r, c = divmod(int(s0.argmax()), 50)
    assert r < 10 and c < 10            # the top-left cell's share of a 40 x 50 image
    r, c = divmod(int(s1.argmax()), 30)
    assert r >= 15 and c >= 24          # the bottom-right cell's share of a 20 x 30 image
    with record_attention(model) as rec:  # the same gate values, before upsampling
        model.eval()(x)
    ref = torch.nn.functional.interpolate(rec["1"]["spatial"][:1], size=(40, 50), mode="bilinear", align_corners=False)
    torch.testing.assert_close(s0, ref[0, 0])
    with pytest.raises(ValueError, match="one \\(height, width\\) per image"):
        attention_maps(model, x, sizes=[(4, 5)])
    with pytest.raises(ValueError, match="one \\(N, 3, H, W\\) tensor"):
        attention_maps(model, [x[0]])


def test_gradcam_maps_give_one_map_per_positive_class_where_that_class_is():
    """Two classes, each read from its own channel: Grad-CAM (the grad-cam package) of class k must
    peak where channel k is bright, for each positive label of a multi-label image."""
    from sca_lib import gradcam_maps

    class TwoClass(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU())
            self.fc = nn.Linear(2, 2)
            with torch.no_grad():
                self.features[0].weight.copy_(torch.eye(2)[:, :, None, None])
                self.features[0].bias.zero_()
                self.fc.weight.copy_(torch.eye(2))
                self.fc.bias.zero_()

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))

    x = torch.zeros(2, 2, 8, 8)
    x[:, 0, 0:2, 0:2] = 1.0   # class 0 lives top-left
    x[:, 1, 6:8, 6:8] = 1.0   # class 1 lives bottom-right
    model = TwoClass()
    maps = gradcam_maps(model, x, torch.tensor([[1, 1], [0, 1]]), sizes=[(16, 16), (8, 12)])
    assert set(maps[0]) == {0, 1} and set(maps[1]) == {1}   # one map per positive class only
    r, c = divmod(int(maps[0][0].argmax()), 16)
    assert r < 4 and c < 4                                  # class 0: top-left quarter of 16 x 16
    r, c = divmod(int(maps[0][1].argmax()), 16)
    assert r >= 12 and c >= 12                              # class 1: bottom-right
    assert maps[1][1].shape == (8, 12) and float(maps[1][1].max()) == pytest.approx(1.0, abs=0.05)
    assert gradcam_maps(model, x, [[0], []])[1] == {}       # class lists work too; no positive, no map
    with pytest.raises(ValueError, match="labels must be"):
        gradcam_maps(model, x, torch.ones(3, 2))


def test_plot_overlays_draws_every_box_on_every_panel_and_marks_difficult_ones():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.patches import Rectangle

    from sca_lib.maps import plot_overlays

    image = torch.rand(3, 20, 30)
    target = {"boxes": torch.tensor([[1.0, 2.0, 10.0, 12.0], [15.0, 5.0, 25.0, 18.0]]), "labels": torch.tensor([1, 3]),
              "difficult": torch.tensor([False, True])}
    fig = plot_overlays(image, {"attention": torch.rand(20, 30), "Grad-CAM": torch.rand(20, 30)}, target,
                        classes=["a", "b", "c"])
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["image + boxes", "attention", "Grad-CAM"]
    for ax in panels:
        rects = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert len(rects) == 2 and [r.get_linestyle() for r in rects] == ["-", "--"]
    assert [t.get_text() for t in panels[0].texts] == ["a", "c (difficult)"]
    with pytest.raises(ValueError, match="upsample it to the image first"):
        plot_overlays(image, {"small": torch.rand(4, 6)})
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3)  # into given axes; a flat map is named, not drawn
    plot_overlays(image, {"flat": torch.full((20, 30), 0.25), "cam": torch.rand(20, 30)}, axes=axes, colorbar=False)
    assert len(axes[1].images) == 1 and "flat map" in axes[1].texts[0].get_text()  # the photo only
    assert len(axes[2].images) == 2 and " to " in axes[2].texts[0].get_text()      # photo + map, its range
    with pytest.raises(ValueError, match="axes must hold 2 panels"):
        plot_overlays(image, {"cam": torch.rand(20, 30)}, axes=axes)


def test_channel_profiles_subtract_the_mean_image_per_class():
    from sca_lib.maps import channel_profiles

    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    y = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    t = channel_profiles(w, y, classes=["x", "y", "z"])
    assert list(t.index) == ["x", "y"]  # z has no image
    mean = w.mean(0)
    assert t.loc["x"].tolist() == pytest.approx((w[[0, 2]].mean(0) - mean).tolist())
    assert t.loc["y"].tolist() == pytest.approx((w[[1, 2]].mean(0) - mean).tolist())
    with pytest.raises(ValueError, match="same N images"):
        channel_profiles(w, y[:2])


@pytest.mark.parametrize("name,kwargs", [("dual", {}), ("lite", {}), ("channel", {}), ("spatial", {}), ("dual_seq", {}),
                                         ("se", {}), ("dual", {"strength": "detection", "identity_init": True})])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["CF", "CL"])
def test_inplace_writes_the_same_numbers_into_x_when_no_gradient_is_recorded(name, kwargs, memory_format):
    torch.manual_seed(0)
    module = sca_lib.create_attention(name, 24, **kwargs).eval()
    for p in module.parameters():
        nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 24, 5, 7).contiguous(memory_format=memory_format)
    for no_grad in (torch.no_grad, torch.inference_mode):
        with no_grad():
            module.inplace = False
            ref = module(x)
            module.inplace = True
            x2 = x.clone()
            out = module(x2)
        assert out.data_ptr() == x2.data_ptr() and torch.equal(out, ref), no_grad  # into x, bit for bit
    # a gradient to record: out of place, x untouched, the same output and gradients as inplace=False
    outputs, grads = [], []
    for inplace in (True, False):
        module.inplace = inplace
        module.zero_grad()
        xg = x.clone().requires_grad_()
        out = module(xg)
        assert out.data_ptr() != xg.data_ptr() and torch.equal(xg.detach(), x)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append([xg.grad] + [p.grad for p in module.parameters()])
    assert torch.equal(*outputs)
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_inplace_is_refused_where_x_is_read_again_and_skipped_where_torch_forbids_it():
    for fusion in ("add", "max"):
        with pytest.raises(ValueError, match=f"inplace=True writes the output into x.*fusion='{fusion}'.*'multiply'"):
            DualAttention(16, fusion=fusion, inplace=True)
    with pytest.raises(ValueError, match="AttnResBlock: inplace=True would let the attention overwrite x"):
        sca_lib.AttnResBlock(16, inplace=True)  # x + conv(attention(x)) reads x again
    module = sca_lib.create_attention("dual", 16, inplace=True, drop_rate=0.5).train()
    x = torch.randn(2, 16, 3, 3)
    with torch.no_grad():  # training without a gradient: the dropout too works in place
        assert module(x) is x
    module.eval()
    assert "inplace=True" in repr(module)
    with torch.inference_mode():
        x = torch.randn(2, 16, 3, 3)  # an inference tensor: torch refuses in-place updates outside inference mode
    with torch.no_grad():
        out = module(x)
    assert out.data_ptr() != x.data_ptr() and not torch.equal(out, x)
