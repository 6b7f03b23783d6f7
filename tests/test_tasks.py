"""Tasks: the synthetic generator is seeded and shortcut-controlled; file tasks fail loudly."""

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
    t = get_task(f"gsm8k:{FIX / 'gsm8k_small.jsonl'}")
    ps = t.prompts()
    assert [p.answer for p in ps] == ["7", "1000"]
    assert t.check(t.extract("So 3+4=7. The answer is 7.", ps[0]), ps[0])
    assert t.check(t.extract("The answer is 1,000", ps[1]), ps[1])


def test_bbh_and_jsonl():
    t = get_task(f"bbh:{FIX / 'bbh_small.json'}")
    p = t.prompts()[0]
    assert p.family == "bbh_small" and t.check(t.extract("False.", p), p)
    j = get_task(f"jsonl:{FIX / 'qa.jsonl'}")
    ps = j.prompts()
    assert j.check(j.extract("2.", ps[0]), ps[0]) and j.check(j.extract("Blue.", ps[1]), ps[1])


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
