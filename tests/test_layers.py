"""The tree reads as the pipeline: no import runs from a lower floor up to a use or the CLI."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hsrm"
LOWER = [
    "placement.py",
    "models.py",
    "lm.py",
    "capture",
    "store.py",
    "features.py",
    "heads",
    "tasks",
]
UPPER = ("sampling", "engines", "bon", "prefs", "detect", "rl", "score", "serve", "scale", "cli")


def _imports(path: Path) -> set[str]:
    """Every hsrm module a file imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return {m for m in out if m.startswith("hsrm.")}


def _files(name: str) -> list[Path]:
    p = SRC / name
    return sorted(p.rglob("*.py")) if p.is_dir() else [p]


@pytest.mark.parametrize("name", LOWER)
def test_lower_floors_import_no_use(name):
    for f in _files(name):
        up = {m for m in _imports(f) if m.split(".")[1] in UPPER}
        assert not up, f"{f.relative_to(SRC)} imports {sorted(up)}"


def test_store_does_not_judge_answers():
    """Labels come from the task, through the caller (``Task.grade``); the store only records them."""
    assert not {m for m in _imports(SRC / "store.py") if m.startswith("hsrm.tasks")}
