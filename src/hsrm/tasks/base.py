"""The task contract: prompts with ids, answer extraction, and a checker."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]

#: how few-shot exemplars are drawn: one set for every prompt, or each prompt its own
FEWSHOT = ("fixed", "per_prompt")


@dataclass(frozen=True)
class Prompt:
    """One question. ``messages`` is the chat (few-shot turns included); the assistant turn
    starts with ``prefill`` (e.g. "The answer is "), which the model continues."""

    id: str
    messages: tuple[Message, ...]
    answer: str  # reference answer, as a string
    family: str = "default"
    prefill: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]


_INT = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def first_number(text: str) -> str | None:
    m = _INT.search(text)
    return _norm_number(m.group(0)) if m else None


def last_number(text: str) -> str | None:
    found = _INT.findall(text)
    return _norm_number(found[-1]) if found else None


def _norm_number(s: str) -> str:
    s = s.replace(",", "").rstrip(".")
    try:
        v = float(s)
    except ValueError:
        return s
    return str(int(v)) if v == int(v) else str(v)


def normalize_text(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip().strip(".").strip()).lower()


class Task:
    """A set of prompts plus how to read and check an answer. Subclasses set ``name``."""

    name = "task"

    def prompts(self) -> list[Prompt]:
        raise NotImplementedError

    def extract(self, completion: str, prompt: Prompt) -> str | None:
        """The final answer in ``completion`` (text generated after the prefill), or None."""
        return first_number(completion)

    def check(self, extracted: str | None, prompt: Prompt) -> bool:
        if extracted is None:
            return False
        a, b = _norm_number(extracted), _norm_number(prompt.answer)
        return a == b or normalize_text(extracted) == normalize_text(prompt.answer)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def label(self, text: str, prompt: Any) -> bool:
        """Is this completion of ``prompt`` right? (extract, then check)."""
        return bool(self.check(self.extract(text, prompt), prompt))

    def grade(self, results: Sequence[Any]) -> list[list[tuple[str | None, bool]]]:
        """(extracted answer, label) of every answer of every sampled prompt: ``results`` are
        ``hsrm.capture.PromptResult`` s (``.prompt``, ``.answers[i].text``). The store records
        these; judging answers is the task's job, not the store's."""
        out = []
        for r in results:
            row = []
            for a in r.answers:
                extracted = self.extract(a.text, r.prompt)
                row.append((extracted, bool(self.check(extracted, r.prompt))))
            out.append(row)
        return out
