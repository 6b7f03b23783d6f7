"""Tasks read from files: GSM8K JSONL, BIG-Bench Hard JSON, and generic JSONL (id, prompt, answer).

GSM8K and BIG-Bench Hard are asked few-shot, as in their papers (BBH: 3 exemplars, Suzgun et al.
2022; GSM8K: 8 worked solutions, Wei et al. 2022): zero-shot, a small model answers in the expected
form so rarely that a head learns the answer's format, not its truth. The exemplars are drawn, seeded,
from the same file and are never the question itself: ``fewshot="fixed"`` draws one set a file (those
rows are then not asked), ``"per_prompt"`` draws every prompt its own (many contexts in one store).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsrm.errors import HsrmError
from hsrm.io import read_json, read_jsonl
from hsrm.tasks.base import FEWSHOT, Message, Prompt, Task, last_number, normalize_text

_ANSWER_IS = re.compile(r"answer is[:\s]*(.+)", re.IGNORECASE)
#: a multiple-choice option in a BIG-Bench Hard input: "(A) 12/25/1937" on a line of its own
_OPTION = re.compile(r"^\(([A-Z])\)\s*(.+?)\s*$", re.MULTILINE)


def _limit(rows: list[Any], limit: int | None) -> list[Any]:
    if limit is not None and limit < 0:
        raise HsrmError(f"n_prompts must be >= 1, got {limit}")
    return rows if limit is None else rows[:limit]


def _text(v: Any, where: str, key: str, numbers: bool = False) -> str:
    """A field that must be a string (or, with ``numbers``, a number): anything else -> HsrmError
    naming the file, line and field, instead of being stringified ("['6', 'six']", "None")."""
    if isinstance(v, str):
        return v
    if numbers and isinstance(v, int | float) and not isinstance(v, bool):
        return str(v)
    want = "a string or a number" if numbers else "a string"
    quote = f' (quote it: "{v}")' if isinstance(v, int | float) and not isinstance(v, bool) else ""
    raise HsrmError(f"{where}: field {key!r} must be {want}, got {json.dumps(v)[:60]}{quote}")


@dataclass(frozen=True)
class _Row:
    """One question of a file, before few-shot turns are added."""

    index: int  # position in the file: prompt ids and exemplar draws are keyed on it
    id: str
    question: str  # the user turn
    shot: str  # the assistant turn when this row is a few-shot exemplar
    answer: str  # the reference
    family: str


class FewShotFileTask(Task):
    """A file task asked with ``shots`` exemplars from the same file (0 = zero-shot)."""

    prefill = ""

    def __init__(
        self,
        path: str | Path,
        limit: int | None = None,
        shots: int = 3,
        fewshot: str = "fixed",
        seed: int = 0,
    ):
        if shots < 0:
            raise HsrmError(f"shots must be >= 0, got {shots}")
        if fewshot not in FEWSHOT:
            raise HsrmError(f"fewshot must be one of {', '.join(FEWSHOT)}, got {fewshot!r}")
        self.path, self.limit = Path(path), limit
        self.shots, self.fewshot, self.seed = shots, fewshot, seed

    def rows(self) -> list[_Row]:
        raise NotImplementedError

    def _draw(self, distinct: list[_Row], key: str, skip: int | None) -> list[_Row]:
        """``shots`` rows of ``distinct`` (one row per question), never row ``skip``. Drawn as
        indices into the rows without ``skip``, so a draw costs O(shots), not O(file)."""
        n = len(distinct) - (skip is not None)
        picked = random.Random(key).sample(range(n), self.shots)
        return [distinct[i + (skip is not None and i >= skip)] for i in picked]

    def prompts(self) -> list[Prompt]:
        rows = self.rows()
        # one row per distinct question, so that an exemplar never repeats the question asked
        # (nor another exemplar) where a file holds a question twice
        first: dict[str, _Row] = {}
        for r in rows:
            first.setdefault(r.question, r)
        distinct, at = list(first.values()), {q: i for i, q in enumerate(first)}
        if self.shots and len(distinct) <= self.shots:  # one question must be left to ask
            raise HsrmError(
                f"{self.path}: {self.shots} few-shot examples need {self.shots + 1} distinct "
                f"questions, the file has {len(distinct)} (use --shots 0)"
            )
        key = f"fewshot-{self.name}-{self.path.stem}-{self.seed}"
        fixed = self._draw(distinct, key, None) if self.shots and self.fewshot == "fixed" else []
        shown = {r.question for r in fixed}
        asked = [r for r in rows if r.question not in shown]  # an exemplar is not also asked
        per_prompt = self.shots > 0 and self.fewshot == "per_prompt"
        out = []
        for r in _limit(asked, self.limit):
            shots = (
                self._draw(distinct, f"{key}-{r.index}", at[r.question]) if per_prompt else fixed
            )
            turns: list[Message] = []
            for x in shots:
                turns += [{"role": "user", "content": x.question}]
                turns += [{"role": "assistant", "content": x.shot}]
            out.append(
                Prompt(
                    id=r.id,
                    messages=(*turns, {"role": "user", "content": r.question}),
                    answer=r.answer,
                    family=r.family,
                    prefill=self.prefill,
                )
            )
        return out

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "path": str(self.path), "limit": self.limit}
        if self.shots:  # zero-shot stores keep the description they had before few-shot existed
            d.update(shots=self.shots, fewshot=self.fewshot, seed=self.seed)
        return d


class GSM8KTask(FewShotFileTask):
    """GSM8K: the reference is the number after ``####``; the check compares final numbers.
    An exemplar is its worked solution, calculator notes (``<<3+4=7>>``) dropped, ending
    "The answer is N."."""

    name = "gsm8k"
    instruction = "Solve the problem. End with 'The answer is N.' where N is a number."

    def rows(self) -> list[_Row]:
        out = []
        for r in read_jsonl(self.path):
            for key in ("question", "answer"):
                if key not in r:
                    raise HsrmError(f"{self.path}:{r['_line']}: missing field {key!r}")
            where = f"{self.path}:{r['_line']}"
            _text(r["question"], where, "question")
            _text(r["answer"], where, "answer")
            if "####" not in r["answer"]:
                raise HsrmError(f"{self.path}:{r['_line']}: field 'answer' has no '#### <number>'")
            work, _, ref = r["answer"].rpartition("####")
            ref = ref.strip().replace(",", "")
            work = re.sub(r"<<[^>]*>>", "", work).strip()
            out.append(
                _Row(
                    index=r["_line"],
                    id=f"gsm8k-{r['_line']:05d}",
                    question=f"{r['question']}\n{self.instruction}",
                    shot=f"{work}\nThe answer is {ref}.",
                    answer=ref,
                    family="gsm8k",
                )
            )
        return out

    def extract(self, completion: str, prompt: Prompt) -> str | None:
        m = _ANSWER_IS.search(completion)
        return last_number(m.group(1)) if m and last_number(m.group(1)) else last_number(completion)


class BBHTask(FewShotFileTask):
    """A BIG-Bench Hard task file; exact match after normalisation. The answer turn starts
    "The answer is " (prefilled); an exemplar's is "The answer is TARGET."."""

    name = "bbh"
    prefill = "The answer is "

    def rows(self) -> list[_Row]:
        if not self.path.exists():
            raise HsrmError(f"file not found: {self.path}")
        data = read_json(self.path, "BIG-Bench Hard task file")
        if not isinstance(data, dict) or "examples" not in data:
            raise HsrmError(f"{self.path}: missing field 'examples'")
        if not isinstance(data["examples"], list):
            raise HsrmError(f"{self.path}: field 'examples' must be a list")
        fam = self.path.stem
        out = []
        for i, ex in enumerate(data["examples"]):
            where = f"{self.path}: examples[{i}]"
            if not isinstance(ex, dict):
                raise HsrmError(f"{where} must be an object")
            for key in ("input", "target"):
                if key not in ex:
                    raise HsrmError(f"{where} is missing field {key!r}")
            target = _text(ex["target"], where, "target", numbers=True)
            out.append(
                _Row(
                    index=i,
                    id=f"{fam}-{i:05d}",
                    question=_text(ex["input"], where, "input"),
                    shot=f"{self.prefill}{target}.",
                    answer=target,
                    family=fam,
                )
            )
        return out

    def extract(self, completion: str, prompt: Prompt) -> str | None:
        """The answer's first sentence. On a multiple-choice question (options "(A) text" in the
        input) an answer that names an option, by letter ("(B) The quail ...") or by its whole text
        ("12/25/1937"), is that option's letter: small models often answer with the option's text,
        and the target is the letter. A leading "- " (the look of "Options: - valid - invalid")
        is dropped."""
        line = completion.strip().split("\n", 1)[0].strip()
        first = re.split(r"\.(?:\s|$)", line, maxsplit=1)[0].strip()
        options = {normalize_text(t): f"({k})" for k, t in _OPTION.findall(prompt.question)}
        if options:
            letter = re.match(r"\(([A-Z])\)(?:\s|$)", first)
            if letter and f"({letter.group(1)})" in options.values():
                return f"({letter.group(1)})"
            named = options.get(normalize_text(first)) or options.get(normalize_text(line))
            if named:
                return named
        first = re.sub(r"^-\s+", "", first)
        return first or None

    def check(self, extracted: str | None, prompt: Prompt) -> bool:
        return extracted is not None and normalize_text(extracted) == normalize_text(prompt.answer)


class JsonlTask(Task):
    """Generic JSONL with ``id``, ``prompt``, ``answer`` (optional ``family``); numeric or exact match."""

    name = "jsonl"

    def __init__(self, path: str | Path, limit: int | None = None, prefill: str = "The answer is "):
        self.path, self.limit, self.prefill = Path(path), limit, prefill

    def prompts(self) -> list[Prompt]:
        out: list[Prompt] = []
        seen: dict[str, int] = {}
        for r in _limit(read_jsonl(self.path), self.limit):
            for key in ("id", "prompt", "answer"):
                if key not in r:
                    raise HsrmError(f"{self.path}:{r['_line']}: missing field {key!r}")
            where = f"{self.path}:{r['_line']}"
            pid = _text(r["id"], where, "id", numbers=True)
            if pid in seen:
                raise HsrmError(
                    f"{self.path}:{r['_line']}: duplicate id {pid!r} (first on line {seen[pid]})"
                )
            seen[pid] = r["_line"]
            out.append(
                Prompt(
                    id=pid,
                    messages=({"role": "user", "content": _text(r["prompt"], where, "prompt")},),
                    # a string only: a number would be graded as Python prints it ("2.5" for
                    # 2.50, "1e+20"), not as the file wrote it
                    answer=_text(r["answer"], where, "answer"),
                    family=_text(r.get("family", "default"), where, "family"),
                    prefill=self.prefill,
                )
            )
        return out

    def extract(self, completion: str, prompt: Prompt) -> str | None:
        if last_number(prompt.answer) == normalize_text(prompt.answer):
            return super().extract(completion, prompt)
        first = re.split(r"[\n.]", completion.strip(), maxsplit=1)[0].strip()
        return first or None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "limit": self.limit}
