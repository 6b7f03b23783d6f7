"""hsrm.prefs.build / loop: pair rules, JSONL that trl.DPOTrainer reads as is, a resumable DPO loop."""

import json

import numpy as np
import pytest

from hsrm.capture import SampleConfig, teacher_force
from hsrm.errors import HsrmError
from hsrm.features import TokenFeatures
from hsrm.heads import make_head
from hsrm.models import tiny_model
from hsrm.prefs.build import PromptSamples, build_pairs, select_pairs
from hsrm.prefs.data import read_pairs
from hsrm.tasks.base import Prompt, Task

LAYERS = (1, 2)


def _ps(pid, texts, scores=None, labels=None):
    p = Prompt(id=pid, messages=({"role": "user", "content": "q"},), answer="1")
    return PromptSamples(
        p,
        "PROMPT ",
        list(texts),
        None if scores is None else np.array(scores, float),
        None if labels is None else np.array(labels),
    )


def test_head_rule_best_vs_worst_margin_and_disagreement():
    s = [
        _ps("a", ["x", "y", "z"], [0.1, 2.0, -1.0], [0, 1, 0]),  # best y, worst z: kept
        _ps("b", ["x", "y"], [0.1, 0.2]),  # gap 0.1 < margin
        _ps("c", ["x", "y"], [3.0, 0.0], [0, 1]),  # head prefers the wrong answer: dropped
        _ps("d", ["x", "x", "x"], [1.0, 1.0, 1.0]),  # one distinct answer
    ]
    pairs, st = select_pairs(s, "head", margin=0.5)
    assert [(p.chosen, p.rejected) for p in pairs] == [("y", "z")]
    assert (
        st["below_margin"] == 1
        and st["disagrees_with_verifier"] == 1
        and st["no_distinct_answers"] == 1
    )
    kept, _ = select_pairs(s, "head", margin=0.5, drop_disagreements=False)
    assert ("x", "y") in [(p.chosen, p.rejected) for p in kept]
    assert pairs[0].prompt == "PROMPT " and pairs[0].group == "a"
    assert pairs[0].extra["chosen_score"] == 2.0 and pairs[0].extra["chosen_correct"] == 1


def test_verifier_and_random_rules():
    s = [_ps("a", ["1", "2", "3", "4"], labels=[0, 1, 0, 0]), _ps("b", ["1", "2"], labels=[1, 1])]
    pairs, st = select_pairs(s, "verifier", seed=0)
    assert len(pairs) == 1 and pairs[0].chosen == "2" and pairs[0].rejected != "2"
    assert st["no_correct_and_incorrect"] == 1
    rnd, _ = select_pairs(s * 5, "random", seed=0)
    assert len(rnd) == 10 and all(p.chosen != p.rejected for p in rnd)
    with pytest.raises(HsrmError, match="needs head scores"):
        select_pairs(s, "head")
    with pytest.raises(HsrmError, match="select must be"):
        select_pairs(s, "best")


class ParityTask(Task):
    """A checker the tiny random model passes about half the time: first byte even."""

    name = "parity"

    def __init__(self, n=12):
        self.n = n

    def prompts(self):
        return [
            Prompt(
                id=f"p{i:02d}",
                messages=({"role": "user", "content": f"Say something {i}"},),
                answer="",
                prefill="Ok: ",
            )
            for i in range(self.n)
        ]

    def extract(self, completion, prompt):
        return completion

    def check(self, extracted, prompt):
        return bool(extracted) and ord(extracted[0]) % 2 == 0


@pytest.fixture(scope="module")
def lm():
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def head(lm):
    rng = np.random.default_rng(0)
    answers = ["".join(chr(int(c)) for c in rng.integers(97, 123, size=3)) for _ in range(40)]
    y = np.array([ord(a[0]) % 2 == 0 for a in answers], int)
    got = teacher_force(lm, "Ok: ", answers, LAYERS)
    X = TokenFeatures.from_tensors([a.hidden for a in got], LAYERS, lm.fingerprint)
    return make_head("elhsr", lr=5e-2, max_epochs=20, val_frac=0.0).fit(X, y)


def test_build_pairs_jsonl_loads_in_dpo_trainer_unchanged(lm, head, tmp_path):
    pytest.importorskip("trl")
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer

    task = ParityTask(12)
    out = tmp_path / "pairs.jsonl"
    pairs, stats = build_pairs(
        lm,
        task.prompts(),
        head=head,
        task=task,
        sample=SampleConfig(n=6, max_new_tokens=4, seed=0),
        drop_disagreements=False,
        out=out,
    )
    assert stats["pairs"] == len(pairs) > 0 and out.exists()
    rows, _ = read_pairs(out)
    key = lambda p: (p.id, p.prompt, p.chosen, p.rejected, p.group, p.extra)  # noqa: E731
    assert [key(r) for r in rows] == [key(p) for p in pairs]  # one writer, one reader
    assert all(r.extra["chosen_score"] >= r.extra["rejected_score"] for r in rows)
    assert rows[0].prompt.endswith("Ok: ")  # chat-formatted prompt with the prefill
    # the file goes to TRL untouched
    ds = load_dataset("json", data_files=str(out), split="train")
    policy = tiny_model(seed=0)
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        use_cpu=True,
        per_device_train_batch_size=4,
        max_steps=2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        learning_rate=1e-3,
    )
    trainer = DPOTrainer(
        model=policy.model,
        ref_model=tiny_model(seed=0).model,
        args=args,
        train_dataset=ds,
        processing_class=policy.tokenizer,
    )
    first = trainer.train_dataset[0]
    assert first["chosen_ids"] and first["rejected_ids"]
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_build_pairs_needs_a_scorer(lm):
    with pytest.raises(HsrmError, match="needs a head"):
        build_pairs(lm, ParityTask(2).prompts())


@pytest.mark.slow
def test_loop_runs_saves_rounds_and_resumes(tmp_path, head):
    pytest.importorskip("peft")
    from hsrm.prefs.loop import LoopConfig, run_loop

    cfg = LoopConfig(
        model="tiny",
        n_prompts=8,
        n_eval=4,
        rounds=1,
        select="head",
        k=4,
        eval_k=2,
        max_new_tokens=3,
        lora_r=2,
        lora_alpha=4,
        batch_size=4,
        max_steps=1,
        lr=1e-3,
        out=str(tmp_path / "run"),
        target_modules=["q_proj", "v_proj"],
    )
    calls = {"n": 0}

    def load():
        calls["n"] += 1
        return tiny_model(seed=0)

    res = run_loop(cfg, load=load, head=head, task=ParityTask(12))
    assert [m["round"] for m in res["rounds"]] == [0, 1]
    r1 = tmp_path / "run" / "round_1"
    assert (r1 / "adapter" / "adapter_config.json").exists() and (r1 / "pairs.jsonl").exists()
    m1 = json.loads((r1 / "metrics.json").read_text())
    assert m1["train"]["steps"] == 1 and 0 <= m1["accuracy"] <= 1 and len(m1["per_prompt"]) == 4
    stamp = (r1 / "metrics.json").stat().st_mtime_ns

    # a second round resumes from round 1's adapter; round 1 is not redone
    cfg.rounds = 2
    res = run_loop(cfg, load=load, head=head, task=ParityTask(12))
    assert [m["round"] for m in res["rounds"]] == [0, 1, 2]
    assert (r1 / "metrics.json").stat().st_mtime_ns == stamp

    # killed after round 2's adapter was saved, before its evaluation: pairs and adapter are reused
    r2 = tmp_path / "run" / "round_2"
    (r2 / "metrics.json").unlink()
    stamps = [
        (r2 / f).stat().st_mtime_ns for f in ("pairs.jsonl", "adapter/adapter_model.safetensors")
    ]
    res = run_loop(cfg, load=load, head=head, task=ParityTask(12))
    assert [
        (r2 / f).stat().st_mtime_ns for f in ("pairs.jsonl", "adapter/adapter_model.safetensors")
    ] == stamps
    assert (r2 / "metrics.json").exists() and res["rounds"][2]["train"]["steps"] == 0

    # other settings in the same folder are refused
    cfg.lr = 1.0
    with pytest.raises(HsrmError, match="other settings"):
        run_loop(cfg, load=load, head=head, task=ParityTask(12))
