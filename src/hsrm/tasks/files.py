"""Tasks read from files: GSM8K JSONL, BIG-Bench Hard JSON, and generic JSONL (id, prompt, answer)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hsrm.errors import HsrmError
from hsrm.io import read_json, read_jsonl
from hsrm.tasks.base import Prompt, Task, last_number, normalize_text

_ANSWER_IS = re.compile(r"answer is[:\s]*(.+)", re.IGNORECASE)


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
    raise HsrmError(f"{where}: field {key!r} must be {want}, got {json.dumps(v)[:60]}")


class GSM8KTask(Task):
    """GSM8K: the reference is the number after ``####``; the check compares final numbers."""

    name = "gsm8k"
    instruction = "Solve the problem. End with 'The answer is N.' where N is a number."

    def __init__(self, path: str | Path, limit: int | None = None):
        self.path, self.limit = Path(path), limit

    def prompts(self) -> list[Prompt]:
        out = []
        for r in _limit(read_jsonl(self.path), self.limit):
            for key in ("question", "answer"):
                if key not in r:
                    raise HsrmError(f"{self.path}:{r['_line']}: missing field {key!r}")
            where = f"{self.path}:{r['_line']}"
            _text(r["question"], where, "question")
            _text(r["answer"], where, "answer")
            if "####" not in r["answer"]:
                raise HsrmError(f"{self.path}:{r['_line']}: field 'answer' has no '#### <number>'")
            ref = r["answer"].split("####")[-1].strip().replace(",", "")
            out.append(
                Prompt(
                    id=f"gsm8k-{r['_line']:05d}",
                    messages=({"role": "user", "content": f"{r['question']}\n{self.instruction}"},),
                    answer=ref,
                    family="gsm8k",
                )
            )
        return out

    def extract(self, completion: str, prompt: Prompt) -> str | None:
        m = _ANSWER_IS.search(completion)
        return last_number(m.group(1)) if m and last_number(m.group(1)) else last_number(completion)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "limit": self.limit}


class BBHTask(Task):
    """A BIG-Bench Hard task file; exact match after normalisation."""

    name = "bbh"

    def __init__(self, path: str | Path, limit: int | None = None):
        self.path, self.limit = Path(path), limit

    def prompts(self) -> list[Prompt]:
        if not self.path.exists():
            raise HsrmError(f"file not found: {self.path}")
        data = read_json(self.path, "BIG-Bench Hard task file")
        if not isinstance(data, dict) or "examples" not in data:
            raise HsrmError(f"{self.path}: missing field 'examples'")
        if not isinstance(data["examples"], list):
            raise HsrmError(f"{self.path}: field 'examples' must be a list")
        fam = self.path.stem
        out = []
        for i, ex in enumerate(_limit(data["examples"], self.limit)):
            where = f"{self.path}: examples[{i}]"
            if not isinstance(ex, dict):
                raise HsrmError(f"{where} must be an object")
            for key in ("input", "target"):
                if key not in ex:
                    raise HsrmError(f"{where} is missing field {key!r}")
            out.append(
                Prompt(
                    id=f"{fam}-{i:05d}",
                    messages=({"role": "user", "content": _text(ex["input"], where, "input")},),
                    answer=_text(ex["target"], where, "target", numbers=True),
                    family=fam,
                    prefill="The answer is ",
                )
            )
        return out

    def extract(self, completion: str, prompt: Prompt) -> str | None:
        first = re.split(r"[\n.]", completion.strip(), maxsplit=1)[0].strip()
        return first or None

    def check(self, extracted: str | None, prompt: Prompt) -> bool:
        return extracted is not None and normalize_text(extracted) == normalize_text(prompt.answer)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "limit": self.limit}


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
                    answer=_text(r["answer"], where, "answer", numbers=True),
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
