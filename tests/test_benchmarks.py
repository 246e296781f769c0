"""The module benchmark runs end to end on tiny shapes and writes the tables it documents."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_modules.py"


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_module_benchmark_pairs_every_module_with_the_floor_and_its_reference(tmp_path):
    _run("--shapes", "2x32x4x4", "--modules", "dual", "cbam", "--no-timm", "--rounds", "2", "--warmup", "0",
         "--out", str(tmp_path))
    table = pd.read_csv(tmp_path / "modules_cpu_default.csv")
    assert set(table["pass"]) == {"forward", "forward+backward"}
    assert set(table["format"]) == {"channels_first", "channels_last"}
    for _, block in table.groupby(["format", "pass"]):
        assert {"floor", "floor (copy)", "dual", "dual (reference)", "cbam", "cbam (reference)"} == set(block["model"])
        assert block.set_index("model").loc["floor", "ratio"] == 1.0
    text = (tmp_path / "modules_cpu_default.md").read_text()
    assert "Regenerate: `python benchmarks/bench_modules.py --shapes 2x32x4x4" in text


def test_breakdown_times_each_step_of_the_dual_forward(tmp_path):
    out = _run("--breakdown", "--shapes", "2x32x4x4", "--formats", "channels_first", "--rounds", "2", "--warmup", "0",
               "--out", str(tmp_path))
    table = pd.read_csv(tmp_path / "modules_cpu_default_breakdown.csv")
    steps = [m for m in table["model"] if m[0].isdigit()]
    assert steps == ["1. pool (spatial_mean)", "2. channel MLP + sigmoid", "3. projection (project_channels)",
                     "4. spatial sigmoid", "5. product (gate_product)"]
    assert {"floor", "floor (copy)", "read pass (x.sum)", "dual (whole module)"} <= set(table["model"])
    assert "| 5. product (gate_product) |" in out
    assert (tmp_path / "modules_cpu_default_breakdown.md").read_text().startswith("# Where the dual module's")


def test_bad_shapes_are_refused_with_the_expected_form():
    done = subprocess.run([sys.executable, str(SCRIPT), "--shapes", "8x64"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "NxCxHxW" in done.stderr


@pytest.mark.parametrize("flag", ["--breakdown", ""])
def test_unknown_modules_are_named(flag):
    args = [a for a in (flag, "--modules", "nope") if a]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "unknown modules ['nope']" in done.stderr


def test_the_fused_rows_time_the_opt_in_kernels(tmp_path):
    out = _run("--fused", "--inplace", "--shapes", "2x32x4x4", "--modules", "dual", "--no-timm", "--passes", "forward",
               "--rounds", "2", "--warmup", "0", "--out", str(tmp_path))
    table = pd.read_csv(tmp_path / "modules_cpu_default_fused.csv")
    assert {"dual", "dual (reference)", "dual (fused)", "dual (in place)", "dual (fused, in place)"} <= set(table["model"])
    assert "`dual (fused)`" in out and "`dual (fused, in place)`" in out


def test_the_in_place_rows_leave_the_input_as_it_was():
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("bench_modules", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    modules = bench._in_place_modules(["dual", "lite", "se"], 16, "cpu")
    assert set(modules) == {"dual (in place)", "lite (in place)"}
    x = torch.randn(2, 16, 5, 5)
    before = x.clone()
    with torch.inference_mode():
        for m in modules.values():
            assert m(x) is x
    assert torch.equal(x, before)  # identity start: gates of exactly 1


def test_each_forward_backward_round_starts_without_gradients():
    import importlib.util

    import torch

    from sca_lib.attention import create_attention

    spec = importlib.util.spec_from_file_location("bench_modules", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    module = create_attention("dual", 16).train()
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    run = bench._forward_backward(module, x, torch.randn(2, 16, 5, 5))
    run()
    once = {n: p.grad.clone() for n, p in module.named_parameters()}
    run()  # a second round: the same gradients, not twice them
    for n, p in module.named_parameters():
        torch.testing.assert_close(p.grad, once[n], msg=n)


def test_the_matvec_benchmark_times_both_ways_of_writing_each_product(tmp_path):
    script = ROOT / "benchmarks" / "bench_matvec.py"
    done = subprocess.run([sys.executable, str(script), "--shapes", "2x8x3x3", "--rounds", "7", "--warmup", "0",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(tmp_path / "matvec_cpu.csv")
    assert len(table) == 7 and table["model"].str.endswith("(now)").sum() == 2 and table["ratio_ci_low"].notna().all()
    assert (tmp_path / "matvec_cpu.md").read_text().startswith("# Batched matrix-vector products")
