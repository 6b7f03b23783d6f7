"""The embedded, seeded, shortcut-controlled synthetic task.

Each family mixes question types so that no property of the answer alone predicts correctness:
``arith`` mixes a+b and a-b, ``compare`` mixes "larger" and "smaller" (a head that learns
"the bigger number is right" is right only half the time), ``count`` asks for letters whose counts
vary, ``cot`` mixes two- and three-step sums/differences answered with a worked chain of thought
("7 + 5 = 12. 12 - 3 = 9. The answer is 9."; 15-40 answer tokens, long enough for early pruning).
SmolLM2-135M needs a few-shot chat prompt and the prefill "The answer is " (``cot``: "") to answer.

``fewshot="per_prompt"`` draws each prompt's few-shot examples from its own seeded stream, so that
a store holds many contexts; ``"fixed"`` (the default) keeps one set of examples per family.
``avoid=(seed, n)`` never asks a question that the first ``n`` prompts of task seed ``seed`` (same
families and operand range) asked, until the questions left run out. That gives a test store of
questions no head was trained on (the demo's fresh store): another task seed alone draws from the
same small question space (arith 800 questions, compare 760).
"""

from __future__ import annotations

import random
import re
from typing import Any

from hsrm.errors import HsrmError
from hsrm.tasks.base import (
    FEWSHOT,
    Message,
    Prompt,
    Task,
    _norm_number,
    first_number,
    last_number,
)

FAMILIES = ("arith", "compare", "count", "cot")
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
    if family == "cot":
        q, _, final, qtype = _make_cot(rng, lo, hi)
        return q, final, qtype
    raise HsrmError(f"unknown synthetic family {family!r}; known: {', '.join(FAMILIES)}")


def _make_cot(rng: random.Random, lo: int, hi: int) -> tuple[str, str, str, str]:
    """(question, worked answer, final answer, question type) of a two- or three-step sum.

    Operands are single digits and every partial result stays >= 0: with 1..20 and negatives the
    embedded model was right 4% of the time (96 samples), below the 10-50% the family targets."""
    hi = min(hi, 9)
    steps = 2 if rng.random() < 0.5 else 3
    x = rng.randint(lo, hi)
    expr, work = str(x), []
    for _ in range(steps):
        b = rng.randint(lo, hi)
        op = "+" if (rng.random() < 0.5 or b > x) else "-"
        y = x + b if op == "+" else x - b
        expr += f" {op} {b}"
        work.append(f"{x} {op} {b} = {y}.")
        x = y
    return f"What is {expr}?", " ".join(work) + f" The answer is {x}.", str(x), f"{steps}step"


_ANSWER_IS = re.compile(r"answer is\s*(-?\d[\d,]*(?:\.\d+)?)", re.I)


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
        fewshot: str = "fixed",
        avoid: tuple[int, int] | None = None,
    ):
        if isinstance(families, str):
            families = tuple(f.strip() for f in families.split(",") if f.strip())
        for f in families:
            if f not in FAMILIES:
                raise HsrmError(f"unknown synthetic family {f!r}; known: {', '.join(FAMILIES)}")
        if shots < 1:  # the answer format is taught by the examples alone
            raise HsrmError(f"the synthetic task needs shots >= 1, got {shots}")
        if fewshot not in FEWSHOT:
            raise HsrmError(
                f"synthetic fewshot must be one of {', '.join(FEWSHOT)}, got {fewshot!r}"
            )
        if avoid is not None and (len(avoid) != 2 or avoid[1] < 0):
            raise HsrmError(f"synthetic avoid must be (task seed, prompts >= 0), got {avoid!r}")
        self.fewshot = fewshot
        self.avoid = None if avoid is None else (int(avoid[0]), int(avoid[1]))
        self.n, self.families, self.seed, self.lo, self.hi, self.shots = (
            n,
            families,
            seed,
            lo,
            hi,
            shots,
        )

    def _fewshot(self, family: str, index: int | None = None, avoid: str = "") -> list[Message]:
        """Few-shot turns: one fixed set per family, or (``index`` given) prompt ``index``'s own."""
        key = f"fewshot-{family}-{self.seed}" + ("" if index is None else f"-{index}")
        rng = random.Random(key)
        turns: list[Message] = []
        while len(turns) < 2 * self.shots:
            if family == "cot":
                q, work, _, _ = _make_cot(rng, self.lo, self.hi)
                a = work
            else:
                q, ans, _ = _make(family, rng, self.lo, self.hi)
                a = f"The answer is {ans}."
            if q == avoid:
                continue  # never show the question itself as an example
            turns += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return turns

    def _questions(self, seed: int, n: int, seen: set[str]) -> list[tuple[str, str, str, str]]:
        """The first ``n`` (family, question, answer, question type) of task seed ``seed``, each
        question new to ``seen`` (which gains them) until about 50 n draws, then repeats."""
        rng = random.Random(f"synthetic-{seed}")
        out: list[tuple[str, str, str, str]] = []
        i = 0
        while len(out) < n:
            fam = self.families[i % len(self.families)]
            i += 1
            q, a, qtype = _make(fam, rng, self.lo, self.hi)
            if q in seen and i < 50 * n:
                continue  # distinct questions, so that a split by prompt is a split by question
            seen.add(q)
            out.append((fam, q, a, qtype))
        return out

    def prompts(self) -> list[Prompt]:
        seen: set[str] = set()
        if self.avoid is not None:  # the other task's questions, drawn as that task draws them
            seen = {q for _, q, _, _ in self._questions(*self.avoid, set())}
        out: list[Prompt] = []
        shots = {f: self._fewshot(f) for f in self.families}
        for fam, q, a, qtype in self._questions(self.seed, self.n, seen):
            ctx = shots[fam] if self.fewshot == "fixed" else self._fewshot(fam, len(out), q)
            msgs = (*ctx, {"role": "user", "content": q})
            out.append(
                Prompt(
                    id=f"{fam}-{len(out):05d}",
                    messages=msgs,
                    answer=a,
                    family=fam,
                    prefill="" if fam == "cot" else "The answer is ",
                    meta={"qtype": qtype},
                )
            )
        return out

    def describe(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "n": self.n,
            "families": list(self.families),
            "seed": self.seed,
            "range": [self.lo, self.hi],
            "shots": self.shots,
        }
        if self.fewshot != "fixed":  # stores written before the option keep their description
            d["fewshot"] = self.fewshot
        if self.avoid is not None:  # likewise
            d["avoid_questions"] = list(self.avoid)
        return d

    def extract(self, completion: str, prompt: Prompt) -> str | None:
        """``cot``: the number after "The answer is" (else the last number); others: the first."""
        if prompt.family == "cot":
            m = _ANSWER_IS.search(completion)
            return _norm_number(m.group(1)) if m else last_number(completion)
        return first_number(completion)
