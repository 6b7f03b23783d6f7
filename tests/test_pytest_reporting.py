"""A failing test ends in pytest's normal summary, even when CPython's AST converter fails while
pytest formats the failure (see ``pytest_runtest_makereport`` in conftest.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAILING = """
import ast
import _pytest._code.source as source


def _broken_parse(*args, **kwargs):
    # What CPython 3.11 raises when another thread parses source at the same time.
    raise SystemError("AST constructor recursion depth mismatch (before=129, after=145)")


def test_fails(monkeypatch):
    monkeypatch.setattr(source.ast, "parse", _broken_parse)
    assert 1 == 2


def test_passes():
    assert ast.parse("x = 1")
"""


def _run(tmp_path, *plugins):
    (tmp_path / "test_failing.py").write_text(FAILING)
    args = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(tmp_path),
    ]
    for p in plugins:
        args += ["-p", p]
    return subprocess.run(
        [*args, str(tmp_path / "test_failing.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_failure_reported_when_ast_parse_fails(tmp_path):
    r = _run(tmp_path, "tests.conftest")
    assert "INTERNALERROR" not in r.stdout + r.stderr
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 failed, 1 passed" in r.stdout
    assert "assert 1 == 2" in r.stdout


def test_without_the_hook_pytest_crashes(tmp_path):
    # The control: the fallback above is what turns the crash into a failure.
    r = _run(tmp_path)
    assert r.returncode == 3
    assert "INTERNALERROR" in r.stdout + r.stderr
