"""sca_lib installed as a package (a built wheel, unpacked on PYTHONPATH, as on Colab): default paths
resolve against the current directory, never inside the installed package."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A wheel of the current source, built outside the checkout and unpacked into site/."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(ROOT / "sca_lib", src / "sca_lib", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(base / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {out.stderr[-500:]}")
    site = base / "site"
    with zipfile.ZipFile(next((base / "dist").glob("sca_lib-*.whl"))) as whl:
        whl.extractall(site)
    return site


def _run(site, cwd, *args, **env):
    clean = {k: v for k, v in os.environ.items() if k not in ("SCA_HOME", "SCA_DATA_DIR", "PYTHONPATH")}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**clean, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", **env})


def _files(folder):
    return {p.relative_to(folder) for p in folder.rglob("*") if "__pycache__" not in p.parts}


def test_the_wheel_carries_the_licence(installed):
    (info,) = installed.glob("sca_lib-*.dist-info")
    metadata = (info / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata
    assert "Apache License" in next(info.rglob("LICENSE")).read_text()


def test_installed_package_writes_into_the_current_directory(installed, tmp_path):
    before = _files(installed)
    probe = _run(installed, tmp_path, "-c", "import sca_lib, sca_lib.config as c; "
                 "print(sca_lib.__file__); print(c.repo_root()); print(c.output_root()); print(c.data_dir())")
    assert probe.returncode == 0, probe.stderr
    where, repo, out_root, data = probe.stdout.split()
    assert Path(where).is_relative_to(installed) and repo == "None"
    assert Path(out_root) == tmp_path and Path(data) == tmp_path / "data"
    run = _run(installed, tmp_path, "-m", "sca_lib.train", "--mode", "fast", "--attention", "none",
               "--weights", "none", "--stage-epochs", "1,1,1", "--train-images", "16", "--val-images", "8",
               "--name", "tiny", "--no-progress")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert summary["epochs"] == 3
    assert (tmp_path / "data" / "synthetic").is_dir()
    assert _files(installed) == before  # nothing landed inside the installed package


def test_sca_home_moves_every_default_path(installed, tmp_path):
    home = tmp_path / "home"
    probe = _run(installed, tmp_path, "-c", "import sca_lib.config as c; print(c.output_root(), c.data_dir(), "
                 "c.results_dir('cpu'), c.runs_dir('x'))", SCA_HOME=str(home))
    assert probe.stdout.split() == [str(home), str(home / "data"), str(home / "results" / "cpu"),
                                    str(home / "runs" / "x")]
