"""The demo pipeline on the embedded SmolLM2-135M-Instruct, small."""

import json

import pytest

from hsrm.bon.demo import DemoConfig, demo

pytestmark = pytest.mark.integration


def test_demo_embedded_small(tmp_path, embedded_lm, monkeypatch):
    import hsrm.sampling

    # reuse the session's model: sampling is the one place the pipeline loads it
    monkeypatch.setattr(hsrm.sampling, "load_model", lambda name, **kw: embedded_lm)
    rep = demo(
        DemoConfig(
            out=str(tmp_path / "demo"), n_prompts=24, n=4, folds=2, n_boot=50, train_prompts=8
        )
    )
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["model"]["name"] == "smollm2-135m-instruct"
    assert saved["model"]["n_layers"] == 30 and saved["model"]["hidden_size"] == 576
    # the model answers this task sometimes but not always: labels are real and mixed
    assert 0.02 < rep["mean_accuracy"] < 0.9
    assert rep["pass_at_k"]["4"] >= rep["mean_accuracy"]
    assert set(rep["per_family"]) == {"arith", "compare"}
    assert (tmp_path / "demo" / "bon.png").exists()
    # the training-only prompts: the task's next 8, trained on by every split, never tested
    assert saved["sizes"]["train_only_prompts"] == 8 and rep["n_prompts"] == 24
    assert [s["train_prompts"] for s in saved["splits"]] == [12 + 8, 12 + 8]
