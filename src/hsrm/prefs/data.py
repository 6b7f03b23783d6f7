"""Preference pairs: the TRL / RewardBench JSONL format and TruthfulQA pairs, split by question.

A JSONL line holds ``prompt``, ``chosen`` and ``rejected`` (strings; ``id`` and ``group`` optional).
A missing or non-string field, an empty answer, or a duplicated pair id raises ``HsrmError``
naming ``file:line``; with ``on_error="warn"`` such lines are dropped *and counted* (the counts are
logged and returned), never skipped silently.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hsrm.errors import HsrmError
from hsrm.io import read_jsonl
from hsrm.splits import split_groups
from hsrm.tasks.base import Prompt

log = logging.getLogger(__name__)

FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PrefPair:
    """The one preference-pair type: read from JSONL or TruthfulQA, built from a policy's samples
    (``hsrm.prefs.build``), written by ``write_pairs`` in the TRL format."""

    id: str
    prompt: str
    chosen: str
    rejected: str
    group: str  # the question / prompt the pair belongs to: splits and bootstrap resample groups
    source: str = ""  # "file:line" for pairs read from a file
    # more JSONL fields, kept and written back (e.g. chosen_score, chosen_correct, select)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    def to_record(self) -> dict[str, Any]:
        """The JSONL object: the three TRL fields, ``id``, ``group``, then ``extra``."""
        core = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        return {**core, "id": self.id, "group": self.group, **self.extra}


@dataclass
class ReadReport:
    """What ``read_pairs`` kept and dropped (dropped only with ``on_error="warn"``)."""

    kept: int = 0
    dropped: Counter | None = None

    def __post_init__(self) -> None:
        if self.dropped is None:
            self.dropped = Counter()


def _problem(row: dict, seen: set[str]) -> tuple[str, str] | None:
    """(reason, message) for a bad line, None for a good one."""
    for f in FIELDS:
        if f not in row:
            return "missing field", f"missing field {f!r}"
        if not isinstance(row[f], str):
            return "non-string field", f"field {f!r} must be a string, got {type(row[f]).__name__}"
    for f in ("chosen", "rejected"):
        if not row[f].strip():
            return "empty answer", f"empty answer in field {f!r}"
    if not row["prompt"].strip():
        return "empty prompt", "empty field 'prompt'"
    if "id" in row and str(row["id"]) in seen:
        return "duplicate pair id", f"duplicate pair id {row['id']!r}"
    return None


def read_pairs(path: str | Path, on_error: str = "error") -> tuple[list[PrefPair], ReadReport]:
    """Read a preference JSONL file. ``on_error``: ``error`` (raise on the first bad line) or
    ``warn`` (drop bad lines, count them by reason, log a warning with the counts)."""
    if on_error not in ("error", "warn"):
        raise HsrmError(f"on_error must be 'error' or 'warn', got {on_error!r}")
    path = Path(path)
    rows = read_jsonl(path)
    if not rows:
        raise HsrmError(f"{path}: no preference pairs (empty file)")
    pairs: list[PrefPair] = []
    seen: set[str] = set()
    report = ReadReport()
    dropped = report.dropped
    if dropped is None:  # set by ReadReport.__post_init__
        raise HsrmError("read_pairs: ReadReport.dropped was not initialised")
    for row in rows:
        line = row.pop("_line")
        bad = _problem(row, seen)
        if bad is not None:
            if on_error == "error":
                raise HsrmError(f"{path}:{line}: {bad[1]}")
            dropped[bad[0]] += 1
            continue
        pid = str(row.get("id", f"line{line}"))
        seen.add(pid)
        group = str(row.get("group", row["prompt"]))
        extra = {k: v for k, v in row.items() if k not in (*FIELDS, "id", "group")}
        pairs.append(
            PrefPair(
                pid, row["prompt"], row["chosen"], row["rejected"], group, f"{path}:{line}", extra
            )
        )
    report.kept = len(pairs)
    if report.dropped:
        log.warning(
            "%s: dropped %d of %d lines (%s)",
            path,
            sum(report.dropped.values()),
            len(rows),
            ", ".join(f"{k}: {v}" for k, v in sorted(report.dropped.items())),
        )
    if not pairs:
        raise HsrmError(f"{path}: every line was invalid; nothing to read")
    return pairs, report


def write_pairs(path: str | Path, pairs: Sequence[PrefPair]) -> Path:
    """Write pairs as JSONL (``PrefPair.to_record``), atomically: the file ``trl.DPOTrainer`` and
    ``read_pairs`` read as it is."""
    import json

    from hsrm.io import atomic_write_text

    path = Path(path)
    atomic_write_text(
        path, "".join(json.dumps(p.to_record(), ensure_ascii=False) + "\n" for p in pairs)
    )
    return path


def truthfulqa_pairs(
    path: str | Path,
    max_answers: int = 3,
    all_combinations: bool = True,
    limit: int | None = None,
    seed: int = 0,
) -> list[PrefPair]:
    """Pairs (correct reference answer, incorrect reference answer) per TruthfulQA question.

    Per question, up to ``max_answers`` correct and ``max_answers`` incorrect answers (the best
    answer first, the rest drawn at random); ``all_combinations`` pairs each kept correct answer with
    each kept incorrect one (up to max_answers^2 pairs over 2 * max_answers distinct texts, so
    features are computed once per text), else they are zipped. ``group`` is the question id.
    """
    from hsrm.tasks.truthfulqa import load_truthfulqa

    rng = np.random.default_rng(seed)
    out = []
    for q in load_truthfulqa(path, limit=limit):
        corr = [q.best] + [a for a in q.correct if a != q.best]
        corr = corr[:1] + [corr[1:][i] for i in rng.permutation(len(corr) - 1)]
        inc = [q.incorrect[i] for i in rng.permutation(len(q.incorrect))]
        corr, inc = _dedupe(corr)[:max_answers], _dedupe(inc)[:max_answers]
        inc = [a for a in inc if a not in corr]
        if not inc:
            continue
        combos = [(c, r) for c in corr for r in inc] if all_combinations else list(zip(corr, inc))
        for j, (c, r) in enumerate(combos):
            out.append(
                PrefPair(f"{q.id}-{j}", q.question, c, r, q.id, f"{path}:{q.id[4:].lstrip('0')}")
            )
    return out


def _dedupe(xs: Sequence[str]) -> list[str]:
    seen, out = set(), []
    for x in xs:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def split_by_group(
    pairs: Sequence[PrefPair], test_frac: float = 0.2, seed: int = 0
) -> tuple[list[PrefPair], list[PrefPair]]:
    """Train / test split by ``group`` (question) with ``hsrm.splits.split_groups``: no question
    has pairs on both sides."""
    if not pairs:
        raise HsrmError("split_by_group: no pairs")
    tr, _ = split_groups(np.array([p.group for p in pairs]), test_frac, seed)
    return [p for p, t in zip(pairs, tr) if t], [p for p, t in zip(pairs, tr) if not t]


def load_pairs(
    source: str | Path, on_error: str = "error", max_answers: int = 3, seed: int = 0
) -> list[PrefPair]:
    """Pairs from a preference JSONL file or, for a ``.csv`` path, the TruthfulQA CSV."""
    if Path(source).suffix.lower() == ".csv":
        return truthfulqa_pairs(source, max_answers=max_answers, seed=seed)
    return read_pairs(source, on_error=on_error)[0]


def pair_prompt(question: str, system: str | None = None) -> Prompt:
    """A pair's question as a one-turn chat prompt (``system``: a system message; None = the chat
    template's default). Its text is ``hsrm.capture.prompt_text``, as for every other prompt."""
    msgs: tuple[dict[str, str], ...] = ({"role": "user", "content": question},)
    if system is not None:
        msgs = ({"role": "system", "content": system}, *msgs)
    return Prompt(id="pair", messages=msgs, answer="")


def pair_prompt_text(tokenizer, question: str, system: str | None = None) -> str:
    """The chat-formatted text of ``pair_prompt(question, system)``."""
    from hsrm.capture import prompt_text

    return prompt_text(tokenizer, pair_prompt(question, system))


def pair_texts(tokenizer, pairs: Sequence[PrefPair], system: str | None = None) -> list[str]:
    """Chat-formatted prompt + answer texts of every distinct (prompt, answer) in ``pairs``: the
    text an SAE for these pairs should be trained on."""
    seen, out = set(), []
    for p in pairs:
        for a in (p.chosen, p.rejected):
            if (p.prompt, a) not in seen:
                seen.add((p.prompt, a))
                out.append(pair_prompt_text(tokenizer, p.prompt, system) + a)
    return out
