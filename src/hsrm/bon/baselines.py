"""The scorers every best-of-N report carries beside the heads: random, majority, mean log-prob,
the training-free selectors of ``hsrm.bon.scorers``, and the two controls (text-only, answer prior)."""

from __future__ import annotations

from typing import Any

import numpy as np

from hsrm.baselines.controls import AnswerPriorScorer, TextOnlyScorer
from hsrm.store import RecordsView, Store


def baseline_scores(
    store: Store,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    train_store: RecordsView | None = None,
) -> dict[str, np.ndarray]:
    """The scorers every report carries: random, majority, mean log-prob, the training-free
    selectors of ``hsrm.bon.scorers`` (self-certainty, DeepConf, entropy, confidence-weighted vote),
    and the two controls (text-only, answer prior) fitted on ``train_idx`` of ``train_store``
    (default: ``store`` itself)."""
    from hsrm.bon.scorers import store_scores

    recs = store.records
    out = {
        "random": np.zeros(len(test_idx)),
        "majority": np.zeros(len(test_idx)),
        "mean_logprob": np.array([recs[i]["mean_logprob"] for i in test_idx]),
    }
    out.update(store_scores(store, test_idx))
    out.update(control_scores(train_store or store, train_idx, store, test_idx))
    return out


def _control_inputs(store: RecordsView, idx: np.ndarray) -> tuple[list[str], list[tuple]]:
    recs = store.records
    texts = [prompt_question(store, recs[i]) + " || " + recs[i]["text"] for i in idx]
    keys = [(recs[i].get("qtype"), recs[i]["extracted"]) for i in idx]
    return texts, keys


def control_scores(
    train_store: RecordsView, train_idx: np.ndarray, test_store: Store, test_idx: np.ndarray
) -> dict[str, np.ndarray]:
    """Text-only and answer-prior controls fitted on ``train_store``'s records ``train_idx``,
    scored on ``test_store``'s records ``test_idx`` (the two stores may differ)."""
    if len(train_idx) == 0:
        return {}
    y = train_store.labels[train_idx]
    tr_texts, tr_keys = _control_inputs(train_store, train_idx)
    te_texts, te_keys = _control_inputs(test_store, test_idx)
    out: dict[str, np.ndarray] = {}
    if len(np.unique(y)) == 2:
        out["text_only"] = TextOnlyScorer().fit(tr_texts, y).score(te_texts)
    out["answer_prior"] = AnswerPriorScorer().fit(tr_keys, y).score(te_keys)
    return out


def prompt_question(store: RecordsView, rec: dict[str, Any]) -> str:
    return rec.get("question") or rec.get("prompt_id", "")
