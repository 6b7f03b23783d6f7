"""Tasks: the synthetic generator is seeded and shortcut-controlled; file tasks fail loudly."""

import json
from collections import Counter
from pathlib import Path

import pytest

from hsrm.errors import HsrmError
from hsrm.tasks import get_task

FIX = Path(__file__).parent / "fixtures" / "tasks"


def test_synthetic_seeded_and_distinct():
    a = get_task("synthetic", n=60, families="arith,compare,count", seed=1).prompts()
    b = get_task("synthetic", n=60, families="arith,compare,count", seed=1).prompts()
    assert [p.messages for p in a] == [p.messages for p in b]
    assert len({p.question for p in a}) == 60
    assert {p.family for p in a} == {"arith", "compare", "count"}
    assert all(p.prefill == "The answer is " for p in a)
    assert get_task("synthetic", n=5, seed=2).prompts()[0].question != a[0].question


def test_synthetic_avoid_asks_none_of_another_tasks_questions(tmp_path, capsys):
    """``avoid=(seed, n)``: a test store whose questions the first n prompts of that task seed
    never asked (another seed alone repeats most of them once n nears the question space)."""
    from hsrm.cli import main

    train = {p.question for p in get_task("synthetic", n=1216, seed=0).prompts()}
    plain = get_task("synthetic", n=128, seed=1, fewshot="per_prompt").prompts()
    fresh = get_task("synthetic", n=128, seed=1, fewshot="per_prompt", avoid=(0, 1216))
    ps = fresh.prompts()
    assert sum(p.question in train for p in plain) > 64  # the overlap it removes
    assert not any(p.question in train for p in ps) and len({p.question for p in ps}) == 128
    assert {p.family for p in ps} == {"arith", "compare"}
    assert [p.messages for p in ps] == [p.messages for p in fresh.prompts()]
    assert fresh.describe()["avoid_questions"] == [0, 1216]
    assert "avoid_questions" not in get_task("synthetic", n=4).describe()
    # bad specs name the field and write nothing
    for bad, task in (("1", "synthetic"), ("0:0", "synthetic"), ("0:4", "gsm8k:x.jsonl")):
        out = tmp_path / "s"
        args = ["sample", "--out", str(out), "--model", "tiny:0", "--task", task]
        assert main([*args, "--avoid-questions", bad]) == 2
        assert "avoid_questions" in capsys.readouterr().err and not out.exists()


def test_synthetic_is_shortcut_controlled():
    ps = get_task("synthetic", n=400, families="compare").prompts()
    qtypes = Counter(p.meta["qtype"] for p in ps)
    assert min(qtypes.values()) > 150  # larger and smaller both common
    # "the bigger number is right" is right only for 'larger' questions
    import re

    bigger_right = [int(p.answer) == max(map(int, re.findall(r"\d+", p.question))) for p in ps]
    assert 0.35 < sum(bigger_right) / len(ps) < 0.65
    arith = get_task("synthetic", n=200, families="arith").prompts()
    assert {p.meta["qtype"] for p in arith} == {"add", "sub"}


def test_checker():
    t = get_task("synthetic", n=3)
    p = t.prompts()[0]
    assert t.check(t.extract(f"{p.answer}.", p), p)
    assert not t.check(t.extract("nothing", p), p)


def test_gsm8k():
    t = get_task(f"gsm8k:{FIX / 'gsm8k_small.jsonl'}", shots=0)
    ps = t.prompts()
    assert [p.answer for p in ps] == ["7", "1000", "30", "27", "22"]
    assert all(len(p.messages) == 1 for p in ps)
    assert t.check(t.extract("So 3+4=7. The answer is 7.", ps[0]), ps[0])
    assert t.check(t.extract("The answer is 1,000", ps[1]), ps[1])


def test_bbh_and_jsonl():
    t = get_task(f"bbh:{FIX / 'bbh_small.json'}", shots=0)
    p = t.prompts()[0]
    assert p.family == "bbh_small" and t.check(t.extract("False.", p), p)
    j = get_task(f"jsonl:{FIX / 'qa.jsonl'}")
    ps = j.prompts()
    assert j.check(j.extract("2.", ps[0]), ps[0]) and j.check(j.extract("Blue.", ps[1]), ps[1])


@pytest.mark.parametrize("name,path", [("bbh", "bbh_small.json"), ("gsm8k", "gsm8k_small.jsonl")])
def test_file_tasks_are_asked_few_shot_from_their_own_file(name, path):
    spec = f"{name}:{FIX / path}"
    zero = {p.id: p for p in get_task(spec, shots=0).prompts()}
    # per prompt: every prompt its own seeded draw of 2 other rows of the file, in the chat format
    per = get_task(spec, shots=2, fewshot="per_prompt", seed=5).prompts()
    assert [p.id for p in per] == list(zero)  # every row is asked
    for p in per:
        assert [m["role"] for m in p.messages] == ["user", "assistant"] * 2 + ["user"]
        shown = [m["content"] for m in p.messages[:-1:2]]
        assert p.question not in shown and set(shown) <= {q.question for q in zero.values()}
        for q, a in zip(p.messages[:-1:2], p.messages[1::2], strict=True):
            ref = next(z for z in zero.values() if z.question == q["content"]).answer
            assert a["content"].endswith(f"The answer is {ref}.")  # the exemplar's own answer
    assert len({tuple(m["content"] for m in p.messages[:-1]) for p in per}) > 1  # many contexts
    again = get_task(spec, shots=2, fewshot="per_prompt", seed=5).prompts()
    other = get_task(spec, shots=2, fewshot="per_prompt", seed=6).prompts()
    assert [p.messages for p in again] == [p.messages for p in per]  # seeded
    assert [p.messages for p in other] != [p.messages for p in per]
    # fixed: one set for the whole file, and those rows are not asked
    fixed = get_task(spec, shots=2, seed=5).prompts()
    ctx = fixed[0].messages[:-1]
    assert len(fixed) == len(zero) - 2 and all(p.messages[:-1] == ctx for p in fixed)
    assert not {p.question for p in fixed} & {m["content"] for m in ctx[::2]}
    assert get_task(spec, shots=2, seed=5, limit=1).prompts() == fixed[:1]


def test_few_shot_never_shows_a_question_twice_in_one_prompt(tmp_path):
    # a file that holds the same question on two rows: neither row is an exemplar of the other
    qs = ["a is", "b is", "a is", "c is", "d is"]
    f = tmp_path / "dup.json"
    f.write_text(json.dumps({"examples": [{"input": q, "target": "x"} for q in qs]}))
    for seed in range(20):
        for p in get_task(f"bbh:{f}", shots=3, fewshot="per_prompt", seed=seed).prompts():
            asked = [m["content"] for m in p.messages if m["role"] == "user"]
            assert len(asked) == len(set(asked)) == 4
    with pytest.raises(
        HsrmError, match="4 few-shot examples need 5 distinct questions, the file has 4"
    ):
        get_task(f"bbh:{f}", shots=4).prompts()


def test_few_shot_needs_enough_rows_and_stays_out_of_old_descriptions():
    with pytest.raises(HsrmError, match=r"bbh_small\.json: 6 few-shot examples need 7"):
        get_task(f"bbh:{FIX / 'bbh_small.json'}", shots=6).prompts()
    with pytest.raises(HsrmError, match="fewshot must be one of"):
        get_task(f"bbh:{FIX / 'bbh_small.json'}", fewshot="some")
    with pytest.raises(HsrmError, match="synthetic task needs shots >= 1"):
        get_task("synthetic", shots=0)
    assert "shots" not in get_task(f"gsm8k:{FIX / 'gsm8k_small.jsonl'}", shots=0).describe()
    assert get_task(f"gsm8k:{FIX / 'gsm8k_small.jsonl'}").describe()["shots"] == 3
    # GSM8K's calculator notes are not part of a worked exemplar
    p = get_task(f"gsm8k:{FIX / 'gsm8k_small.jsonl'}", shots=4, fewshot="per_prompt").prompts()[0]
    assert "<<" not in "".join(m["content"] for m in p.messages)


def test_bad_inputs_name_file_and_line(tmp_path):
    with pytest.raises(HsrmError, match=r"bad\.jsonl:2: malformed JSON"):
        get_task(f"jsonl:{FIX / 'bad.jsonl'}").prompts()
    with pytest.raises(HsrmError, match="unknown task"):
        get_task("nope")
    with pytest.raises(HsrmError, match="needs a path"):
        get_task("gsm8k")
    f = tmp_path / "dup.jsonl"
    f.write_text(
        '{"id": "a", "prompt": "x", "answer": "1"}\n{"id": "a", "prompt": "y", "answer": "2"}\n'
    )
    with pytest.raises(HsrmError, match=r"dup\.jsonl:2: duplicate id 'a'"):
        get_task(f"jsonl:{f}").prompts()
    g = tmp_path / "missing.jsonl"
    g.write_text('{"id": "a", "prompt": "x"}\n')
    with pytest.raises(HsrmError, match=r"missing\.jsonl:1: missing field 'answer'"):
        get_task(f"jsonl:{g}").prompts()
    with pytest.raises(HsrmError, match="unknown synthetic family"):
        get_task("synthetic:arith,bogus")


def test_real_data_loaders_if_present():
    root = Path(__file__).parents[2] / "shared" / "data"
    if not root.exists():
        pytest.skip("shared data not present")
    ps = get_task(f"gsm8k:{root / 'gsm8k' / 'test.jsonl'}", limit=5).prompts()
    assert len(ps) == 5 and all(p.answer.lstrip("-").isdigit() for p in ps)


def test_sample_asks_a_file_few_shot_and_will_not_resume_with_other_shots(tmp_path, capsys):
    from hsrm.cli import main
    from hsrm.store import Store

    run = ["sample", "--model", "tiny:0", "--task", f"bbh:{FIX / 'bbh_small.json'}"]
    run += ["--n", "2", "--max-new-tokens", "2", "--layers", "last", "--out", str(tmp_path / "r")]
    assert main([*run, "--shots", "2", "--fewshot", "per_prompt", "--task-seed", "3"]) == 0
    s = Store(tmp_path / "r")
    assert s.meta["task"]["shots"] == 2 and s.meta["task"]["seed"] == 3
    assert len(set(s.prompt_ids)) == 6  # per prompt: every row asked
    before = sorted(p.name for p in (tmp_path / "r").iterdir())
    capsys.readouterr()
    # other exemplars in the same store would mix two prompt formats: refused, nothing touched
    assert main([*run, "--shots", "1", "--fewshot", "per_prompt", "--task-seed", "3"]) == 2
    assert "existing run has task=" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == before


def test_bbh_reads_an_option_named_by_letter_or_by_its_text():
    from hsrm.tasks import BBHTask
    from hsrm.tasks.base import Prompt

    q = "Today is Christmas Eve of 1937. Tomorrow?\nOptions:\n(A) 12/11/1937\n(B) 12/25/1937"
    p = Prompt(id="d", messages=({"role": "user", "content": q},), answer="(B)", family="d")
    t = BBHTask(FIX / "bbh_small.json")
    assert t.extract(" (B).", p) == "(B)" and t.label(" (B).", p)
    assert t.extract("(B) 12/25/1937, the day after.", p) == "(B)"
    assert t.extract("12/25/1937.", p) == "(B)" and t.label("12/25/1937.", p)
    assert t.extract("12/11/1937", p) == "(A)" and not t.label("12/11/1937", p)
    assert t.extract("(C).", p) == "(C)" and not t.label("(C).", p)  # no such option: kept, wrong
    assert t.extract("2.", p) == "2"  # neither a letter nor an option's text
    v = Prompt(
        id="v",
        messages=({"role": "user", "content": "Valid?\nOptions:\n- valid \n- invalid"},),
        answer="invalid",
    )
    assert t.extract("\n- invalid.", v) == "invalid" and t.label("- invalid.", v)
    n = Prompt(id="n", messages=({"role": "user", "content": "((-1 + 2) * -3) ="},), answer="-3")
    assert t.extract("-3.", n) == "-3" and t.extract("3.5 or so", n) == "3.5 or so"
