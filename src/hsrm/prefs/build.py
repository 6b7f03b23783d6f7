"""Preference pairs for DPO from a policy's own samples (SparseRM's downstream use).

Sample K answers per prompt, score them with a head (features captured while sampling, or
teacher-forced through a separate frozen scoring model) and/or a task verifier, and keep one
(chosen, rejected) pair per prompt:

* ``select="head"``: best vs worst by head score, kept when the score gap is at least ``margin``;
  with a verifier and ``drop_disagreements``, pairs the head ranks against the verifier are dropped;
* ``select="verifier"``: a correct vs an incorrect answer (the ceiling when a checker exists);
* ``select="random"``: two different answers in random order (the unfiltered control).

The JSONL lines (``prompt``, ``chosen``, ``rejected`` strings, plus ``id``, ``group`` and scores) are
TRL's standard preference format: ``trl.DPOTrainer`` reads them as they are. ``prompt`` is the
chat-formatted prompt with the task's prefill, so ``chosen`` / ``rejected`` are exactly the sampled
continuations.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hsrm.capture import SampleConfig, prompt_text, sample_prompt, teacher_force
from hsrm.errors import HsrmError
from hsrm.features import TokenFeatures
from hsrm.heads.base import Head
from hsrm.models import LoadedModel
from hsrm.prefs.data import PrefPair, read_pairs, write_pairs
from hsrm.tasks.base import Prompt, Task

log = logging.getLogger(__name__)

SELECTS = ("head", "verifier", "random")

__all__ = [
    "SELECTS",
    "PromptSamples",
    "build_pairs",
    "pair_stats",
    "read_pairs",
    "sample_and_score",
    "select_pairs",
    "write_pairs",
]


@dataclass
class PromptSamples:
    """K sampled answers to one prompt with their head scores and verifier labels (either may be None)."""

    prompt: Prompt
    prompt_text: str
    texts: list[str]
    scores: np.ndarray | None  # (K,)
    labels: np.ndarray | None  # (K,) 1 = correct


def sample_and_score(
    lm: LoadedModel,
    prompts: Sequence[Prompt],
    sample: SampleConfig,
    head: Head | None = None,
    task: Task | None = None,
    scoring_lm: LoadedModel | None = None,
    progress: bool = True,
) -> list[PromptSamples]:
    """Sample ``sample.n`` answers per prompt from ``lm``; score them with ``head`` and label them
    with ``task``'s checker when given. Without ``scoring_lm`` the head reads the states captured
    while sampling (``lm`` must be the model the head was fit on); with it (e.g. the frozen base
    model while ``lm`` is a LoRA-tuned policy), the sampled token ids are teacher-forced through it."""
    sample.validate()
    layers: tuple[int, ...] = (lm.fingerprint.n_layers,)
    if head is not None:
        layers = tuple(head.required_layers())
        head.check_compatible((scoring_lm or lm).fingerprint, layers)
    out = []
    for p in tqdm(prompts, desc="sampling", disable=not progress or len(prompts) < 8):
        capture = head is not None and scoring_lm is None
        res = sample_prompt(
            lm, p, sample, layers=layers if capture else (lm.fingerprint.n_layers,), capture=capture
        )
        texts = [a.text for a in res.answers]
        scores = None
        if head is not None:
            answers = res.answers
            if scoring_lm is not None:
                nonempty = [a.token_ids or [lm.tokenizer.eos_token_id] for a in res.answers]
                answers = teacher_force(scoring_lm, p, nonempty, layers)
            hidden = [a.hidden for a in answers if a.hidden is not None]
            fp = (scoring_lm or lm).fingerprint
            scores = head.score(TokenFeatures.from_tensors(hidden, layers, fp))
        labels = None
        if task is not None:
            labels = np.array([int(task.label(t, p)) for t in texts])
        out.append(PromptSamples(p, prompt_text(lm.tokenizer, p), texts, scores, labels))
    return out


def select_pairs(
    samples: Sequence[PromptSamples],
    select: str = "head",
    margin: float = 0.0,
    drop_disagreements: bool = True,
    seed: int = 0,
) -> tuple[list[PrefPair], dict[str, int]]:
    """One (chosen, rejected) pair per prompt where the rule allows; returns (pairs, counts of
    prompts kept and dropped by reason). Answers with identical text never form a pair."""
    if select not in SELECTS:
        raise HsrmError(f"select must be one of {SELECTS}, got {select!r}")
    rng = np.random.default_rng(seed)
    stats: dict[str, int] = {
        "prompts": len(samples),
        "pairs": 0,
        "no_distinct_answers": 0,
        "below_margin": 0,
        "disagrees_with_verifier": 0,
        "no_correct_and_incorrect": 0,
        "empty_answer": 0,
    }
    pairs = []
    for s in samples:
        texts, scores, labels = s.texts, s.scores, s.labels
        ok = [i for i, t in enumerate(texts) if t.strip()]
        if len(ok) < len(texts):
            stats["empty_answer"] += 1
        # one representative per distinct text (the first)
        first: dict[str, int] = {}
        for i in ok:
            first.setdefault(texts[i], i)
        uniq = list(first.values())
        if len(uniq) < 2:
            stats["no_distinct_answers"] += 1
            continue
        if select == "head":
            if scores is None:
                raise HsrmError(f"prompt {s.prompt.id}: select='head' needs head scores")
            sc = scores[uniq]
            c, r = uniq[int(np.argmax(sc))], uniq[int(np.argmin(sc))]
            if scores[c] - scores[r] < margin or c == r:
                stats["below_margin"] += 1
                continue
            if drop_disagreements and labels is not None and labels[c] < labels[r]:
                stats["disagrees_with_verifier"] += 1
                continue
        elif select == "verifier":
            if labels is None:
                raise HsrmError(
                    f"prompt {s.prompt.id}: select='verifier' needs a task with a checker"
                )
            good = [i for i in uniq if labels[i] == 1]
            bad = [i for i in uniq if labels[i] == 0]
            if not good or not bad:
                stats["no_correct_and_incorrect"] += 1
                continue
            if scores is not None:  # with a head too: its most confident correct vs wrong answers
                c = max(good, key=lambda i: float(scores[i]))
                r = min(bad, key=lambda i: float(scores[i]))
            else:
                c, r = int(rng.choice(good)), int(rng.choice(bad))
        else:
            c, r = (int(x) for x in rng.choice(uniq, size=2, replace=False))
        extra: dict[str, Any] = {"select": select}
        if scores is not None:
            extra["chosen_score"], extra["rejected_score"] = float(scores[c]), float(scores[r])
        if labels is not None:
            extra["chosen_correct"], extra["rejected_correct"] = int(labels[c]), int(labels[r])
        pairs.append(
            PrefPair(
                f"{s.prompt.id}-pair", s.prompt_text, texts[c], texts[r], s.prompt.id, extra=extra
            )
        )
    stats["pairs"] = len(pairs)
    return pairs, stats


def pair_stats(pairs: Sequence[PrefPair]) -> dict[str, float]:
    """Pair accuracy against the verifier, where pairs carry labels: the share of pairs whose
    chosen answer is correct and rejected wrong ('clean'), and reversed ('flipped')."""
    lab = [
        (p.extra["chosen_correct"], p.extra["rejected_correct"])
        for p in pairs
        if "chosen_correct" in p.extra
    ]
    if not lab:
        return {"n": len(pairs)}
    a = np.array(lab)
    return {
        "n": len(pairs),
        "clean": float(((a[:, 0] == 1) & (a[:, 1] == 0)).mean()),
        "flipped": float(((a[:, 0] == 0) & (a[:, 1] == 1)).mean()),
        "tied": float((a[:, 0] == a[:, 1]).mean()),
    }


def build_pairs(
    lm: LoadedModel,
    prompts: Sequence[Prompt],
    *,
    head: Head | None = None,
    task: Task | None = None,
    sample: SampleConfig | None = None,
    select: str | None = None,
    margin: float = 0.0,
    drop_disagreements: bool = True,
    scoring_lm: LoadedModel | None = None,
    out: str | Path | None = None,
    seed: int = 0,
) -> tuple[list[PrefPair], dict[str, Any]]:
    """Sample, score, select and (optionally) write pairs. ``select`` defaults to ``head`` when a
    head is given, else ``verifier``. Returns (pairs, stats)."""
    if head is None and task is None:
        raise HsrmError("build_pairs needs a head, a task with a checker, or both")
    select = select or ("head" if head is not None else "verifier")
    if select == "head" and head is None:
        raise HsrmError("select='head' needs a head (--head DIR)")
    sample = sample or SampleConfig(n=8)
    samples = sample_and_score(lm, prompts, sample, head=head, task=task, scoring_lm=scoring_lm)
    pairs, stats = select_pairs(samples, select, margin, drop_disagreements, seed)
    out_stats: dict[str, Any] = {**stats, **{f"pair_{k}": v for k, v in pair_stats(pairs).items()}}
    accs = [s.labels.mean() for s in samples if s.labels is not None]
    if accs:
        out_stats["sample_accuracy"] = float(np.mean(accs))
    if out is not None:
        write_pairs(out, pairs)
        log.info("wrote %d pairs to %s (%s)", len(pairs), out, out_stats)
    return pairs, out_stats
