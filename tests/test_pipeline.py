"""The pipeline end to end (sample -> train -> evaluate) on a tiny model, through the CLI, and the
bad-input paths: clear message, exit code 2, nothing half-written."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hsrm.bon.demo import demo
from hsrm.cli import main
from hsrm.splits import prompt_folds
from tests.conftest import tiny_demo


@pytest.fixture(autouse=True)
def _mixed_labels(monkeypatch):
    """A random tiny model is never right; label by answer text so both classes occur (plumbing only,
    the embedded-model integration test checks real labels)."""
    from hsrm.tasks.synthetic import SyntheticTask

    monkeypatch.setattr(SyntheticTask, "check", lambda self, ext, p: ext is None)


TINY = [
    "--model",
    "tiny:0",
    "--n-prompts",
    "12",
    "--n",
    "4",
    "--max-new-tokens",
    "3",
    "--layers",
    "every:1",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from hsrm.tasks.synthetic import SyntheticTask

    d = tmp_path_factory.mktemp("p")
    # module scope is set up before the autouse patch: apply the same mixed labels here
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SyntheticTask, "check", lambda self, ext, p: ext is None)
        assert main(["sample", "--out", str(d / "run")] + TINY) == 0
    return d


def test_sample_train_evaluate(run, capsys):
    d = run
    assert (
        main(
            [
                "train",
                str(d / "run"),
                "--head-type",
                "elhsr",
                "--out",
                str(d / "head"),
                "--layers",
                "all",
                "--params",
                '{"max_epochs": 2}',
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                str(d / "run"),
                "--head-type",
                "probe",
                "--out",
                str(d / "probe"),
                "--layers",
                "all",
            ]
        )
        == 0
    )
    training = json.loads((d / "head" / "training.json").read_text())
    assert training["train_prompts"]
    # the head records the dtype its states were computed in, resolved as the store's meta.json
    meta = json.loads((d / "run" / "meta.json").read_text())
    assert training["model_dtype"] == meta["model_dtype"] in ("float32", "bfloat16")
    card = (d / "head" / "README.md").read_text()  # the model card reads the training record
    assert f"| answers (samples) | {training['n_samples']} |" in card
    assert (
        main(
            [
                "evaluate",
                str(d / "run"),
                "--head",
                str(d / "head"),
                "--head",
                str(d / "probe"),
                "--out",
                str(d / "eval"),
                "--n-boot",
                "50",
            ]
        )
        == 0
    )
    rep = json.loads((d / "eval" / "results.json").read_text())
    for scorer in (
        "elhsr",
        "probe",
        "elhsr_vote",
        "probe_vote",
        "majority",
        "mean_logprob",
        "random",
    ):
        assert scorer in rep["bon"]
    assert set(rep["pass_at_k"]) == {"1", "2", "4"}
    # at N every sample takes part: a head's vote is counted exactly, between 0 and pass@N
    assert 0 <= rep["bon"]["elhsr_vote"]["4"] <= rep["pass_at_k"]["4"] + 1e-9
    assert (d / "eval" / "bon.png").stat().st_size > 1000
    # evaluation used only prompts the heads never saw
    assert rep["n_prompts"] == 12 - len(training["train_prompts"])


def test_train_on_a_store_of_later_prompts_evaluate_on_the_first(run, capsys):
    """The README's recipe: the task's next prompts sampled 4 times each (``--skip-prompts``)
    train the head on all of them (``--test-frac 0``); ``hsrm evaluate`` then tests every prompt
    of the 16-sample store (none was trained on) and fits the controls on the training store."""
    d = run
    args = ["--skip-prompts", "12", "--n", "2", "--out", str(d / "later")]
    assert main(["sample"] + TINY + args) == 0
    assert (
        main(["train", str(d / "later"), "--head-type", "probe", "--layers", "all"]
             + ["--test-frac", "0", "--out", str(d / "p_later")])
        == 0
    )  # fmt: skip
    training = json.loads((d / "p_later" / "training.json").read_text())
    assert len(training["train_prompts"]) == 12
    assert main(["evaluate", str(d / "run"), "--head", str(d / "p_later"),
                 "--out", str(d / "eval_later"), "--n-boot", "20"]) == 0  # fmt: skip
    rep = json.loads((d / "eval_later" / "results.json").read_text())
    assert rep["n_prompts"] == 12  # every prompt of the first store: none was trained on
    assert {"probe", "answer_prior", "text_only"} <= set(rep["bon"])


def test_head_from_other_model_is_refused(run, capsys):
    d = run
    assert (
        main(
            [
                "sample",
                "--out",
                str(d / "other"),
                "--model",
                "tiny:1",
                "--n-prompts",
                "4",
                "--n",
                "2",
                "--max-new-tokens",
                "2",
                "--layers",
                "every:1",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                str(d / "run"),
                "--head-type",
                "probe",
                "--out",
                str(d / "p2"),
                "--layers",
                "all",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(["evaluate", str(d / "other"), "--head", str(d / "p2"), "--out", str(d / "bad_eval")])
        == 2
    )
    err = capsys.readouterr().err
    assert "tiny-llama-0" in err and "tiny-llama-1" in err
    assert not (d / "bad_eval").exists()


def test_bad_inputs_exit_2(tmp_path, capsys):
    bad = Path(__file__).parent / "fixtures" / "tasks" / "bad.jsonl"
    assert (
        main(
            ["sample", "--out", str(tmp_path / "x"), "--model", "tiny:0", "--task", f"jsonl:{bad}"]
        )
        == 2
    )
    assert "bad.jsonl:2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["sample", "--out", str(tmp_path / "y"), "--model", "no-such-model"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert (
        main(["sample", "--out", str(tmp_path / "z"), "--model", "tiny:0", "--task", "nope"]) == 2
    )
    assert "unknown task" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nothing"), "--out", str(tmp_path / "h")]) == 2
    assert "not a sample store" in capsys.readouterr().err


def test_config_file_and_flags(tmp_path, run):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train:\n  head_type: probe\n  layers: all\n")
    out = tmp_path / "h"
    assert main(["train", str(run / "run"), "--config", str(cfg), "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["architecture"] == "probe"
    cfg.write_text("train:\n  bogus: 1\n")
    assert (
        main(["train", str(run / "run"), "--config", str(cfg), "--out", str(tmp_path / "h2")]) == 2
    )


def test_folds_are_by_prompt():
    pids = np.repeat([f"p{i}" for i in range(30)], 4)
    f = prompt_folds(pids, 3, 0)
    for p in np.unique(pids):
        assert len(set(f[pids == p])) == 1
    assert sorted(np.bincount(f)) == [40, 40, 40]


def test_demo_tiny(tmp_path):
    rep = demo(
        tiny_demo(
            tmp_path / "demo", n_boot=50, fresh_prompts=6, device="cpu", dtype="float32",
            batch_prompts=5,
        )
    )  # fmt: skip
    meta = json.loads((tmp_path / "demo" / "samples" / "meta.json").read_text())
    assert meta["batch_prompts"] == 5  # the demo's engine settings reach the sampler
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    # the second evaluation: a store from another task seed, nothing fitted on it
    assert saved["fresh"]["n_prompts"] == 6 and saved["fresh"]["task"]["seed"] == 1
    for scorer in (
        "elhsr",
        "probe",
        "text_only",
        "answer_prior",
        "self_certainty",
        "deepconf_vote",
        "elhsr_vote",
        "rank_vote",
    ):
        assert scorer in saved["fresh"]["bon"], scorer
        assert scorer in saved["bon"], scorer
    for key in (
        "mean_accuracy",
        "pass_at_k",
        "bon",
        "bon_ci",
        "auroc",
        "within_prompt_auroc",
        "gap_closed",
        "per_family",
        "model",
        "task",
        "seed",
        "N",
        "sizes",
    ):
        assert key in saved, key
    for scorer in (
        "elhsr",
        "probe",
        "majority",
        "mean_logprob",
        "random",
        "text_only",
        "answer_prior",
    ):
        assert scorer in saved["bon"], scorer
    assert rep["sizes"]["prompts"] == 12 and len(rep["splits"]) == 2
    # the task draws distinct questions while it can: no test prompt repeats a training question
    assert saved["questions"] == {"seen_prompts": 0, "prompts": 12}
    assert saved["fresh"]["questions"]["prompts"] == 6
    # nor a fresh prompt: its store avoids the questions of every prompt the heads trained on
    assert saved["fresh"]["task"]["avoid_questions"] == [0, 12]
    assert saved["fresh"]["questions"]["seen_prompts"] == 0

    # where questions do repeat, each part gets its own report (here: a made-up mask)
    from hsrm.bon.outputs import question_split
    from hsrm.store import Store

    store = Store(tmp_path / "demo" / "samples")
    idx = np.arange(len(store))
    seen = np.isin(store.prompt_ids, np.unique(store.prompt_ids)[:5])
    scores = {"picked": np.random.default_rng(0).random(len(store)), "majority": np.zeros(len(idx))}
    qs = question_split(store, idx, scores, seen, n_boot=20, votes=("picked",))
    assert (qs["seen_prompts"], qs["prompts"]) == (5, 12)
    assert (qs["seen"]["n_prompts"], qs["unseen"]["n_prompts"]) == (5, 7)


def test_sample_writes_api_log(tmp_path):
    from hsrm.apilog import read_api_log

    log = tmp_path / "log.jsonl"
    args = [
        "sample",
        "--out",
        str(tmp_path / "run"),
        "--model",
        "tiny:0",
        "--n-prompts",
        "3",
        "--n",
        "2",
        "--max-new-tokens",
        "3",
        "--api-log",
        str(log),
        "--top-logprobs",
        "4",
    ]
    assert main(args) == 0
    samples = read_api_log(log, 4)
    assert len(samples) == 6


def test_pick_by_family_takes_each_familys_best_ranker():
    from hsrm.bon.demo import pick_by_family, picked_scores

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 8)
    y = rng.random(len(groups)) < 0.5
    fams = np.where(groups < 10, "arith", "compare")
    noise = rng.random(len(groups))
    # head a ranks arith perfectly and compare at random; head b the other way round
    a = np.where(fams == "arith", y + 0.1 * noise, noise)
    b = np.where(fams == "compare", y + 0.1 * noise, noise)
    ex = [str(i) for i in range(len(groups))]  # every answer distinct: a vote is best-of-k
    pick = pick_by_family({"a": a, "b": b}, y, groups, fams, ["a", "b"], ex, 8)
    assert pick == {"arith": "a", "compare": "b"}
    s = picked_scores({"a": a, "b": b}, fams, pick, groups)
    # the pick as vote weights: within a prompt, the order of the picked head's scores
    for g in np.unique(groups):
        m = groups == g
        src = a if fams[m][0] == "arith" else b
        assert np.array_equal(np.argsort(s[m]), np.argsort(src[m]))
    # and its best-of-k, counted as a vote, is the picked head's best-of-k
    from hsrm.bon.report import bon_report

    rep = bon_report(
        {"a": a, "b": b, "picked": s}, y, groups, ex, fams, ks=[4], n_boot=5, votes=["picked"]
    )
    for fam, head in pick.items():
        sub = rep["per_family"][fam]["bon"]
        assert abs(sub["picked"]["4"] - sub[head]["4"]) < 0.03  # Monte Carlo subsets vs exact


def test_pick_by_family_takes_a_vote_where_the_vote_wins():
    from hsrm.bon.demo import pick_by_family
    from hsrm.bon.scorers import add_head_votes

    # every prompt: 6 samples; the right answer "1" given 3 times with middling scores, three wrong
    # answers once each, one of them with the top score -> the head's best-of-6 is wrong, its vote right
    groups = np.repeat(np.arange(10), 6)
    ex = ["1", "1", "1", "2", "3", "4"] * 10
    y = np.array([1, 1, 1, 0, 0, 0] * 10)
    h = np.array([0.9, 0.85, 0.8, 1.0, 0.0, 0.0] * 10)
    fams = np.array(["arith"] * 60)
    sc = add_head_votes({"h": h}, ["h"], groups)
    assert pick_by_family(sc, y, groups, fams, ["h", "h_vote"], ex, 6) == {"arith": "h_vote"}


def test_picked_out_of_fold_chooses_each_split_on_the_others():
    from hsrm.bon.demo import picked_out_of_fold

    # 3 splits of 10 prompts: head a ranks splits 1 and 2 perfectly and split 0 backwards, head b
    # is the reverse of a. Chosen on the other splits, split 0 gets a (and so picks its worst).
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(30), 8)
    fold = groups // 10
    y = (rng.random(len(groups)) < 0.5).astype(int)
    a = np.where(fold == 0, -y, y) + 0.1 * rng.random(len(groups))
    b = -a
    fams = np.array(["arith"] * len(groups))
    ex = [str(i) for i in range(len(groups))]
    w, picks = picked_out_of_fold({"a": a, "b": b}, y, groups, fams, ex, fold, ["a", "b"], 8)
    assert picks == [{"arith": "a"}, {"arith": "a"}, {"arith": "a"}]
    top = [np.flatnonzero(groups == g)[np.argmax(w[groups == g])] for g in range(30)]
    best = [y[groups == g].max() if g >= 10 else y[groups == g].min() for g in range(30)]
    assert [y[i] for i in top] == best


def test_demo_training_only_prompts_train_every_split(tmp_path, monkeypatch):
    """``train_prompts``: the task's next prompts, ``train_n`` samples each, join every split's
    training prompts (heads and controls) and the fresh-seed fit, and are never tested."""
    import hsrm.placement
    from hsrm.bon.demo import cross_fit
    from hsrm.store import Store

    # on a cpu with native bf16 the demo's `auto` samples in it, and every store records that
    monkeypatch.setattr(hsrm.placement, "cpu_bf16_native", lambda: True)
    out = tmp_path / "demo"
    rep = demo(tiny_demo(out, n_prompts=8, train_prompts=6, train_n=2, fresh_prompts=4))
    store, extra = Store(out / "samples"), Store(out / "train_samples")
    fresh = Store(out / "fresh_samples")
    assert rep["dtype"] == "bfloat16"
    assert {s.meta["model_dtype"] for s in (store, extra, fresh)} == {"bfloat16"}
    assert extra.meta["task"]["skip_prompts"] == 8 and len(extra) == 12
    assert fresh.meta["task"]["avoid_questions"] == [0, 8 + 6]
    assert set(extra.prompt_ids).isdisjoint(store.prompt_ids)
    assert rep["sizes"]["train_only_prompts"] == 6 and rep["sizes"]["train_only_samples"] == 12
    assert [s["train_prompts"] for s in rep["splits"]] == [4 + 6, 4 + 6]
    assert rep["n_prompts"] == 8  # only the store's prompts are tested
    assert "6 training-only prompts (12 samples)" in (out / "results.md").read_text()
    page = (out / "results.html").read_text()
    assert "also trained on 6 training-only prompts" in page and "tiny-llama-0 (bfloat16)" in page
    # the training-only prompts reach the fits: the out-of-fold scores change with them
    spec = {"probe": ("probe", {})}
    alone, _ = cross_fit(store, 2, 0, spec, progress=False)
    more, _ = cross_fit(store, 2, 0, spec, progress=False, extra=extra)
    assert not np.allclose(alone["probe"], more["probe"])
    assert not np.allclose(alone["answer_prior"], more["answer_prior"])


def test_demo_sizes_its_training_only_prompts_by_the_dtype_it_samples_in(monkeypatch):
    """Not given, the training-only prompts follow the dtype: bf16 (native on the CPU) samples
    faster and buys more of them; what the user gives is kept."""
    import hsrm.placement
    from hsrm.bon.demo import DemoConfig, resolve_demo

    base = DemoConfig(model="tiny:0", device="cpu")
    monkeypatch.setattr(hsrm.placement, "cpu_bf16_native", lambda: True)
    fast = resolve_demo(base)
    assert (fast.dtype, fast.train_prompts, fast.train_n) == ("bfloat16", 896, 8)
    monkeypatch.setattr(hsrm.placement, "cpu_bf16_native", lambda: False)
    slow = resolve_demo(base)
    assert (slow.dtype, slow.train_prompts, slow.train_n) == ("float32", 384, 4)
    mine = resolve_demo(replace(base, dtype="bfloat16", train_prompts=0, train_n=2))
    assert (mine.dtype, mine.train_prompts, mine.train_n) == ("bfloat16", 0, 2)
    assert resolve_demo(mine) == mine


def test_demo_refuses_a_foreign_folder_where_a_store_goes_before_sampling(tmp_path):
    """``--overwrite`` replaces only hsrm's files: a folder of the user's where the demo's
    training-only store goes stops the demo before anything is sampled, the file kept."""
    from hsrm.errors import HsrmError

    out = tmp_path / "demo"
    (out / "train_samples").mkdir(parents=True)
    (out / "train_samples" / "notes.txt").write_text("mine")
    with pytest.raises(HsrmError, match="train_samples"):
        demo(tiny_demo(out, train_prompts=2, fresh_prompts=0, overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == ["train_samples"]
    assert (out / "train_samples" / "notes.txt").read_text() == "mine"


def test_demo_reports_the_picked_head(tmp_path):
    demo(tiny_demo(tmp_path / "demo", fresh_prompts=6))
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert "picked" in saved["bon"] and "picked" in saved["fresh"]["bon"]
    # chosen on the first store, per family, among the demo's heads
    assert set(saved["fresh"]["picked"]) <= {"arith", "compare"}
    assert set(saved["fresh"]["picked"].values()) <= {"elhsr", "probe", "rank"}
    for split in saved["splits"]:
        assert set(split["picked"].values()) <= {"elhsr", "probe", "rank"}

    # a fresh store an older demo sampled (its prompts could repeat training questions) cannot
    # resume: the rerun names it, with the way out, before it samples or writes anything
    from hsrm.errors import HsrmError

    mp = tmp_path / "demo" / "fresh_samples" / "meta.json"
    meta = json.loads(mp.read_text())
    del meta["task"]["avoid_questions"]
    mp.write_text(json.dumps(meta))
    before = (tmp_path / "demo" / "results.json").read_bytes()
    with pytest.raises(HsrmError, match=r"fresh_samples/meta.json: existing run has task=.*delete"):
        demo(tiny_demo(tmp_path / "demo", fresh_prompts=6))
    assert (tmp_path / "demo" / "results.json").read_bytes() == before


def test_demo_cli_says_the_fresh_prompts_ask_no_training_question(tmp_path, capsys):
    """`hsrm demo` prints the fresh store's table under a title that says what it is: other task
    seed, nothing fitted on it, and (its store avoiding them) none of the training questions."""
    from hsrm.cli import main

    args = "--model tiny:0 --n-prompts 12 --n 4 --folds 2 --head-layers all --n-boot 20"
    argv = ["demo", *args.split(), "--train-prompts", "0", "--fresh-prompts", "6"]
    assert main([*argv, "--out", str(tmp_path / "demo")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "6 prompts no head or control was fitted on, none a training question" in said
    assert "ask a question the heads trained on" not in said
    # per family, the pick against majority vote, paired, in store and on the fresh store
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    for rep in (saved, saved["fresh"]):
        d = {f: sub["vs_majority"]["picked"] for f, sub in rep["per_family"].items()}
        line = ", ".join(
            f"{f} {v['delta']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]" for f, v in d.items()
        )
        assert f"picked minus majority vote at N=4, paired over prompts [95% CI]: {line}" in said


def test_train_without_head_type_fits_the_default_head(tmp_path, run, capsys):
    """``--head-type auto`` (the default): rank on a store of hidden states (DEFAULT_HEAD), and the
    training record names the head fitted, not ``auto``."""
    from hsrm.bon.train import DEFAULT_HEAD, auto_head_type
    from hsrm.features import LOGITS_LAYER, TOPK_LAYER

    out = tmp_path / "h"
    assert main(["train", str(run / "run"), "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["architecture"] == DEFAULT_HEAD == "rank"
    assert json.loads((out / "training.json").read_text())["config"]["head_type"] == "rank"
    assert f"saved {DEFAULT_HEAD} head" in capsys.readouterr().out
    assert auto_head_type((TOPK_LAYER,)) == "elhsr_toplogprobs"
    assert auto_head_type((LOGITS_LAYER,)) == "elhsr_logits"
    assert auto_head_type((0, 4, 8)) == DEFAULT_HEAD
