"""``select``: offline best-of-N over generations read as ``import`` reads them, scored by a saved
head (from the log's top-k log-probs, or teacher-forced through ``--model``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hsrm.capture import Answer
from hsrm.config import field, validate
from hsrm.errors import HsrmError
from hsrm.features import TOPK_LAYER, TokenFeatures
from hsrm.heads.base import Head
from hsrm.importing.forcing import (
    SourceConfig,
    forced_answers,
    load_source_model,
    logged_answers,
    make_source_task,
    resolve_ids,
    source_model,
)
from hsrm.importing.readers import read_generations
from hsrm.io import atomic_write_text
from hsrm.scoring import check_head_matches


@dataclass
class SelectConfig(SourceConfig):
    head: str = field("", "saved head folder (required)")
    out: str = field("", "output JSONL: per request the chosen choice, its score and rank")


def select(cfg: SelectConfig, lm: Any = None) -> list[dict[str, Any]]:
    """Offline best-of-N: score every choice of every request with a saved head and write, per
    request, the best-scored choice (``score``, ``rank`` 1 of ``n``, every choice's ``scores``)."""
    validate(cfg, "select")
    if not cfg.head:
        raise HsrmError("select: --head HEAD/ is required")
    if not cfg.input:
        raise HsrmError("select: --input GENERATIONS.jsonl is required")
    if not cfg.out:
        raise HsrmError("select: --out PICKED.jsonl is required")
    mc = source_model(cfg, lm)  # auto settled and checked before anything is read
    head = Head.load(cfg.head)
    task = make_source_task(cfg)
    prompts = {p.id: p for p in task.prompts()} if task else {}
    _, reqs = read_generations(cfg.input, cfg.format, cfg.requests, prompts)
    need = tuple(head.required_layers())
    if all(lay == TOPK_LAYER for lay in need):
        # a logits-only head: the features are in the log, no model runs (the threads still
        # apply to the head); its features are 2k+3 wide (topk_token_features)
        load_source_model(cfg, None)
        k = cfg.top_logprobs or (head.fingerprint_.hidden_size - 3) // 2
        answers, _, fp = logged_answers(reqs, k)
        head.check_compatible(fp, (TOPK_LAYER,))
        scores = [head.score(_features(a, (TOPK_LAYER,), fp)) for a in answers]
    elif any(lay < 0 for lay in need):
        raise HsrmError(
            f"head {cfg.head} reads feature layers {list(need)}, which select cannot build"
        )
    else:
        if mc is None:
            raise HsrmError(
                f"select: head {cfg.head} reads hidden states; give --model (the model it was fit on)"
            )
        lm = load_source_model(cfg, mc, lm)
        check_head_matches(lm, head, cfg.head)
        ids = resolve_ids(lm, reqs)
        scores = []
        for r, row in zip(reqs, ids):
            assert r.prompt is not None  # resolve_ids refused prompt-less requests
            a = forced_answers(lm, r.prompt, row, need, cfg.batch_size)
            scores.append(head.score(_features(a, need, lm.fingerprint)))
    rows = []
    for r, s in zip(reqs, scores):
        s = np.asarray(s, dtype=np.float64)
        order = np.argsort(-s, kind="stable")  # ties: the first choice wins
        rank = np.empty(len(s), dtype=np.int64)
        rank[order] = np.arange(1, len(s) + 1)
        best = r.choices[int(order[0])]
        rows.append(
            {
                "id": r.id,
                "index": best.index,
                "text": best.text,
                "finish_reason": best.finish_reason,
                "score": float(s[order[0]]),
                "rank": 1,
                "n": len(s),
                "scores": [float(v) for v in s],
                "ranks": [int(v) for v in rank],
                **({"label": best.label} if best.label is not None else {}),
            }
        )
    atomic_write_text(cfg.out, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows))
    return rows


def _features(answers: Sequence[Answer], layers: tuple[int, ...], fp: Any) -> Any:
    return TokenFeatures.from_tensors(
        [a.hidden for a in answers if a.hidden is not None],
        layers,
        fp,
        [a.logprobs for a in answers],
    )
