"""Heads as Hub artifacts: model card, from_pretrained (folder or repo id), push_to_hub -- offline:
huggingface_hub's download and upload are replaced by fakes that act on local folders."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hsrm.errors import HsrmError
from hsrm.heads import Head, make_head
from hsrm.heads.hub import model_card, write_model_card
from tests.conftest import make_features


@pytest.fixture(scope="module")
def fitted():
    X, y, g = make_features(n_prompts=30, seed=1)
    return X, make_head("probe").fit(X, y, g)


@pytest.fixture(scope="module")
def EVAL(fitted):
    """A real `hsrm evaluate` report: the head and two controls on held-out prompts."""
    from hsrm.bon.report import bon_report

    _, head = fitted
    Xt, yt, gt = make_features(n_prompts=12, seed=2)
    rng = np.random.default_rng(0)
    scores = {
        "probe": head.score(Xt),
        "random": np.zeros(len(yt)),
        "text_only": rng.normal(size=len(yt)),
    }
    return bon_report(scores, yt, gt, n_boot=50)


def test_card_has_training_and_evaluation_with_controls(fitted, EVAL, tmp_path):
    X, head = fitted
    folder = head.save(tmp_path / "h")
    training = {"run": "runs/demo", "train_prompts": ["p1", "p2", "p3"], "n_samples": 48}
    (folder / "training.json").write_text(json.dumps(training))
    write_model_card(folder, evaluation=EVAL)
    card = (folder / "README.md").read_text()
    assert "| answers (samples) | 48 |" in card and "| prompts | 3 |" in card
    assert "`runs/demo`" in card
    ev = card.split("## Evaluation")[1].split("## Intended use")[0]
    assert "BoN@1 [95% CI]" in ev and "within-prompt AUROC" in ev  # hsrm's BoN table
    for scorer in ("probe", "text_only", "random"):  # the head and its controls
        assert f"| {scorer} | " in ev
    assert "linear probe" in card and X.fingerprint.name in card
    # the evaluation travels with the folder and the card regenerates from it
    saved = json.loads((folder / "evaluation.json").read_text())
    assert saved["auroc"]["probe"] == pytest.approx(EVAL["auroc"]["probe"])
    (folder / "README.md").unlink()
    write_model_card(folder)
    assert "text_only" in (folder / "README.md").read_text()
    # without records the card says so rather than invent numbers
    bare = model_card(json.loads((folder / "config.json").read_text()))
    assert "No training record" in bare and "No evaluation results" in bare
    with pytest.raises(HsrmError, match="no evaluation results file"):
        write_model_card(folder, evaluation=tmp_path / "missing.json")


def test_from_pretrained_repo_id_downloads(fitted, EVAL, tmp_path, monkeypatch):
    X, head = fitted
    remote = head.save_pretrained(tmp_path / "remote", evaluation=EVAL)
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kw):
        calls.append((repo_id, revision, tuple(allow_patterns), kw))
        dst = tmp_path / "cache" / repo_id.replace("/", "--")
        shutil.copytree(remote, dst)
        return str(dst)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = Head.from_pretrained("someone/hsrm-probe", revision="v1", cache_dir="x")
    assert calls[0][:2] == ("someone/hsrm-probe", "v1") and calls[0][3] == {"cache_dir": "x"}
    assert "model.safetensors" in calls[0][2] and "config.json" in calls[0][2]
    np.testing.assert_allclose(loaded.score(X), head.score(X), rtol=1e-6)
    # a local folder is never sent to the Hub
    Head.from_pretrained(remote)
    assert len(calls) == 1

    def offline(**kw):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(HsrmError, match="cannot download.*no network"):
        Head.from_pretrained("someone/other")
    with pytest.raises(HsrmError, match="not a Hub repository id"):
        Head.from_pretrained(str(tmp_path / "no" / "such" / "folder"))


def test_push_to_hub_uploads_the_folder(fitted, EVAL, tmp_path, monkeypatch):
    X, head = fitted
    src = head.save(tmp_path / "trained")
    (src / "training.json").write_text(json.dumps({"n_samples": 48, "train_prompts": ["a"]}))
    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            uploaded["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
            uploaded["created"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, **kw):
            uploaded["files"] = sorted(
                p.name for p in Path(folder_path).iterdir() if p.name[0] != "."
            )
            uploaded["card"] = (Path(folder_path) / "README.md").read_text()
            uploaded["allow"] = kw.get("allow_patterns")
            return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = Head.from_pretrained(src).push_to_hub(
        "me/probe", private=True, token="t", evaluation=EVAL
    )
    assert url == "https://hub/me/probe/commit/1"
    assert uploaded["created"] == ("me/probe", True, True) and uploaded["token"] == "t"
    assert uploaded["files"] == [
        "README.md",
        "config.json",
        "evaluation.json",
        "model.safetensors",
        "training.json",  # the training record of the folder it was loaded from travels on
    ]
    assert 'Head.from_pretrained("me/probe")' in uploaded["card"]
    assert "| answers (samples) | 48 |" in uploaded["card"]
    with pytest.raises(HsrmError, match="not a Hub repository id"):
        head.push_to_hub("no-owner")


def test_cli_card_and_push(fitted, EVAL, tmp_path, monkeypatch, capsys):
    from hsrm.cli import main

    _, head = fitted
    folder = head.save(tmp_path / "h")
    (tmp_path / "results.json").write_text(json.dumps(EVAL))
    assert main(["card", "--head", str(folder), "--eval", str(tmp_path / "results.json")]) == 0
    assert "| probe | " in (folder / "README.md").read_text()
    pushed = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kw):
            pass

        def upload_folder(self, repo_id, folder_path, **kw):
            pushed.append(
                (repo_id, sorted(p.name for p in Path(folder_path).iterdir() if p.name[0] != "."))
            )
            return "https://hub/commit"

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert main(["push", "--head", str(folder), "--repo", "me/h"]) == 0
    assert pushed == [
        ("me/h", ["README.md", "config.json", "evaluation.json", "model.safetensors"])
    ]
    assert main(["push", "--head", str(folder), "--repo", "bad id"]) == 2
    assert main(["card", "--head", str(tmp_path / "nope")]) == 2
    assert "not a saved head" in capsys.readouterr().err
