"""The attention family: each module against timm (copied weights) or against its paper's equations
written out by hand, and every module at every placement of every backbone."""

import copy

import pytest
import torch
from torch import nn

from sca_lib.attention import (CONTROLS, DESCRIPTIONS, AttnResBlock, DualAttention, attention_settings,
                               create_attention, default_reduction, init_attention_, is_attention, list_attentions)
from sca_lib.backbones import _backbone, _places, build_classifier, list_backbones, normalise_spec
from sca_lib.family import CBAM, ECA, CoordinateAttention, ResidualBottleneck, SCACNNAttention, eca_kernel_size
from sca_lib.maps import record_attention
from sca_lib.placements import apply_placements, resolve_placements
from sca_lib.profile import count_flops
from sca_lib.spec import AttentionSpec

# timm (a development dependency, pyproject's [dev]) is the reference: its layers with our weights copied in
from timm.layers.cbam import CbamModule
from timm.layers.coord_attn import CoordAttn
from timm.layers.eca import EcaModule
from timm.layers.squeeze_excite import SEModule


def _randomise_bn(module: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so a copied BN is really compared."""
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)


#: name -> (timm module for C channels, our state_dict key -> timm's key)
TIMM = {
    "se": (lambda c: SEModule(c, rd_channels=c // 16), lambda k: k.replace("channel.", "")),
    "cbam": (lambda c: CbamModule(c, rd_channels=c // 16, mlp_bias=True),
             lambda k: k.replace("spatial_conv.", "spatial.conv.conv.").replace("spatial_bn.", "spatial.conv.bn.")),
    "eca": (lambda c: EcaModule(c), lambda k: k),
    "coord": (lambda c: CoordAttn(c, rd_channels=max(8, c // 32), bias=True), lambda k: k),
}


def _pair(name, c):
    """Our module (BatchNorm made non-trivial) and timm's with our weights copied in."""
    ours = create_attention(name, c)
    _randomise_bn(ours)
    make, key = TIMM[name]
    ref = make(c)
    ref.load_state_dict({key(k): v for k, v in ours.state_dict().items()})  # strict: every key matched
    return ours, ref


@pytest.mark.parametrize("name", sorted(TIMM))
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_module_equals_timm_with_copied_weights(name, train):
    torch.manual_seed(0)
    ours, ref = _pair(name, 64)
    ours.train(train)
    ref.train(train)
    x = torch.randn(3, 64, 9, 11)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, out_b = ours(xa), ref(xb)
    assert out_a.shape == x.shape
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-6)
    w = torch.randn_like(out_a)
    (out_a * w).sum().backward()
    (out_b * w).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)
    _, key = TIMM[name]
    grads_b = dict(ref.named_parameters())
    for k, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads_b[key(k)].grad, rtol=1e-4, atol=2e-5)
        # in training mode a bias right before BatchNorm has no effect, so only eval asks for a gradient
        assert train or p.grad.abs().sum() > 1e-4, (name, k)


@pytest.mark.parametrize("name", sorted(TIMM))
def test_timm_weights_load_into_ours_and_a_changed_weight_is_seen(name):
    torch.manual_seed(0)
    make, key = TIMM[name]
    ref = make(48)
    _randomise_bn(ref)
    ours = create_attention(name, 48)
    theirs = ref.state_dict()
    ours.load_state_dict({k: theirs[key(k)] for k in ours.state_dict()})  # timm -> ours, every key
    ours.eval(), ref.eval()
    x = torch.randn(2, 48, 6, 5)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        next(p for p in ref.parameters() if p.dim() > 1).mul_(-1.0)  # a difference the comparison must see
    assert not torch.allclose(ours(x), ref(x))


@pytest.mark.parametrize("channels,k", [(16, 3), (64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)])
def test_eca_kernel_size_follows_the_paper_and_timm(channels, k):
    assert eca_kernel_size(channels) == k == ECA(channels).kernel_size == EcaModule(channels).conv.kernel_size[0]


def test_eca_below_eight_channels_follows_the_paper_not_timm():
    assert [eca_kernel_size(c) for c in (2, 4, 6, 7, 8)] == [1, 1, 1, 1, 3]  # int((log2 C + 1) / 2) < 2 below 8
    assert eca_kernel_size(2) == 1 and EcaModule(2).conv.kernel_size[0] == 3  # timm clamps to 3
    with pytest.raises(ValueError, match="gamma must be positive"):
        ECA(16, gamma=0)


def test_cbam_equations_by_hand():
    torch.manual_seed(0)
    m = CBAM(32, reduction=4).eval()
    _randomise_bn(m)
    x = torch.randn(2, 32, 5, 6)
    mlp = lambda v: m.channel.fc2(torch.relu(m.channel.fc1(v)))  # noqa: E731
    mc = torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
    f1 = x * mc
    pooled = torch.cat([f1.mean(1, keepdim=True), f1.amax(1, keepdim=True)], 1)
    ms = torch.sigmoid(m.spatial_bn(nn.functional.conv2d(pooled, m.spatial_conv.weight, padding=3)))
    torch.testing.assert_close(m(x), f1 * ms)
    assert m.spatial_conv.kernel_size == (7, 7) and m.spatial_conv.bias is None
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        CBAM(32, kernel_size=4)


def test_fusion_rules_by_hand():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 5)
    mods = {f: DualAttention(16, 4, fusion=f) for f in ("multiply", "add", "max", "sequential")}
    for m in mods.values():
        m.load_state_dict(mods["multiply"].state_dict())
    c = mods["multiply"].channel.weights(x)
    s = mods["multiply"].spatial.weights(x)
    torch.testing.assert_close(mods["multiply"](x), x * c * s)
    torch.testing.assert_close(mods["add"](x), x * c + x * s)
    torch.testing.assert_close(mods["max"](x), torch.maximum(x * c, x * s))
    y = x * c
    torch.testing.assert_close(mods["sequential"](x), y * mods["multiply"].spatial.weights(y))
    # strengths act on each gate before fusion, pulling it towards 1 (towards 1/2 under add)
    add = DualAttention(16, 4, fusion="add", alpha=0.3, beta=0.6)
    add.load_state_dict(mods["add"].state_dict())
    torch.testing.assert_close(add(x), x * (0.2 + 0.6 * c) + x * (0.35 + 0.3 * s))
    mx = DualAttention(16, 4, fusion="max", alpha=0.3, beta=0.6)
    mx.load_state_dict(mods["max"].state_dict())
    torch.testing.assert_close(mx(x), torch.maximum(x * (0.4 + 0.6 * c), x * (0.7 + 0.3 * s)))
    # the names: scSE is the add rule with r 2, max-out its follow-up; SE is the channel path with r 16
    assert create_attention("scse", 16).fusion == "add" and create_attention("scse", 16).channel.fc1.out_channels == 8
    assert create_attention("scse_max", 16).fusion == "max" and create_attention("dual_seq", 16).fusion == "sequential"
    assert create_attention("se", 64).paths == "channel" and default_reduction("se") == 16
    assert "fusion='add'" in repr(create_attention("dual_add", 8))


@pytest.mark.parametrize("fusion", ["multiply", "add", "max", "sequential"])
def test_identity_init_and_strength_zero_are_the_identity_for_every_fusion(fusion):
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(DualAttention(8, 2, fusion=fusion, identity_init=True)(x), x)
    torch.testing.assert_close(DualAttention(8, 2, fusion=fusion, identity_init=True, strength="detection")(x), x)
    torch.testing.assert_close(DualAttention(8, 2, fusion=fusion, alpha=0.0, beta=0.0)(x), x)


def test_fusion_errors_name_the_fix():
    with pytest.raises(ValueError, match="unknown fusion 'mul'; expected one of multiply, add, max, sequential"):
        DualAttention(8, fusion="mul")
    with pytest.raises(ValueError, match="paths='channel' has one"):
        DualAttention(8, paths="channel", fusion="add")
    with pytest.raises(ValueError, match="attention 'se' takes no paths \\(or its name fixes it\\)"):
        create_attention("se", 16, paths="dual")  # the name fixes what it builds
    with pytest.raises(ValueError, match="attention 'scse' takes no fusion"):
        create_attention("scse", 16, fusion="multiply")
    with pytest.raises(ValueError, match="attention 'lite' takes no foo"):
        create_attention("lite", 16, foo=1)  # **kwargs followed to DualAttention's arguments
    assert create_attention("lite", 32, drop_rate=0.1, strength="detection").alpha == 0.7


def _sca_cnn_literal(m: SCACNNAttention, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The paper's equations with explicit loops over images, locations and channels (slow, plain)."""
    n, c, hh, ww = v.shape
    mloc = hh * ww
    out = torch.empty_like(v)
    ws, bs = m.w_s.weight[:, :, 0, 0], m.w_s.bias  # (k, C), (k,)
    wi = m.w_i.weight[0, :, 0, 0]  # (k,)

    def spatial(V, hq):  # V: (C, m)
        a = torch.stack([torch.tanh(ws @ V[:, j] + bs + m.w_hs.weight @ hq) for j in range(mloc)], 1)  # (k, m)
        e = torch.stack([wi @ a[:, j] for j in range(mloc)])
        alpha = torch.exp(e) / torch.exp(e).sum()
        return alpha * mloc if m.rescale else alpha

    def channel(V, hq):
        vbar = V.mean(1)  # (C,)
        b = torch.stack([torch.tanh(m.w_c * vbar[i] + m.b_c + m.w_hc.weight @ hq) for i in range(c)], 1)  # (k, C)
        e = torch.stack([m.w_i_c @ b[:, i] for i in range(c)])
        beta = torch.exp(e) / torch.exp(e).sum()
        return beta * c if m.rescale else beta

    for i in range(n):
        V = v[i].reshape(c, mloc)
        if m.order == "cs":
            X = V * channel(V, h[i])[:, None]
            X = X * spatial(X, h[i])[None, :]
        else:
            X = V * spatial(V, h[i])[None, :]
            X = X * channel(X, h[i])[:, None]
        out[i] = X.reshape(c, hh, ww)
    return out


@pytest.mark.parametrize("order", ["cs", "sc"])
@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("query", ["context", "learned"])
def test_sca_cnn_equals_the_papers_equations(order, rescale, query):
    torch.manual_seed(0)
    m = SCACNNAttention(12, reduction=3, order=order, query=query, rescale=rescale)
    x = torch.randn(2, 12, 4, 5)
    h = x.mean((2, 3)) if query == "context" else m.query.expand(2, -1)
    torch.testing.assert_close(m(x), _sca_cnn_literal(m, x, h), rtol=1e-5, atol=1e-6)
    # a query from outside (a decoder's state) replaces the module's own
    q = torch.randn(2, 12)
    torch.testing.assert_close(m(x, query=q), _sca_cnn_literal(m, x, q), rtol=1e-5, atol=1e-6)


def test_sca_cnn_softmax_weights_and_the_feature_scale():
    torch.manual_seed(0)
    x = torch.randn(4, 48, 7, 7)
    literal = SCACNNAttention(48, rescale=False)
    kept = SCACNNAttention(48)
    kept.load_state_dict(literal.state_dict())
    with record_attention(literal) as maps:
        out = literal(x)
    assert maps[""]["spatial"].sum((1, 2, 3)) == pytest.approx(torch.ones(4))  # softmax over the 49 locations
    assert maps[""]["channel"].sum(1) == pytest.approx(torch.ones(4))  # and over the 48 channels
    shrink = (out.std() / x.std()).item()
    assert shrink < 5.0 / (49 * 48)  # the paper's form divides the features by about m * C
    ratio = (kept(x).std() / x.std()).item()
    assert 0.3 < ratio < 3.0  # rescaled: the weights average 1
    with record_attention(kept) as maps:
        kept(x)
    assert maps[""]["spatial"].mean().item() == pytest.approx(1.0)
    assert maps[""]["channel"].mean().item() == pytest.approx(1.0)


def test_sca_cnn_gradients_and_errors():
    torch.manual_seed(0)
    for query in ("context", "learned"):
        m = SCACNNAttention(16, reduction=4, query=query)
        m(torch.randn(2, 16, 5, 5)).pow(2).sum().backward()
        for name, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (query, name)
    with pytest.raises(ValueError, match="query must be \\(N, d\\) = \\(2, 16\\), got \\(2, 8\\)"):
        SCACNNAttention(16)(torch.randn(2, 16, 3, 3), query=torch.randn(2, 8))
    with pytest.raises(ValueError, match="unknown order 'cc'"):
        SCACNNAttention(16, order="cc")
    with pytest.raises(ValueError, match="query_dim must be C = 16"):
        SCACNNAttention(16, query_dim=8)
    assert SCACNNAttention(16, query="learned", query_dim=8).query.shape == (8,)
    assert create_attention("sca_cnn_sc", 16).order == "sc"


def test_coordinate_attention_equations_by_hand():
    torch.manual_seed(0)
    m = CoordinateAttention(64).eval()
    _randomise_bn(m)
    x = torch.randn(2, 64, 6, 9)
    zh, zw = x.mean(3, keepdim=True), x.mean(2, keepdim=True)  # (N, C, H, 1), (N, C, 1, W)
    f = lambda z: nn.functional.hardswish(m.bn1(m.conv1(z)))  # noqa: E731  (BN eval: per position alike)
    gh = torch.sigmoid(m.conv_h(f(zh)))
    gw = torch.sigmoid(m.conv_w(f(zw)))
    torch.testing.assert_close(m(x), x * gh * gw, rtol=1e-5, atol=1e-6)
    assert m.conv1.out_channels == 8 and CoordinateAttention(512).conv1.out_channels == 16  # max(8, C // 32)


@pytest.mark.parametrize("channels", [16, 48, 96, 512])
def test_capacity_controls_cost_what_the_dual_module_costs(channels):
    dual = create_attention("dual", channels)
    n_dual = sum(p.numel() for p in dual.parameters())
    assert isinstance(create_attention("matched_flops", channels), ResidualBottleneck)
    n_params = sum(p.numel() for p in create_attention("matched_params", channels).parameters())
    assert abs(n_params - n_dual) <= channels + 1  # the nearest width; one more hidden unit costs 2C + 1
    assert create_attention("matched_params", channels, reduction=4).hidden > create_attention(
        "matched_params", channels).hidden  # a wider dual module, a wider control
    x = torch.randn(2, channels, 7, 7)
    torch.testing.assert_close(create_attention("matched_params", channels)(x), x)  # starts as the identity


def test_the_flops_control_matches_at_the_study_place_and_drifts_elsewhere_as_documented():
    ratio = {}
    for c in (48, 512, 2048):
        size = (1, c, 7, 7)
        ratio[c] = count_flops(create_attention("matched_flops", c), size) / count_flops(create_attention("dual", c), size)
    assert 1.0 < ratio[48] < 1.25  # the family study: 48 channels on 7x7
    assert 0.65 < ratio[512] < 0.85 and 0.25 < ratio[2048] < 0.45  # the per-image MLP it leaves out grows as C^2
    assert set(CONTROLS) <= set(list_attentions())


def test_every_name_is_described_and_maps_are_recorded_where_there_are_gates():
    assert set(DESCRIPTIONS) == set(list_attentions())
    x = torch.randn(2, 32, 6, 6)
    for name in list_attentions():
        m = create_attention(name, 32)
        assert is_attention(m)
        with record_attention(m) as maps:
            m(x)
        got = maps[""]
        if name in CONTROLS:
            assert got == {"channel": None, "spatial": None}
            continue
        assert got["channel"] is None or got["channel"].shape == (2, 32), name
        assert got["spatial"] is None or got["spatial"].shape == (2, 1, 6, 6), name
        assert got["channel"] is not None or got["spatial"] is not None, name


def test_every_name_builds_from_its_spec_with_its_defaults_spelled_out():
    """The training config's path: the spec normalised (default reduction made explicit), then built."""
    for name in list_attentions():
        spec = normalise_spec(AttentionSpec(name), "mobilenet_v3_small")
        assert spec.reduction == default_reduction(name)
        model = build_classifier("mobilenet_v3_small", spec, num_classes=3)
        assert model.sca_config["attention"] == name
    assert create_attention("se", 64, reduction=8).channel.fc1.out_channels == 8  # a name's reduction is a default


def test_a_setting_a_module_does_not_take_is_refused_with_the_ones_it_does():
    with pytest.raises(ValueError, match="attention 'coord' takes no strength \\(or its name fixes it\\); it accepts "
                                         "min_hidden, rd_channels, reduction"):
        create_attention("coord", 32, strength="detection")
    with pytest.raises(ValueError, match="attention 'eca' takes no reduction"):
        build_classifier("resnet18", AttentionSpec("eca", reduction=8), num_classes=3)
    with pytest.raises(ValueError, match="attention 'eca' takes no beta"):  # the strength, not ECA's constant b
        build_classifier("resnet18", AttentionSpec("eca", beta=0.5), num_classes=3)
    assert normalise_spec(AttentionSpec("eca"), "resnet18").reduction is None
    assert attention_settings("eca") == ("b", "gamma", "kernel_size")
    assert "strength" in attention_settings("lite") and "strength" not in attention_settings("cbam")
    assert "paths" not in attention_settings("se") and "reduction" in attention_settings("se")
    assert normalise_spec(AttentionSpec("coord"), "resnet18").reduction == 32


def _compatible_sets(places, names, backbone):
    """The backbone's placements split greedily into sets a single model can hold at once."""
    sets = []
    for name in names:
        for s in sets:
            try:
                resolve_placements(places, s + [name], backbone)
            except ValueError:
                continue
            s.append(name)
            break
        else:
            sets.append([name])
    return sets


@pytest.mark.parametrize("backbone", list_backbones())
def test_every_module_runs_at_every_placement_of_every_backbone(backbone):
    """Each name of the factory at every placement (several per model), forward and backward."""
    torch.manual_seed(0)
    bb = _backbone(backbone)
    plain = build_classifier(backbone, num_classes=3).eval()
    places = _places(bb, plain)
    sets = _compatible_sets(places, [n for n, p in places.items() if p.kind != "invalid"], backbone)
    x = torch.randn(1, 3, 32, 32)  # the last maps are 1x1: the smallest a module must handle
    small = sum(p.numel() for p in plain.parameters()) < 20e6
    for name in list_attentions():
        for names in sets:
            model = copy.deepcopy(plain)
            resolved = resolve_placements(places, names, backbone)
            kw = {"reduction": 2} if default_reduction(name) is not None and places[resolved[0]].channels < 16 else {}
            where = apply_placements(model, places, resolved, name, kw)
            assert len(where) == len(resolved)
            for path in where.values():  # what build_model does to every new module (C8's rule)
                init_attention_(model.get_submodule(path))
            out = model.eval()(x)
            assert out.shape == (1, 3) and torch.isfinite(out).all(), (backbone, name, names)
            if names is sets[0] and small:  # the big ones' backward (3x3 convs at 2048 channels) takes seconds
                out.sum().backward()
                touched = [m for m in model.modules() if is_attention(m)
                           and any(p.grad is not None for p in m.parameters())]
                assert touched, (backbone, name)


@pytest.mark.parametrize("name", ["cbam", "eca", "coord", "sca_cnn", "matched_params", "se"])
def test_attention_residual_blocks_take_every_module(name):
    torch.manual_seed(0)
    x = torch.randn(2, 32, 5, 5)
    block = init_attention_(AttnResBlock(32, attention=name))
    assert block(x).shape == x.shape
    same = AttnResBlock(32, attention=name, identity_init=True)
    torch.testing.assert_close(same(x), x)  # the zero conv makes the block the identity whatever the module


def test_the_family_goes_into_a_detector_trunk_and_onto_its_fpn():
    from sca_lib import build_detector

    torch.manual_seed(0)
    model = build_detector("mobilenet_v3_small", attention="cbam", fpn_attention="eca", num_classes=3).eval()
    assert model.sca_config["attention_kwargs"] == {}  # no C10 strengths for modules that have none
    assert any(isinstance(m, CBAM) for m in model.modules()) and any(isinstance(m, ECA) for m in model.modules())
    with torch.no_grad():
        out = model([torch.rand(3, 96, 96)])
    assert set(out[0]) == {"boxes", "labels", "scores"}
    dual = build_detector("mobilenet_v3_small", attention="dual", fpn_attention="coord", num_classes=3)
    assert dual.sca_config["attention_kwargs"] == {"strength": "detection"}  # the article's module keeps them
