"""The embedded, seeded, shortcut-controlled synthetic task.

Each family mixes question types so that no property of the answer alone predicts correctness:
``arith`` mixes a+b and a-b, ``compare`` mixes "larger" and "smaller" (a head that learns
"the bigger number is right" is right only half the time), ``count`` asks for letters whose counts
vary. SmolLM2-135M needs a few-shot chat prompt and the prefill "The answer is " to answer at all.
"""

from __future__ import annotations

import random
from typing import Any

from hsrm.errors import HsrmError
from hsrm.tasks.base import Message, Prompt, Task

FAMILIES = ("arith", "compare", "count")
_WORDS = (
    "banana strawberry mississippi letter committee balloon coffee pepper bookkeeper parallel "
    "assessment tomorrow accommodation success address bubble giraffe hippopotamus cinnamon "
    "broccoli butterfly kangaroo raccoon spaghetti tennessee possession vacuum referee mirror"
).split()


def _make(family: str, rng: random.Random, lo: int, hi: int) -> tuple[str, str, str]:
    """(question, answer, question type) for one family."""
    if family == "arith":
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if rng.random() < 0.5:
            return f"What is {a} + {b}?", str(a + b), "add"
        return f"What is {a} - {b}?", str(a - b), "sub"
    if family == "compare":
        a, b = rng.sample(range(lo, hi + 1), 2)
        if rng.random() < 0.5:
            return f"Which number is larger, {a} or {b}?", str(max(a, b)), "larger"
        return f"Which number is smaller, {a} or {b}?", str(min(a, b)), "smaller"
    if family == "count":
        w = rng.choice(_WORDS)
        letters = sorted(set(w))
        c = rng.choice(letters)
        return f"How many times does the letter '{c}' appear in '{w}'?", str(w.count(c)), "count"
    raise HsrmError(f"unknown synthetic family {family!r}; known: {', '.join(FAMILIES)}")


class SyntheticTask(Task):
    """``n`` prompts, families drawn in turn; the few-shot examples come from a separate seed."""

    name = "synthetic"

    def __init__(
        self,
        n: int = 320,
        families: tuple[str, ...] | str = ("arith", "compare"),
        seed: int = 0,
        lo: int = 1,
        hi: int = 20,
        shots: int = 3,
    ):
        if isinstance(families, str):
            families = tuple(f.strip() for f in families.split(",") if f.strip())
        for f in families:
            if f not in FAMILIES:
                raise HsrmError(f"unknown synthetic family {f!r}; known: {', '.join(FAMILIES)}")
        self.n, self.families, self.seed, self.lo, self.hi, self.shots = (
            n,
            families,
            seed,
            lo,
            hi,
            shots,
        )

    def _fewshot(self, family: str) -> list[Message]:
        rng = random.Random(f"fewshot-{family}-{self.seed}")
        turns: list[Message] = []
        for _ in range(self.shots):
            q, a, _ = _make(family, rng, self.lo, self.hi)
            turns += [
                {"role": "user", "content": q},
                {"role": "assistant", "content": f"The answer is {a}."},
            ]
        return turns

    def prompts(self) -> list[Prompt]:
        rng = random.Random(f"synthetic-{self.seed}")
        out: list[Prompt] = []
        seen: set[str] = set()
        shots = {f: self._fewshot(f) for f in self.families}
        i = 0
        while len(out) < self.n:
            fam = self.families[i % len(self.families)]
            i += 1
            q, a, qtype = _make(fam, rng, self.lo, self.hi)
            if q in seen and i < 50 * self.n:
                continue  # distinct questions, so that a split by prompt is a split by question
            seen.add(q)
            msgs = (*shots[fam], {"role": "user", "content": q})
            out.append(
                Prompt(
                    id=f"{fam}-{len(out):05d}",
                    messages=msgs,
                    answer=a,
                    family=fam,
                    prefill="The answer is ",
                    meta={"qtype": qtype},
                )
            )
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n": self.n,
            "families": list(self.families),
            "seed": self.seed,
            "range": [self.lo, self.hi],
            "shots": self.shots,
        }
