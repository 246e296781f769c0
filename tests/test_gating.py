"""The attention modules' fast path (sca_lib.gating) against their reference form."""

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from sca_lib.attention import DualAttention, create_attention, list_attentions
from sca_lib.gating import apply_layer, channel_mlp, fast_path, gate_product, project_channels, reference_gating

FORMATS = {"cf": torch.contiguous_format, "cl": torch.channels_last}


def _run(module, x, grad, reference):
    """Output, input gradient and parameter gradients of one forward + backward."""
    module.zero_grad(set_to_none=True)
    xx = x.detach().clone().requires_grad_()
    torch.manual_seed(1)  # the same dropout mask, if any
    with reference_gating(reference):
        out = module(xx)
    out.backward(grad)
    return out.detach(), xx.grad, {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list_attentions())
def test_fast_path_equals_reference_for_every_module(name, fmt):
    torch.manual_seed(0)
    module = create_attention(name, 32)
    x = torch.randn(3, 32, 6, 5).contiguous(memory_format=FORMATS[fmt])
    grad = torch.randn(3, 32, 6, 5)
    for training in (True, False):
        module.train(training)
        out, gx, gp = _run(module, x, grad, reference=False)
        ref_out, ref_gx, ref_gp = _run(module, x, grad, reference=True)
        torch.testing.assert_close(out, ref_out)
        torch.testing.assert_close(gx, ref_gx)
        assert gp.keys() == ref_gp.keys()
        for key in gp:
            torch.testing.assert_close(gp[key], ref_gp[key], msg=lambda m: f"{name} {key}: {m}")


@pytest.mark.parametrize("kwargs", [dict(strength="classification"), dict(identity_init=True),
                                    dict(fusion="add", alpha=0.4), dict(fusion="sequential", beta=0.5),
                                    dict(drop_rate=0.3)])
def test_fast_path_equals_reference_with_settings(kwargs):
    torch.manual_seed(0)
    module = DualAttention(16, 4, **kwargs).train()
    for m in module.modules():  # move identity_init's zeroed layers off zero so the gates matter
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.2)
    x, grad = torch.randn(2, 16, 7, 7), torch.randn(2, 16, 7, 7)
    fast, ref = _run(module, x, grad, False), _run(module, x, grad, True)
    for a, b in zip(fast[:2], ref[:2]):
        torch.testing.assert_close(a, b)
    for key in fast[2]:
        torch.testing.assert_close(fast[2][key], ref[2][key])


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_the_dual_module_takes_the_fused_product_only_when_it_applies():
    module = DualAttention(8, 2)
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    assert type(module(x).grad_fn).__name__ == "_GateProductBackward"
    with reference_gating():
        assert type(module(x).grad_fn).__name__ == "MulBackward0"
    assert not fast_path(x[:, :, 1:])  # neither layout: the reference form
    assert type(module(x[:, :, 1:]).grad_fn).__name__ == "MulBackward0"
    traced = torch.jit.trace(module, torch.randn(2, 8, 5, 5))  # tracing (fvcore's FLOP count) sees the reference ops
    assert "PythonOp" not in str(traced.graph)
    assert not fast_path(torch.randn(8, 5, 5))


def test_under_torch_compile_channels_last_takes_the_reference_form(monkeypatch):
    x = torch.randn(2, 8, 5, 5)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert fast_path(x) and not fast_path(x.contiguous(memory_format=torch.channels_last))


def test_frozen_input_gets_gate_gradients_only():
    torch.manual_seed(0)
    module = DualAttention(8, 2)
    x = torch.randn(2, 8, 4, 4)  # no grad: a frozen backbone's features
    grads = []
    for reference in (False, True):
        module.zero_grad(set_to_none=True)
        with reference_gating(reference):
            module(x).square().sum().backward()
        grads.append({n: p.grad for n, p in module.named_parameters()})
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shapes", [((3, 4, 1, 1), (3, 1, 5, 6)),  # channel x spatial gate
                                    ((3, 4, 5, 1), (3, 4, 1, 6)),  # row x column gate
                                    ((1, 4, 1, 1), (3, 4, 5, 6))])  # anything else that broadcasts
def test_gate_product_gradients_match_finite_differences(shapes, fmt):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64).contiguous(memory_format=FORMATS[fmt]).requires_grad_()
    a, b = (torch.rand(s, dtype=torch.float64, requires_grad=True) for s in shapes)
    torch.testing.assert_close(gate_product(x, a, b), x * a * b)
    assert torch.autograd.gradcheck(gate_product, (x, a, b))


@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float64, torch.float32),
                                    (torch.float64, torch.float32, torch.float32),
                                    (torch.float32, torch.float32, torch.float64)])
def test_gate_product_promotes_mixed_dtypes_as_the_expression_does(dtypes):
    """Under autocast a gate can come out in another precision than the map: same dtype, values, gradients."""
    torch.manual_seed(0)
    shapes = ((2, 3, 4, 5), (2, 3, 1, 1), (2, 1, 4, 5))
    inputs = [torch.randn(s, dtype=d, requires_grad=True) for s, d in zip(shapes, dtypes)]
    grad = torch.randn(shapes[0], dtype=torch.float64)
    out = gate_product(*inputs)
    ref = inputs[0] * inputs[1] * inputs[2]
    assert out.dtype == ref.dtype == torch.float64
    got = torch.autograd.grad(out, inputs, grad)
    want = torch.autograd.grad(ref, inputs, grad)
    for g, w, t in zip(got, want, inputs):
        assert g.dtype == t.dtype
        torch.testing.assert_close(g, w)
    with torch.no_grad():
        torch.testing.assert_close(gate_product(*inputs), ref)


def test_gate_product_saves_less_than_the_expression():
    """The backward pass keeps x and the two gates, not the full-size intermediate x * a."""
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    a, b = torch.rand(2, 16, 1, 1, requires_grad=True), torch.rand(2, 1, 8, 8, requires_grad=True)

    def saved_numel(fn):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            fn()
        return sum(sizes)

    assert saved_numel(lambda: gate_product(x, a, b)) == x.numel() + a.numel() + b.numel()
    assert saved_numel(lambda: x * a * b) > 2 * x.numel()


def test_gate_product_refuses_gates_that_do_not_broadcast():
    with pytest.raises(ValueError, match=r"broadcast to x's shape \(2, 4, 3, 3\)"):
        gate_product(torch.randn(2, 4, 3, 3), torch.rand(2, 4, 1, 1), torch.rand(2, 1, 3, 4))


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_matrix_forms_equal_the_convolutions(fmt):
    torch.manual_seed(0)
    x = torch.randn(2, 12, 5, 4).contiguous(memory_format=FORMATS[fmt])
    for bias in (True, False):
        conv = nn.Conv2d(12, 1, 1, bias=bias)
        torch.testing.assert_close(project_channels(x, conv), conv(x))
        with torch.no_grad():
            torch.testing.assert_close(project_channels(x, conv), conv(x))
    fc1, fc2 = nn.Conv2d(12, 3, 1), nn.Conv2d(3, 12, 1)
    pooled = x.mean((2, 3), keepdim=True)
    torch.testing.assert_close(channel_mlp(pooled, fc1, nn.ReLU(), fc2), fc2(torch.relu(fc1(pooled))).flatten(1))


def test_second_derivatives_forward_mode_and_torch_func_work_through_the_product():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    a = torch.rand(2, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.rand(2, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(gate_product, (x, a, b))
    with torch.autograd.forward_ad.dual_level():
        tangent = torch.randn_like(a)
        out = gate_product(x, torch.autograd.forward_ad.make_dual(a, tangent), b)
        torch.testing.assert_close(torch.autograd.forward_ad.unpack_dual(out).tangent, x * tangent * b)
    jac = torch.func.jacrev(lambda g: gate_product(x.detach(), g, b.detach()))(a.detach())
    torch.testing.assert_close(jac, torch.func.jacrev(lambda g: x.detach() * g * b.detach())(a.detach()))
    # a gradient penalty through the whole module, as the reference form computes it
    module = DualAttention(3, 1).double()
    penalties = []
    for reference in (False, True):
        with reference_gating(reference):
            (gx,) = torch.autograd.grad(module(x).square().sum(), x, create_graph=True)
            penalties.append(torch.autograd.grad(gx.square().sum(), module.channel.fc1.weight)[0])
    torch.testing.assert_close(penalties[0], penalties[1])


def test_gates_with_fewer_dimensions_and_empty_maps():
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    a, b = torch.rand(4, 1, 1, requires_grad=True), torch.rand(3, requires_grad=True)
    gate_product(x, a, b).sum().backward()
    torch.testing.assert_close(a.grad, (x * b).sum((0, 2, 3), keepdim=True)[0].detach())
    assert not fast_path(torch.randn(2, 8, 0, 5))  # empty maps: the reference form (and its errors)


def test_hooked_pruned_or_subclassed_layers_are_called_not_bypassed():
    torch.manual_seed(0)
    module = DualAttention(8, 2)
    x = torch.randn(2, 8, 5, 5)
    seen = []
    handle = module.channel.fc1.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    module(x)
    assert seen == [(2, 4, 1, 1)]  # the reference form ran, so the hook saw its call
    handle.remove()
    prune.l1_unstructured(module.spatial.conv, "weight", amount=0.5)
    for _ in range(2):  # a pruned layer recomputes its weight in a pre-hook on every call
        module(x).sum().backward()
    with reference_gating():
        ref = module(x)
    torch.testing.assert_close(module(x), ref)


@pytest.mark.parametrize("layer", [nn.ReLU(), nn.ReLU(inplace=True), nn.Hardswish(), nn.Sigmoid(), nn.Hardsigmoid(),
                                   nn.Hardsigmoid(inplace=True), nn.SiLU(), nn.Tanh(), nn.Identity()])
def test_apply_layer_gives_the_layers_numbers(layer):
    t = torch.randn(3, 7) * 4
    torch.testing.assert_close(apply_layer(layer, t.clone()), layer(t.clone()), rtol=0, atol=0)


def test_plain_activation_and_gate_layers_run_as_functions_and_hooked_ones_as_modules(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(2, 32, 5, 5)
    module = create_attention("lite", 32)
    ref = module(x)

    def refuse(self, t):
        raise AssertionError(f"{type(self).__name__} was called as a module")

    for cls in (nn.Hardswish, nn.Hardsigmoid, nn.Identity):
        monkeypatch.setattr(cls, "forward", refuse)
    torch.testing.assert_close(module(x), ref, rtol=0, atol=0)  # the fast path calls none of them
    with reference_gating(), pytest.raises(AssertionError, match="called as a module"):
        module(x)
    monkeypatch.undo()
    calls = []
    module.channel.act.register_forward_pre_hook(lambda m, i: calls.append(("act", i[0].dim())))
    module.spatial.gate.register_forward_hook(lambda m, i, o: calls.append("spatial gate"))
    module.dropout.register_forward_hook(lambda m, i, o: calls.append("dropout"))
    torch.testing.assert_close(module(x), ref, rtol=0, atol=0)
    assert calls == [("act", 4), "spatial gate", "dropout"]  # hooked layers are called, on the maps they expect


def test_float16_pooling_does_not_overflow_and_layers_see_4d_maps():
    x = torch.full((1, 8, 128, 128), 8.0, dtype=torch.float16, requires_grad=True)  # sum 131072 > 65504
    channel = DualAttention(8, 2, paths="channel").half()
    out = channel(x)
    assert torch.isfinite(out).all()
    with reference_gating():
        torch.testing.assert_close(out, channel(x))
    shapes = []

    class Shape(nn.ReLU):
        def forward(self, t):
            shapes.append(t.dim())
            return super().forward(t)

    DualAttention(8, 2, act_layer=Shape, gate_layer=nn.Sigmoid)(torch.randn(2, 8, 4, 4))
    assert shapes == [4]


@pytest.mark.parametrize("fmt", FORMATS)
def test_torch_compile_traces_each_module_in_one_graph(fmt):
    """No graph break (``fullgraph=True``) in either layout, and the compiled module computes the same."""
    torch._dynamo.reset()
    for name in ("dual", "cbam", "coord"):
        module = create_attention(name, 32)
        x = torch.randn(2, 32, 5, 5).contiguous(memory_format=FORMATS[fmt]).requires_grad_()
        compiled = torch.compile(module, fullgraph=True, backend="eager")  # dynamo's tracing, no code generation
        out = compiled(x)
        out.sum().backward()
        with reference_gating():
            torch.testing.assert_close(out, module(x))


def test_sca_gating_reference_switches_the_fast_path_off_for_a_whole_process():
    import subprocess
    import sys

    code = "import torch, sca_lib.gating as g; print(g.fast_path(torch.randn(1, 2, 3, 3)))"
    for value, expected in (("reference", "False"), ("fast", "True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**__import__("os").environ, "SCA_GATING": value})
        assert out.stdout.strip() == expected, out.stderr
