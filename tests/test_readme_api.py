"""The README's Python API block, run as printed (only its sizes shrunk, to fit a test budget)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

# Literal edits: sizes only (8 prompts: 2 land on the held-out side of the hash split). Each must be present, so a README change that drops one fails here.
SHRINK = {
    "n_prompts=320, n=16": "n_prompts=8, n=2",
    "SampleConfig(n=16,": "SampleConfig(n=2,",
}


def readme_api_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    api = [b for b in blocks if "from hsrm.sampling import" in b and "make_head" in b]
    assert len(api) == 1, "README: expected one Python API block (sampling + make_head)"
    return api[0]


def test_readme_block_is_found_and_shrinkable():
    code = readme_api_block()
    for old in SHRINK:
        assert old in code, f"README API block no longer contains {old!r}; update SHRINK"
    compile(code, "README.md", "exec")  # at least valid Python, in the fast suite too


@pytest.mark.integration
def test_readme_python_api_runs_as_printed(tmp_path, monkeypatch):
    import torch

    code = readme_api_block()
    for old, new in SHRINK.items():
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)  # its relative runs/ paths land here
    # No network here: the Hub is a local folder (upload = copy, download = that folder).
    import shutil

    import hsrm.heads.base as base

    hub = tmp_path / "hub"

    def push(folder, repo_id, **kw):
        shutil.copytree(folder, hub / repo_id)
        return f"https://huggingface.co/{repo_id}/commit/local"

    real_resolve = base.resolve
    monkeypatch.setattr(base, "push_folder", push)
    monkeypatch.setattr(
        base,
        "resolve",
        lambda ref, revision=None, **kw: (
            hub / str(ref) if (hub / str(ref)).is_dir() else real_resolve(ref, revision, **kw)
        ),
    )
    torch.set_num_threads(1)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    # what the README's comments promise
    assert ns["res"].answers[0].hidden.shape[1:] == (9, 576)
    assert len(ns["scores"]) == len(ns["store"].labels)
    assert (tmp_path / "runs" / "my_head" / "config.json").exists()
    assert "bon" in ns["report"] and ns["report"]["n_prompts"] > 0
    assert (hub / "me" / "hsrm-elhsr-smollm2" / "model.safetensors").exists()  # pushed
    assert ns["head"].architecture == "elhsr"  # and loaded back by repo id
