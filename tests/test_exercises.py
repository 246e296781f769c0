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


#: Notebooks whose exercises have no solutions file yet (the list may only shrink).
WITHOUT_SOLUTIONS_YET = {"07_detection", "08_seeing_attention", "09_attention_family"}


def test_every_notebook_with_exercises_has_its_solutions():
    notebooks = Path(__file__).resolve().parent.parent / "notebooks"
    for nb in sorted(notebooks.glob("*.ipynb")):
        has = (notebooks / "solutions" / f"{nb.stem}.py").is_file()
        if nb.stem in WITHOUT_SOLUTIONS_YET:
            assert not has, f"{nb.stem} has solutions now: remove it from WITHOUT_SOLUTIONS_YET"
        elif "## Exercises" in nb.read_text():
            assert has, f"{nb.name} has exercises but no solutions/{nb.stem}.py"
