from pathlib import Path

import numpy as np
import pytest

from hsrm.errors import HsrmError
from hsrm.prefs.data import read_pairs, split_by_group, truthfulqa_pairs, write_pairs

FIX = Path(__file__).parent / "fixtures" / "prefs"


def test_read_good_file():
    pairs, rep = read_pairs(FIX / "good.jsonl")
    assert [p.id for p in pairs] == ["p1", "p2", "p3", "p4"]
    assert rep.kept == 4 and not rep.dropped
    assert pairs[3].source.endswith("good.jsonl:5")  # the blank line 4 is not a pair
    assert pairs[0].chosen.startswith("Nothing happens")


@pytest.mark.parametrize(
    "name, line, what",
    [
        ("missing_field.jsonl", 2, "missing field 'rejected'"),
        ("empty_answer.jsonl", 3, "empty answer in field 'chosen'"),
        ("duplicate_id.jsonl", 3, "duplicate pair id 'p1'"),
    ],
)
def test_bad_lines_name_file_and_line(name, line, what):
    with pytest.raises(HsrmError) as e:
        read_pairs(FIX / name)
    assert f"{name}:{line}: {what}" in str(e.value)


def test_warn_mode_counts_every_dropped_line(caplog):
    pairs, rep = read_pairs(FIX / "duplicate_id.jsonl", on_error="warn")
    assert [p.id for p in pairs] == ["p1", "p2"]
    assert rep.dropped == {"duplicate pair id": 1, "empty answer": 1}
    assert "dropped 2 of 4 lines" in caplog.text


def test_malformed_json_and_empty_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": \n')
    with pytest.raises(HsrmError, match="bad.jsonl:2"):
        read_pairs(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(HsrmError, match="no preference pairs"):
        read_pairs(empty)
    with pytest.raises(HsrmError, match="on_error"):
        read_pairs(FIX / "good.jsonl", on_error="skip")


def test_write_read_roundtrip(tmp_path):
    pairs, _ = read_pairs(FIX / "good.jsonl")
    write_pairs(tmp_path / "p.jsonl", pairs)
    again, _ = read_pairs(tmp_path / "p.jsonl")
    assert [(p.id, p.prompt, p.chosen, p.rejected, p.group) for p in again] == [
        (p.id, p.prompt, p.chosen, p.rejected, p.group) for p in pairs
    ]


def test_truthfulqa_pairs_and_split_by_question():
    pairs = truthfulqa_pairs(FIX / "tqa_small.csv", max_answers=2)
    groups = {p.group for p in pairs}
    assert len(groups) == 5
    # best answer is always among the chosen ones; no answer is both chosen and rejected
    assert any(p.chosen.startswith("The watermelon seeds pass") for p in pairs)
    assert all(p.chosen != p.rejected for p in pairs)
    assert len({p.id for p in pairs}) == len(pairs)
    per_q = {g: sum(p.group == g for p in pairs) for g in groups}
    assert set(per_q.values()) <= {4}  # 2 correct x 2 incorrect
    train, test = split_by_group(pairs, test_frac=0.4, seed=0)
    assert {p.group for p in train}.isdisjoint({p.group for p in test})
    assert len({p.group for p in test}) == 2 and len(train) + len(test) == len(pairs)
    zipped = truthfulqa_pairs(FIX / "tqa_small.csv", max_answers=2, all_combinations=False)
    assert len(zipped) == 10
    with pytest.raises(HsrmError, match="fraction"):
        split_by_group(pairs, test_frac=1.5)
    assert np.all([p.source for p in pairs])
