"""reasoning-gym's procedural generators as a task: ``rg:NAME[,NAME...]`` (extra ``hsrm[rg]``).

Spec: generators separated by commas, each optionally with its settings in parentheses,
``rg:lcm(min_value=2,max_value=50),count_bits``. A value is a Python literal (``2``, ``0.5``,
``True``, ``'x'``, ``[1,2]``) or else a bare word, taken as a string. Keys are the fields of the
generator's config dataclass; ``seed`` and ``size`` are hsrm's to set (``--task-seed``,
``--n-prompts``) and are refused.

- Prompts: generators asked in turn (prompt i asks generator i mod k); each generator is one
  ``family``. Its questions come from ``reasoning_gym`` with a seed derived from the task seed and
  the generator's name (recorded in the store's task description), never ``task_seed`` itself:
  item ``idx`` of seed ``s`` is ``Random(s + idx)``, so seeds 0 and 1 would share all but one
  question. A question already asked in the store is skipped (a split by prompt is then a split by
  question), until the generator has none left to give.
- Few-shot: ``shots`` exemplars from the same generator drawn with another derived seed, never the
  question asked (compared by text); ``fewshot="per_prompt"`` draws every prompt its own,
  ``"fixed"`` one set per generator (whose questions are then not asked). An exemplar's answer turn
  is ``"The answer is ANSWER."``; the model's turn is prefilled with ``"The answer is"`` (no
  trailing space: the answer's first token carries its space, as in the exemplars).
- Extraction: the completion's first line up to its first sentence end (a period followed by a
  space or the end of the line), stripped; ``"2842. So ..."`` -> ``"2842"``, ``"0.3125."`` ->
  ``"0.3125"``. An empty answer is None.
- Labels: the generator's own verifier, ``dataset.score_answer(answer, entry)``; right when it
  scores 1.0 (its partial credit, e.g. for a trivial but valid conclusion, counts as wrong).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import random
import re
from importlib import metadata
from typing import Any

from hsrm.errors import HsrmError
from hsrm.tasks.base import FEWSHOT, Message, Prompt, Task

#: no trailing space: SmolLM2's tokenizer writes " Yes" as one token, so after a prefill ending in
#: a lone space the embedded model answers digits (P("1") 0.59, P(" Yes") 0.04 on a syllogism;
#: without the space P(" No") 0.65, P(" Yes") 0.34); numbers tokenise as "Ġ" + digits either way
PREFILL = "The answer is"
#: a question seen this many times in a row means the generator has no new one left to give
_MAX_REPEATS = 200
_SENTENCE_END = re.compile(r"\.(?:\s|$)")


def _import_rg() -> Any:
    try:
        import reasoning_gym
    except ImportError:
        raise HsrmError(
            "the rg: task needs the reasoning-gym package: pip install hsrm[rg]"
        ) from None
    return reasoning_gym


def _split_top(text: str, where: str) -> list[str]:
    """``text`` split at the commas outside parentheses, brackets and quotes."""
    parts, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise HsrmError(f"{where}: unbalanced {ch!r}")
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    if depth or quote:
        raise HsrmError(f"{where}: unbalanced parentheses or quotes")
    return [*parts, cur]


def _value(text: str) -> Any:
    try:
        v = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: a string
    return tuple(v) if isinstance(v, list) else v


_SPEC = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(?:\((.*)\))?\s*$", re.DOTALL)


def parse_spec(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """``"lcm(min_value=2),count_bits"`` -> ``[("lcm", {"min_value": 2}), ("count_bits", {})]``
    (syntax only; ``RGTask`` checks the names and keys against reasoning-gym)."""
    where = f"task rg:{spec}"
    if not spec.strip():
        raise HsrmError("task 'rg' needs generators: rg:NAME[,NAME...] (e.g. rg:count_bits)")
    out: list[tuple[str, dict[str, Any]]] = []
    for part in _split_top(spec, where):
        m = _SPEC.match(part)
        if not m:
            raise HsrmError(
                f"{where}: {part.strip()!r} is not NAME or NAME(key=value,...)"
                if part.strip()
                else f"{where}: empty generator name"
            )
        name, opts = m.group(1), {}
        body = (m.group(2) or "").strip()
        for kv in _split_top(body, where) if body else []:
            key, eq, val = kv.partition("=")
            key = key.strip()
            if not eq or not re.fullmatch(r"[A-Za-z_]\w*", key) or not val.strip():
                raise HsrmError(f"{where}: setting {kv.strip()!r} of {name} is not key=value")
            if key in opts:
                raise HsrmError(f"{where}: setting {key!r} of {name} is given twice")
            opts[key] = _value(val.strip())
        if name in (n for n, _ in out):
            raise HsrmError(f"{where}: generator {name!r} is named twice")
        out.append((name, opts))
    return out


def derived_seed(task_seed: int, name: str, purpose: str) -> int:
    """A seed for generator ``name`` (``purpose``: questions | fewshot), far from the others:
    reasoning-gym seeds item idx with ``seed + idx``, so nearby seeds share questions."""
    h = hashlib.sha256(f"hsrm-rg-{task_seed}-{name}-{purpose}".encode()).digest()
    return int.from_bytes(h[:4], "big") % 2**31


def _check_type(where: str, key: str, value: Any, default: Any) -> None:
    """A setting of the wrong kind (``min_value=abc``) is refused here, not deep in the generator.
    Settings whose default is None or of another kind are left to the generator's own check."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, tuple | list):
        ok = isinstance(value, tuple | list)
    else:
        ok = True
    if not ok:
        raise HsrmError(f"{where}: setting {key}={value!r} must be like its default {default!r}")


class _Generator:
    """One reasoning-gym generator: its question and exemplar datasets."""

    def __init__(self, rg: Any, name: str, opts: dict[str, Any], task_seed: int):
        where = f"task rg:{name}"
        if name not in rg.factory.DATASETS:
            raise HsrmError(
                f"{where}: unknown reasoning-gym generator {name!r} (list them: python -c "
                "'import reasoning_gym; print(sorted(reasoning_gym.factory.DATASETS))')"
            )
        dcls, ccls = rg.factory.DATASETS[name]
        fields = {f.name: f for f in dataclasses.fields(ccls)}
        defaults = ccls()
        for key, value in opts.items():
            if key in ("seed", "size"):
                raise HsrmError(
                    f"{where}: setting {key!r} is hsrm's (--task-seed, --n-prompts), not the task's"
                )
            if key not in fields:
                known = ", ".join(k for k in fields if k not in ("seed", "size"))
                raise HsrmError(f"{where}: unknown setting {key!r}; {name} has: {known}")
            _check_type(where, key, value, getattr(defaults, key))
        self.name, self.opts = name, dict(opts)
        self.seed = derived_seed(task_seed, name, "questions")
        self.fewshot_seed = derived_seed(task_seed, name, "fewshot")
        try:
            # size is only an upper bound on the index (items are made on demand)
            self.questions = dcls(ccls(**opts, seed=self.seed, size=2**30))
            self.exemplars = dcls(ccls(**opts, seed=self.fewshot_seed, size=2**30))
        except (AssertionError, ValueError, TypeError) as e:
            raise HsrmError(f"{where}: bad settings {opts!r}: {e or type(e).__name__}") from None

    def entry(self, idx: int, exemplar: bool = False) -> dict[str, Any]:
        ds = self.exemplars if exemplar else self.questions
        try:
            e = ds[idx]
        except (AssertionError, ValueError, TypeError, IndexError) as err:
            raise HsrmError(
                f"task rg:{self.name}: settings {self.opts!r} do not generate: {err}"
            ) from None
        return dict(e)


def reference(entry: dict[str, Any]) -> str | None:
    """The entry's answer; where a generator checks answers without one (``propositional_logic``:
    any valid conclusion), the example answer of its metadata."""
    ans = entry.get("answer")
    if ans is None:
        ans = (entry.get("metadata") or {}).get("example_answer")
    return None if ans is None else str(ans)


class RGTask(Task):
    """``n`` prompts from reasoning-gym generators (``spec``: ``NAME[(k=v,...)][,NAME...]``)."""

    name = "rg"

    def __init__(
        self,
        spec: str,
        limit: int | None = None,
        shots: int = 3,
        fewshot: str = "fixed",
        seed: int = 0,
        n: int | None = None,
    ):
        if shots < 1:  # the answer format ("The answer is X.") is taught by the exemplars alone
            raise HsrmError(f"task rg: needs shots >= 1, got {shots}")
        if fewshot not in FEWSHOT:
            raise HsrmError(f"fewshot must be one of {', '.join(FEWSHOT)}, got {fewshot!r}")
        count = limit if limit is not None else n if n is not None else 320
        if count < 1:
            raise HsrmError(f"n_prompts must be >= 1, got {count}")
        parsed = parse_spec(spec)
        rg = _import_rg()
        self.spec, self.n, self.shots, self.fewshot, self.seed = spec, count, shots, fewshot, seed
        self.generators = [_Generator(rg, g, o, seed) for g, o in parsed]
        try:
            self.version = metadata.version("reasoning-gym")
        except metadata.PackageNotFoundError:  # a source checkout
            self.version = str(getattr(rg, "__version__", "unknown"))

    def _exemplars(self, gen: _Generator, key: str, avoid: set[str]) -> list[dict[str, Any]]:
        """``shots`` entries of ``gen``'s exemplar seed, distinct, none of them in ``avoid``."""
        rng = random.Random(key)
        out: list[dict[str, Any]] = []
        questions = set(avoid)
        for _ in range(_MAX_REPEATS * self.shots):
            e = gen.entry(rng.randrange(2**20), exemplar=True)
            if e["question"] in questions or reference(e) is None:
                continue
            questions.add(e["question"])
            out.append(e)
            if len(out) == self.shots:
                return out
        raise HsrmError(
            f"task rg:{gen.name}: found only {len(out)} distinct exemplars for {self.shots} shots"
        )

    @staticmethod
    def _turns(shots: list[dict[str, Any]]) -> list[Message]:
        turns: list[Message] = []
        for e in shots:
            turns += [{"role": "user", "content": e["question"]}]
            turns += [{"role": "assistant", "content": f"{PREFILL} {reference(e)}."}]
        return turns

    def prompts(self) -> list[Prompt]:
        fixed = {
            g.name: self._exemplars(g, f"rg-fewshot-{g.name}-{self.seed}", set())
            for g in self.generators
            if self.fewshot == "fixed"
        }
        shown = {e["question"] for shots in fixed.values() for e in shots}  # never also asked
        asked: set[str] = set()
        nxt = {g.name: 0 for g in self.generators}  # each generator's next question index
        out: list[Prompt] = []
        for i in range(self.n):
            gen = self.generators[i % len(self.generators)]
            repeat = None  # an asked question, asked again once the generator has no new one
            for _ in range(_MAX_REPEATS):
                idx = nxt[gen.name]
                nxt[gen.name] += 1
                entry = gen.entry(idx)
                if entry["question"] in shown:
                    continue
                if entry["question"] not in asked:
                    break
                repeat = repeat or (idx, entry)
            else:  # _MAX_REPEATS repeats in a row: the generator's questions are used up
                if repeat is None:
                    raise HsrmError(
                        f"task rg:{gen.name}: every question left is one of its few-shot "
                        "exemplars (use --fewshot per_prompt or wider settings)"
                    )
                idx, entry = repeat
            q = entry["question"]
            asked.add(q)
            if self.fewshot == "fixed":
                shots = fixed[gen.name]
            else:
                shots = self._exemplars(gen, f"rg-fewshot-{gen.name}-{self.seed}-{i}", {q})
            out.append(
                Prompt(
                    id=f"{gen.name}-{i:05d}",
                    messages=(*self._turns(shots), {"role": "user", "content": q}),
                    answer=reference(entry) or "",
                    family=gen.name,
                    prefill=PREFILL,
                    meta={"qtype": gen.name, "rg_index": idx, "entry": entry},
                )
            )
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "generators": [
                {"name": g.name, "settings": g.opts, "seed": g.seed, "fewshot_seed": g.fewshot_seed}
                for g in self.generators
            ],
            "n": self.n,
            "seed": self.seed,
            "shots": self.shots,
            "fewshot": self.fewshot,
            "reasoning_gym": self.version,
        }

    def extract(self, completion: str, prompt: Prompt) -> str | None:
        line = completion.strip().split("\n", 1)[0]
        ans = _SENTENCE_END.split(line, maxsplit=1)[0].strip()
        return ans or None

    def score(self, answer: str | None, prompt: Prompt) -> float:
        """The generator's own verifier's score of ``answer`` (0.0 where it raises: a verifier
        that cannot read a malformed answer has not found it right)."""
        gen = next((g for g in self.generators if g.name == prompt.family), None)
        entry = prompt.meta.get("entry") if isinstance(prompt.meta, dict) else None
        if gen is None or entry is None:
            raise HsrmError(f"prompt {prompt.id!r} was not made by this task ({self.spec})")
        try:
            return float(gen.questions.score_answer(answer, entry))
        except Exception:  # noqa: BLE001 - any verifier failure reads as "not right"
            return 0.0

    def check(self, extracted: str | None, prompt: Prompt) -> bool:
        return extracted is not None and self.score(extracted, prompt) >= 1.0
