"""Every notebook exercise's solution (notebooks/solutions/*.py) runs and its checks pass."""

import runpy
from pathlib import Path

import pytest

SOLUTIONS = sorted((Path(__file__).resolve().parent.parent / "notebooks" / "solutions").glob("*.py"))


def _exercises():
    for path in SOLUTIONS:
        names = sorted(n for n in runpy.run_path(str(path), run_name="solutions") if n.startswith("exercise_"))
        assert names, f"{path.name} defines no exercise_* function"
        for name in names:
            yield pytest.param(path, name, id=f"{path.stem}::{name}")


@pytest.mark.parametrize("path,name", list(_exercises()))
def test_solution_runs(path, name):
    runpy.run_path(str(path), run_name="solutions")[name]()


def test_every_solutions_file_belongs_to_a_notebook_with_exercises():
    notebooks = Path(__file__).resolve().parent.parent / "notebooks"
    for path in SOLUTIONS:
        nb = notebooks / f"{path.stem}.ipynb"
        assert nb.is_file(), f"{path.name} has no notebook {nb.name}"
        assert "## Exercises" in nb.read_text(), f"{nb.name} has no exercises for {path.name}"
