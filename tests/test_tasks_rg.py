"""reasoning-gym generators as a task (``rg:NAME``): seeded, verifier-labelled, exemplars from
another seed and never the question; bad specs refused with one message. Development generators
only (issue 31)."""

import json
import sys

import pytest

pytest.importorskip("reasoning_gym")

from hsrm.cli import main  # noqa: E402
from hsrm.errors import HsrmError  # noqa: E402
from hsrm.tasks import get_task  # noqa: E402
from hsrm.tasks.rg import derived_seed, parse_spec  # noqa: E402


def _exemplar_questions(p):
    return [m["content"] for m in p.messages[:-1] if m["role"] == "user"]


def test_tiny_sample_records_seeds_family_and_verifier_labels(tmp_path):
    out = tmp_path / "s"
    args = ["sample", "--task", "rg:count_bits", "--n-prompts", "4", "--n", "2"]
    args += ["--max-new-tokens", "8", "--model", "tiny:0", "--threads", "1", "--out", str(out)]
    assert main([*args, "--task-seed", "3", "--fewshot", "per_prompt"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    gen = meta["task"]["generators"]
    assert meta["task"]["name"] == "rg" and meta["task"]["seed"] == 3
    assert gen == [
        {
            "name": "count_bits",
            "settings": {},
            "seed": derived_seed(3, "count_bits", "questions"),
            "fewshot_seed": derived_seed(3, "count_bits", "fewshot"),
        }
    ]
    assert meta["task"]["fewshot"] == "per_prompt" and meta["task"]["shots"] == 3
    recs = json.loads((out / "shard-00000.json").read_text())["records"]
    assert len(recs) == 8 and {r["family"] for r in recs} == {"count_bits"}
    # the store's labels are the task's: the tiny model's noise is graded by the verifier
    task = get_task("rg:count_bits", limit=4, seed=3, fewshot="per_prompt")
    ps = {p.id: p for p in task.prompts()}
    assert set(ps) == {r["prompt_id"] for r in recs}
    for r in recs:
        assert r["reference"] == ps[r["prompt_id"]].answer
        assert r["label"] == task.label(r["text"], ps[r["prompt_id"]])
    # resuming with another task seed is refused before the model loads
    assert main([*args, "--task-seed", "4", "--fewshot", "per_prompt"]) == 2


@pytest.mark.parametrize("fewshot", ["per_prompt", "fixed"])
def test_exemplars_come_from_the_generator_and_never_ask_the_question(fewshot):
    # two flips, "exactly" questions only: a handful of distinct questions, so exemplar draws
    # hit the question asked often and the filter is what keeps it out
    spec = "rg:coin_flip(min_trials=2,max_trials=3,allow_at_least=False)"
    ps = get_task(spec, limit=6, fewshot=fewshot, seed=1).prompts()
    assert len(ps) == 6
    shown = set()
    for p in ps:
        qs = _exemplar_questions(p)
        assert len(qs) == 3 and len(set(qs)) == 3
        assert p.question not in qs
        assert all(m["content"].startswith("The answer is ") for m in p.messages[1:-1:2])
        assert p.prefill == "The answer is" and p.family == "coin_flip"
        shown |= set(qs)
    if fewshot == "fixed":  # one set per generator, whose questions are then not asked
        assert len(shown) == 3 and not shown & {p.question for p in ps}
    else:
        assert len({tuple(_exemplar_questions(p)) for p in ps}) > 1


def test_verifier_labels_right_and_wrong_answers():
    task = get_task("rg:count_bits,fraction_simplification", limit=4, seed=0)
    ps = task.prompts()
    assert [p.family for p in ps] == ["count_bits", "fraction_simplification"] * 2
    for p in ps:
        assert task.label(f"{p.answer}.", p) and task.label(f" {p.answer}. Because ...\nx", p)
        wrong = str(int(p.answer) + 1) if p.family == "count_bits" else "0/1"
        assert not task.label("", p) and not task.label(f"{wrong}.", p)
    assert task.extract("12.\nThe answer is 13.", ps[0]) == "12"
    assert task.extract("0.3125.", ps[0]) == "0.3125" and task.extract(" \n", ps[0]) is None
    # a generator without a single reference (any valid conclusion): the example answer is the
    # reference; partial credit (a trivial conclusion scores 0.25) is wrong
    logic = get_task("rg:propositional_logic", limit=8, seed=0)
    lps = logic.prompts()
    assert all(p.answer for p in lps) and all(logic.label(p.answer, p) for p in lps)
    assert any(logic.score("P ∨ ¬P", p) not in (0.0, 1.0) for p in lps)
    assert not any(logic.label("P ∨ ¬P", p) for p in lps)


def test_prompts_are_seeded_and_prefix_stable():
    a = get_task("rg:lcm(max_value=30),count_bits", limit=40, seed=5).prompts()
    b = get_task("rg:lcm(max_value=30),count_bits", limit=40, seed=5).prompts()
    assert [(p.id, p.messages, p.answer) for p in a] == [(p.id, p.messages, p.answer) for p in b]
    # the first prompts of a longer run are the same (--skip-prompts relies on it)
    c = get_task("rg:lcm(max_value=30),count_bits", limit=50, seed=5).prompts()
    assert [p.messages for p in c[:40]] == [p.messages for p in a]
    assert len({p.question for p in a}) == 40  # distinct questions within a store
    # task seeds 5 and 6 share no question (reasoning-gym's seed + idx would share all but one)
    d = get_task("rg:lcm(max_value=30),count_bits", limit=40, seed=6).prompts()
    bits = [p.question for p in a if p.family == "count_bits"]
    assert not set(bits) & {p.question for p in d}


def test_spec_syntax():
    assert parse_spec("lcm(min_value=2, max_value=50),count_bits") == [
        ("lcm", {"min_value": 2, "max_value": 50}),
        ("count_bits", {}),
    ]
    assert parse_spec("word_sorting(transformation=uppercase)") == [
        ("word_sorting", {"transformation": "uppercase"})
    ]
    assert parse_spec("simple_equations(operators=['+','-'])") == [
        ("simple_equations", {"operators": ("+", "-")})
    ]


@pytest.mark.parametrize(
    "spec, says",
    [
        ("rg", "needs generators"),
        ("rg:no_such_generator", "unknown reasoning-gym generator 'no_such_generator'"),
        ("rg:count_bits(min_n)", "'min_n' of count_bits is not key=value"),
        ("rg:count_bits(min_n=abc)", "min_n='abc' must be like its default"),
        ("rg:count_bits(colour=1)", "unknown setting 'colour'"),
        ("rg:count_bits(seed=3)", "setting 'seed' is hsrm's"),
        ("rg:count_bits(min_n=2,min_n=3)", "'min_n' of count_bits is given twice"),
        ("rg:count_bits(min_n=-5)", "bad settings"),
        ("rg:count_bits(min_n=2", "unbalanced"),
        ("rg:count_bits,,lcm", "empty generator name"),
        ("rg:count_bits,count_bits", "named twice"),
    ],
)
def test_bad_specs_exit_2_with_one_message(tmp_path, capsys, spec, says):
    out = tmp_path / "s"
    args = ["sample", "--task", spec, "--n-prompts", "2", "--n", "1", "--model", "tiny:0"]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert says in " ".join(err.split()) and "Traceback" not in err
    assert err.count("error:") == 1 and not out.exists()


def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import reasoning_gym -> ImportError
    with pytest.raises(HsrmError, match=r"pip install hsrm\[rg\]"):
        get_task("rg:count_bits", limit=2)
