"""sca_lib.fused: the opt-in C++ kernels compute what the fast path computes, are used only where they may
be (inference, float32, CPU, the plain multiplicative dual module), and their absence costs nothing but speed."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

import sca_lib
from sca_lib import fused

SETTINGS = [("dual", {}), ("lite", {}), ("dual", {"strength": "detection"}), ("dual", {"identity_init": True}),
            ("dual", {"drop_rate": 0.1}), ("dual", {"reduction": 4})]


@pytest.fixture(scope="module")
def kernels():
    with fused.fused_kernels(True) as on:
        assert on, f"the fused kernels did not build here: {fused._STATE['error']}"
        yield fused.load()


def _calls(monkeypatch):
    calls = []
    gate = fused.gate
    monkeypatch.setattr(fused, "gate", lambda *a: (calls.append(a[0].shape), gate(*a))[1])
    return calls


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize("name,kwargs", SETTINGS, ids=[f"{n}-{'-'.join(k) or 'default'}" for n, k in SETTINGS])
def test_the_fused_forward_equals_the_fast_path(kernels, monkeypatch, name, kwargs, layout):
    torch.manual_seed(0)
    calls = _calls(monkeypatch)
    for shape in [(2, 64, 7, 9), (3, 40, 5, 5), (1, 128, 1, 1)]:
        module = sca_lib.create_attention(name, shape[1], **kwargs).eval()
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.2)
        x = torch.randn(shape)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            out = module(x)
            with fused.fused_kernels(False):
                ref = module(x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        assert out.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    assert len(calls) == 3  # the kernels ran, once per shape


def test_the_kernels_agree_with_the_expressions_they_replace(kernels):
    torch.manual_seed(1)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(4, 24, 6, 10).contiguous(memory_format=memory_format)
        a, b = torch.rand(4, 24, 1, 1), torch.rand(4, 1, 6, 10)
        assert torch.equal(fused.gate(x, a, b), x * a * b)  # the same operations in the same order: bit for bit
        conv = torch.nn.Conv2d(24, 1, 1)
        pooled, proj = fused.pool_project(x, conv)
        torch.testing.assert_close(pooled, x.mean((2, 3)), rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            torch.testing.assert_close(proj, conv(x), rtol=1e-5, atol=1e-5)


def test_the_kernels_stay_out_where_they_may_not_run(kernels, monkeypatch):
    calls = _calls(monkeypatch)
    module = sca_lib.DualAttention(32).eval()
    x = torch.randn(2, 32, 5, 5)
    out = module(x)  # grad mode and trainable parameters: autograd needs the fast path
    assert out.grad_fn is not None and not calls
    with torch.no_grad():
        module(x.double().float()[:, :, ::2])  # not contiguous
        module.double()(x.double())  # float64
        sca_lib.create_attention("dual_add", 32).eval()(x)  # another fusion rule
        sca_lib.create_attention("channel", 32).eval()(x)  # one path only
        with sca_lib.gating.reference_gating():
            sca_lib.DualAttention(32).eval()(x)  # the reference form
    hooked, seen = sca_lib.DualAttention(32).eval(), []
    hooked.spatial.conv.register_forward_hook(lambda *args: seen.append(1))  # a hook must still fire
    with torch.no_grad():
        hooked(x)
    assert seen and not calls
    with torch.inference_mode():
        sca_lib.DualAttention(32).eval()(x)
    assert len(calls) == 1


def test_without_a_compiler_the_modules_keep_the_fast_path_and_say_why(monkeypatch):
    import torch.utils.cpp_extension as cpp

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(fused, "_STATE", {"enabled": False, "module": None, "error": None})
    monkeypatch.setattr(cpp, "load_inline", no_compiler)
    with pytest.warns(RuntimeWarning, match="could not be built.*C\\+\\+ compiler.*Ninja is required"):
        assert fused.use_fused_kernels(True) is False
    x = torch.randn(2, 16, 4, 4)
    module = sca_lib.DualAttention(16).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not on every call
        out = module(x)
    with torch.no_grad(), sca_lib.gating.reference_gating():
        torch.testing.assert_close(out, module(x))


def test_sca_gating_fused_switches_them_on_for_a_process(kernels):
    code = ("import torch, sca_lib; from sca_lib import fused; assert fused.fused_enabled(); "
            "m = sca_lib.DualAttention(16).eval(); x = torch.randn(1, 16, 3, 3)\n"
            "with torch.no_grad(): y = m(x)\n"
            "with torch.no_grad(), fused.fused_kernels(False): torch.testing.assert_close(y, m(x))\nprint('fused on')")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SCA_GATING": "fused"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "fused on" in done.stdout, done.stderr[-2000:]
