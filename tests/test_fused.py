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
            ("dual", {"drop_rate": 0.1}), ("dual", {"reduction": 4}), ("lite", {"strength": "detection", "identity_init": True}),
            ("dual", {"act_layer": torch.nn.GELU}), ("dual", {"gate_layer": torch.nn.Hardsigmoid})]


@pytest.fixture(scope="module")
def kernels():
    with fused.fused_kernels(True) as on:
        assert on, f"the fused kernels did not build here: {fused._STATE['error']}"
        yield fused.load()


def _calls(monkeypatch, which=("gate", "dual_forward")):
    """Record each call of the kernels' Python entry points (by name)."""
    calls = []
    for name in which:
        real = getattr(fused, name)
        monkeypatch.setattr(fused, name, lambda *a, real=real, name=name: (calls.append(name), real(*a))[1])
    return calls


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize("name,kwargs", SETTINGS, ids=[f"{n}-{'-'.join(k) or 'default'}" for n, k in SETTINGS])
def test_the_fused_forward_equals_the_fast_path(kernels, monkeypatch, name, kwargs, layout):
    torch.manual_seed(0)
    calls = _calls(monkeypatch)
    shapes = [(2, 64, 7, 9), (3, 40, 5, 5), (1, 128, 1, 1), (6, 40, 3, 3), (5, 200, 2, 3)]  # 4 images at a time and the rest
    for shape in shapes:
        module = sca_lib.create_attention(name, shape[1], **kwargs).eval()
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.2)
        x = torch.randn(shape)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        module.record_maps = True
        with torch.no_grad():
            out, maps = module(x), module.last_maps
            with fused.fused_kernels(False):
                ref, ref_maps = module(x), module.last_maps
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        for path in ("channel", "spatial"):  # the recorded gates, before their strengths
            torch.testing.assert_close(maps[path], ref_maps[path], rtol=1e-5, atol=1e-6)
        assert out.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    assert len(calls) == len(shapes)  # the kernels ran, once per shape
    whole = fused.whole_module(module)  # the article's and the lite module's layers: one C++ call
    assert whole == ("act_layer" not in kwargs)
    assert set(calls) == ({"dual_forward"} if whole else {"gate"})


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["CF", "CL"])
def test_in_place_the_fused_forward_writes_the_same_numbers_into_x(kernels, monkeypatch, layout):
    torch.manual_seed(0)
    calls = _calls(monkeypatch)
    for name, kwargs in [("dual", {}), ("lite", {"alpha": 0.5}), ("dual", {"act_layer": torch.nn.GELU})]:
        module = sca_lib.create_attention(name, 40, **kwargs).eval()
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.2)
        x = torch.randn(5, 40, 6, 6).contiguous(memory_format=layout)
        with torch.no_grad():
            ref = module(x)
            module.inplace = True
            x2 = x.clone()
            out = module(x2)
        assert out.data_ptr() == x2.data_ptr() and torch.equal(out, ref), (name, kwargs)
    assert calls == ["dual_forward"] * 4 + ["gate"] * 2  # out of place, then in place, each module


def test_the_kernels_agree_with_the_expressions_they_replace(kernels):
    torch.manual_seed(1)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(4, 24, 6, 10).contiguous(memory_format=memory_format)
        a, b = torch.rand(4, 24, 1, 1), torch.rand(4, 1, 6, 10)
        assert torch.equal(fused.gate(x, a, b), x * a * b)  # the same operations in the same order: bit for bit
        x2 = x.clone()
        assert fused.gate(x2, a, b, inplace=True) is x2 and torch.equal(x2, x * a * b)
        conv = torch.nn.Conv2d(24, 1, 1)
        pooled, proj = fused.pool_project(x, conv)
        torch.testing.assert_close(pooled, x.mean((2, 3)), rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            torch.testing.assert_close(proj, conv(x), rtol=1e-5, atol=1e-5)


def test_the_product_is_the_same_when_threads_split_it_inside_an_image(kernels):
    # the product's rows are shared out between threads in chunks that start and end anywhere in an
    # image: each chunk must find its image's gates (3 images of 64x64, 2 threads: chunks of 1.5 images)
    torch.manual_seed(3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for c, memory_format in [(16, torch.contiguous_format), (16, torch.channels_last), (300, torch.channels_last)]:
            x = torch.randn(3, c, 64, 64).contiguous(memory_format=memory_format)
            a, b = torch.rand(3, c, 1, 1), torch.rand(3, 1, 64, 64)
            assert torch.equal(fused.gate(x, a, b), x * a * b), (c, memory_format)
    finally:
        torch.set_num_threads(threads)


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


def test_a_compiler_without_openmp_gets_the_kernels_on_one_thread(monkeypatch):
    import torch.utils.cpp_extension as cpp

    tried = []

    def compiler(*args, extra_cflags=(), extra_ldflags=(), **kwargs):
        tried.append((list(extra_cflags), list(extra_ldflags)))
        if "-fopenmp" in extra_cflags:
            raise RuntimeError("clang: error: unsupported option '-fopenmp'")
        return "the serial build"

    monkeypatch.setattr(fused, "_STATE", {"enabled": False, "module": None, "error": None})
    monkeypatch.setattr(cpp, "load_inline", compiler)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # falling back to one thread is not a failure
        assert fused.load() == "the serial build"
    assert tried == [(list(fused.FLAGS), ["-fopenmp"]), (list(fused.SERIAL_FLAGS), [])]


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


CHANNELS = [1, 7, 16, 24, 40, 96, 97, 128, 129, 200, 256, 300, 520]
MAPS = [(1, 1), (1, 7), (4, 4), (7, 7), (9, 11), (14, 14), (16, 16), (17, 17)]


def _kernels_agree(module):
    """pool_project and gate of the extension ``module`` against the expressions, for channel counts and
    map sizes that reach every branch: a register's worth and a partial one, several groups of channels,
    channel weights kept in registers or read, small maps held in registers and large ones that are not."""
    torch.manual_seed(2)
    before = fused._STATE["module"]
    fused._STATE["module"] = module
    try:
        for c in CHANNELS:
            for h, w in MAPS:
                for memory_format in (torch.contiguous_format, torch.channels_last):
                    x = torch.randn(2, c, h, w).contiguous(memory_format=memory_format)
                    conv = torch.nn.Conv2d(c, 1, 1)
                    pooled, proj = fused.pool_project(x, conv)
                    where = f"C={c}, {h}x{w}, {memory_format}"
                    torch.testing.assert_close(pooled, x.mean((2, 3)), rtol=1e-5, atol=1e-6, msg=lambda m: f"{where}: {m}")
                    with torch.no_grad():
                        torch.testing.assert_close(proj, conv(x), rtol=1e-4, atol=2e-5, msg=lambda m: f"{where}: {m}")
                    a, b = torch.rand(2, c, 1, 1), torch.rand(2, 1, h, w)
                    assert torch.equal(fused.gate(x, a, b), x * a * b), where
        for name, shape in [("dual", (6, 40, 3, 3)), ("lite", (5, 200, 2, 3)), ("dual", (1, 520, 4, 4))]:
            module = sca_lib.create_attention(name, shape[1], identity_init=True).eval()
            for p in module.parameters():
                torch.nn.init.normal_(p, std=0.2)
            x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                out, c, s = fused.dual_forward(x, module)
                ref = module.channel.weights_from_pooled(x.mean((2, 3))) * 2, module.spatial.weights(x) * 2
                torch.testing.assert_close(c, ref[0], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(s, ref[1], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(out, x * c * s, rtol=1e-5, atol=1e-6)
    finally:
        fused._STATE["module"] = before


def test_the_kernels_agree_on_every_branch_of_this_cpus_build(kernels):
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if " avx512f" in flags:
        assert kernels.simd_lanes() == 16
    elif " avx2" in flags:
        assert kernels.simd_lanes() == 8
    _kernels_agree(kernels)


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="x86 instruction-set flags")
@pytest.mark.parametrize("without,lanes", [("-mno-avx512f", 8), ("-mno-avx2", 1)], ids=["avx2", "scalar"])
def test_the_kernels_agree_as_machines_without_avx512_or_avx2_build_them(kernels, without, lanes):
    # other machines' code paths, built here with fewer instruction sets (one more 20 s build each)
    flags = open("/proc/cpuinfo").read()
    if lanes == 8 and " avx2" not in flags:
        pytest.skip("this CPU has no AVX2 to run the AVX2 build")
    module = fused.build(fused.FLAGS + (without,))
    assert module.simd_lanes() == lanes
    _kernels_agree(module)
