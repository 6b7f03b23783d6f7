"""Selection quality: training-free scorers, DeepConf's weighted vote inside best-of-k, synthetic
contexts per prompt and the CoT family, and `hsrm evaluate` on a store no head saw."""

import json

import numpy as np
import pytest
import torch

from hsrm.bon.report import bon_report
from hsrm.bon.scorers import (
    bottom_group_confidence,
    group_confidences,
    lowest_group_confidence,
    score_stats,
    tail_confidence,
    weighted_vote_prompt,
)
from hsrm.cli import main
from hsrm.tasks import get_task


def test_group_confidence_windows_and_clipping():
    c = torch.tensor([3.0, 1.0, 2.0, 6.0])
    assert torch.allclose(group_confidences(c, 2), torch.tensor([2.0, 1.5, 4.0]))
    assert lowest_group_confidence(c, 2) == pytest.approx(1.5)
    # a window longer than the answer is clipped to it: the whole answer's mean
    assert lowest_group_confidence(c) == pytest.approx(3.0)
    assert bottom_group_confidence(c, 2, 0.5) == pytest.approx((1.5 + 2.0) / 2)
    assert tail_confidence(c, 2) == pytest.approx(4.0)
    s = score_stats(
        {"confidence": c, "self_certainty": torch.tensor([1.0, 3.0]), "entropy": torch.ones(3)}
    )
    assert s["self_certainty"] == pytest.approx(2.0) and s["neg_mean_entropy"] == -1.0


def test_weighted_vote_counts_weights_and_keeps_top_eta():
    rng = np.random.default_rng(0)
    answers = ["1", "1", "2", None]
    y = np.array([0, 0, 1, 0])
    # plain majority would pick "1"; one very confident "2" outweighs two unsure "1"s
    w = np.array([1.0, 1.0, 5.0, 9.0])
    assert weighted_vote_prompt(answers, y, w, 4, rng, keep=1.0) == 1.0
    w2 = np.array([3.0, 3.0, 5.0, 0.1])
    assert weighted_vote_prompt(answers, y, w2, 4, rng, keep=1.0) == 0.0
    # keep the top 25% (one trace): the single most confident answer wins
    assert weighted_vote_prompt(answers, y, w2, 4, rng, keep=0.25) == 1.0


def test_bon_report_counts_weighted_vote_within_subsets():
    g = np.repeat(["a", "b"], 4)
    ext = ["1", "1", "2", "2", "5", "6", "6", "7"]
    y = np.array([0, 0, 1, 1, 1, 0, 0, 0])
    w = np.array([1, 1, 2, 2, 9, 1, 1, 1], float)
    rep = bon_report(
        {"deepconf_vote": w, "majority": np.zeros(8), "random": np.zeros(8)},
        y,
        g,
        extracted=ext,
        n_boot=20,
    )
    # k = 4: prompt a's "2" (weight 4) beats "1" (2); prompt b's lone "5" (9) beats "6" (2)
    assert rep["bon"]["deepconf_vote"]["4"] == 1.0
    assert rep["bon"]["majority"]["4"] == pytest.approx(0.25)  # a: tie 1/2 -> 0.5; b: "6" -> 0
    # k = 1 is one random trace: the mean accuracy
    assert rep["bon"]["deepconf_vote"]["1"] == pytest.approx(rep["mean_accuracy"], abs=0.1)


def test_synthetic_per_prompt_contexts_and_fixed_default():
    fixed = get_task("synthetic", n=6, families="arith", seed=3).prompts()
    assert len({json.dumps(p.messages[:-1]) for p in fixed}) == 1
    pp = get_task("synthetic", n=6, families="arith", seed=3, fewshot="per_prompt").prompts()
    assert len({json.dumps(p.messages[:-1]) for p in pp}) == 6
    assert [p.question for p in pp] == [p.question for p in fixed]  # same questions
    again = get_task("synthetic", n=6, families="arith", seed=3, fewshot="per_prompt").prompts()
    assert [p.messages for p in again] == [p.messages for p in pp]
    for p in pp:
        assert p.question not in [m["content"] for m in p.messages[:-1]]
    with pytest.raises(Exception, match="fewshot"):
        get_task("synthetic", fewshot="bogus")


def test_cot_family_worked_examples_and_extraction():
    t = get_task("synthetic", n=40, families="cot", seed=0)
    ps = t.prompts()
    assert {p.meta["qtype"] for p in ps} == {"2step", "3step"}
    for p in ps:
        assert p.prefill == ""
        shot = p.messages[1]["content"]
        assert shot.endswith(".") and "The answer is" in shot
        # the checker reads the final answer, not the first number
        assert t.check(t.extract(f"1 + 2 = 3. The answer is {p.answer}.", p), p)
        assert not t.check(t.extract(f"{p.answer} + 1 = 0. The answer is 999.", p), p)
    q = ps[0]
    steps = [s for s in q.messages[1]["content"].split(". ") if "=" in s]
    for st in steps:
        lhs, rhs = st.rstrip(".").split(" = ")
        assert eval(lhs) == int(rhs)  # noqa: S307 - our own generated arithmetic


@pytest.fixture(autouse=False)
def _mixed(monkeypatch):
    from hsrm.tasks.synthetic import SyntheticTask

    monkeypatch.setattr(SyntheticTask, "check", lambda self, ext, p: ext is None)


def test_evaluate_fresh_store_reports_every_baseline(tmp_path, _mixed, capsys):
    """A store no head trained on: every baseline (controls fitted on the head's training
    store), and the test prompts split by whether the heads' training prompts asked their
    question (in another context)."""
    tiny = ["--model", "tiny:0", "--n", "4", "--max-new-tokens", "3", "--layers", "every:1"]
    assert main(["sample", "--out", str(tmp_path / "a"), "--n-prompts", "10", *tiny]) == 0
    b = ["--task-seed", "7", "--fewshot", "per_prompt"]
    assert main(["sample", "--out", str(tmp_path / "b"), "--n-prompts", "6", *b, *tiny]) == 0
    head = ["--head-type", "probe", "--layers", "all", "--test-frac", "0.2"]
    assert main(["train", str(tmp_path / "a"), "--out", str(tmp_path / "h"), *head]) == 0
    assert main(["evaluate", str(tmp_path / "b"), "--head", str(tmp_path / "h")]) == 0
    rep = json.loads((tmp_path / "b" / "eval" / "results.json").read_text())
    assert rep["n_prompts"] == 6
    for name in (
        "probe",
        "random",
        "majority",
        "mean_logprob",
        "text_only",
        "answer_prior",
        "self_certainty",
        "deepconf_lowest_group",
        "deepconf_tail",
        "deepconf_bottom10",
        "neg_mean_entropy",
        "deepconf_vote",
    ):
        assert name in rep["bon"], name
    # no question of seed 7's six is among the head's training questions (seed 0), and it says so
    assert rep["questions"] == {"seen_prompts": 0, "prompts": 6}

    # the head's own questions in other contexts: each part is reported, and the CLI says it
    c = ["--fewshot", "fixed", "--n-prompts", "10"]  # store a's ten questions
    assert main(["sample", "--out", str(tmp_path / "c"), *c, *tiny]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "c"), "--head", str(tmp_path / "h")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    rep = json.loads((tmp_path / "c" / "eval" / "results.json").read_text())
    k = len(json.loads((tmp_path / "h" / "training.json").read_text())["train_prompts"])
    assert 0 < k < 10 and rep["questions"]["seen_prompts"] == k
    assert rep["questions"]["unseen"]["n_prompts"] == 10 - k
    assert rep["questions"]["seen"]["n_prompts"] == k
    assert f"{k} of 10 test prompts ask a question the heads trained on" in said
    assert f"on the other {10 - k}, probe BoN@4" in said
    # and the first head against majority vote per family, paired, as the report has it
    d = rep["per_family"]["arith"]["vs_majority"]["probe"]
    assert rep["per_family"]["arith"]["vs_majority"]["k"] == 4
    assert "probe minus majority vote at N=4, paired over prompts [95% CI]: arith " in said
    assert f"arith {d['delta']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" in said
