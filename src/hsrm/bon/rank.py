"""Within-prompt ranking heads and the per-answer tables the selection levers are measured on.

Best-of-N only has to order the answers of one prompt. A pointwise head (logistic regression on
"is this answer right?") also spends capacity on *which prompts* are easy, and that part of the fit
belongs to the training store's questions and few-shot contexts, not to the answers' quality. A
ranking loss sees only differences between answers of the same prompt, so a per-prompt offset is
invisible to it:

- ``listwise``: softmax over a prompt's answers, loss = minus the log of the probability mass on its
  right answers (ListNet with several positives; Cao et al., ICML 2007).
- ``pairwise``: logistic loss on every (right, wrong) pair of a prompt (RankNet; Burges et al.,
  ICML 2005).
- ``pointwise``: plain logistic loss (the baseline the two are compared with).

Prompts whose answers are all right or all wrong carry no ranking signal and are dropped by the two
ranking losses. ``RankProbe`` is linear on standardised mean-pooled states of chosen layers
(``hsrm.bon.quality.pooled_states``), L2-regularised, trained full-batch with Adam; with ``val`` given
it keeps the epoch whose validation within-prompt AUROC was best (early stopping on another store's
prompts).

``SecondStage`` combines within-prompt z-scores of a head's score, vote share, mean log-prob and
DeepConf confidence in a small logistic regression fitted on prompts the head never trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hsrm import metrics as M
from hsrm.heads.rank import (  # noqa: F401  (the model lives with the registered head)
    LOSSES,
    RankProbe,
    _mixed_groups,
    group_matrix,
    rank_loss,
)
from hsrm.metrics import zscore_by_prompt

#: training-free columns kept per answer (``hsrm.bon.scorers`` names) besides mean log-prob
FREE_COLS = ("self_certainty", "deepconf_lowest_group", "neg_mean_entropy")


def answer_table(store, idx: np.ndarray | None = None) -> dict[str, Any]:
    """Everything the levers need about records ``idx`` of a store, in memory: ``P`` (n, L, d)
    mean-pooled states, labels, prompt ids, families, extracted answers, mean log-prob, vote
    share and the training-free scores."""
    from hsrm.bon.quality import pooled_states
    from hsrm.bon.scorers import store_scores

    idx = np.arange(len(store)) if idx is None else np.asarray(idx)
    recs = store.records
    g = store.prompt_ids[idx]
    ext = [recs[i]["extracted"] for i in idx]
    n = np.array([np.sum(g == p) for p in g], float)
    t: dict[str, Any] = {
        "P": pooled_states(store, idx),
        "y": store.labels[idx],
        "g": g,
        "family": np.array([recs[i]["family"] for i in idx]),
        "extracted": ext,
        "idx": idx,
        "mean_logprob": np.array([recs[i]["mean_logprob"] for i in idx]),
        "vote_share": M.vote_counts(ext, g) / n,
    }
    t.update(store_scores(store, idx, list(FREE_COLS)))
    return t


def cached_table(store, cache: str | Path) -> dict[str, Any]:
    """``answer_table`` of a whole store, saved to ``cache`` (safetensors + json) on first use."""
    import json

    from safetensors.numpy import load_file, save_file

    cache = Path(cache)
    arr_p, meta_p = cache.with_suffix(".safetensors"), cache.with_suffix(".json")
    if arr_p.exists() and meta_p.exists():
        t: dict[str, Any] = dict(load_file(str(arr_p)))
        meta = json.loads(meta_p.read_text())
        t["P"] = t["P"].astype(np.float32)
        t["g"], t["family"] = np.array(meta["g"]), np.array(meta["family"])
        t["extracted"] = meta["extracted"]
        return t
    t = answer_table(store)
    cache.parent.mkdir(parents=True, exist_ok=True)
    arrs = {k: np.ascontiguousarray(v) for k, v in t.items() if isinstance(v, np.ndarray)}
    arrs = {k: v for k, v in arrs.items() if v.dtype.kind in "fiu"}
    arrs["P"] = t["P"].astype(np.float16)  # halves the cache; the store is float16 anyway
    save_file(arrs, str(arr_p))
    meta_p.write_text(
        json.dumps(
            {"g": t["g"].tolist(), "family": t["family"].tolist(), "extracted": t["extracted"]}
        )
    )
    return t


def concat_tables(*ts: dict[str, Any], tags: Sequence[str] | None = None) -> dict[str, Any]:
    """Tables of several stores as one; prompt ids get the store's tag (ids repeat across seeds)."""
    tags = list(tags or [str(i) for i in range(len(ts))])
    out: dict[str, Any] = {}
    for k in ts[0]:
        if k == "extracted":
            out[k] = [e for t in ts for e in t[k]]
        elif k == "g":
            out[k] = np.concatenate(
                [np.char.add(f"{tag}/", t[k].astype(str)) for t, tag in zip(ts, tags)]
            )
        else:
            out[k] = np.concatenate([t[k] for t in ts])
    return out


#: second-stage inputs, each z-scored within its prompt
STAGE2_COLS = ("head", "vote_share", "mean_logprob", "deepconf_lowest_group")


class SecondStage:
    """A small linear model over within-prompt z-scores of ``cols`` (+ the raw vote share); fit
    it on prompts the first-stage head never trained on (e.g. a validation store).

    ``loss="pairwise"`` (default) fits a logistic regression without intercept on the feature
    differences of every (right, wrong) pair of a prompt, so, like ``RankProbe``, it only learns
    to order a prompt's answers; ``"pointwise"`` is plain logistic regression on the answers, which
    also rewards features that say how easy a prompt is (the raw vote share does)."""

    def __init__(self, cols: Sequence[str] = STAGE2_COLS, C: float = 1.0, loss: str = "pairwise"):
        if loss not in ("pairwise", "pointwise"):
            raise ValueError(f"loss must be pairwise or pointwise, got {loss!r}")
        self.cols, self.C, self.loss = tuple(cols), C, loss

    def _f(self, t: dict[str, Any], head: np.ndarray | None) -> np.ndarray:
        cols = {**t, "head": head} if head is not None else t
        F = [zscore_by_prompt(np.asarray(cols[c], float), t["g"]) for c in self.cols]
        F.append(np.asarray(t["vote_share"], float))
        return np.stack(F, 1)

    def fit(self, t: dict[str, Any], head: np.ndarray | None = None) -> SecondStage:
        from sklearn.linear_model import LogisticRegression

        F, y = self._f(t, head), np.asarray(t["y"])
        if self.loss == "pointwise":
            self.clf_ = LogisticRegression(C=self.C, max_iter=1000).fit(F, y)
            return self
        diffs = []
        for r in _mixed_groups(y, t["g"]):
            pos, neg = r[y[r] == 1], r[y[r] == 0]
            diffs.append((F[pos][:, None, :] - F[neg][None, :, :]).reshape(-1, F.shape[1]))
        Dp = np.concatenate(diffs)
        Xp = np.concatenate([Dp, -Dp])  # both orders: the labels are balanced, no intercept
        yp = np.r_[np.ones(len(Dp)), np.zeros(len(Dp))]
        self.clf_ = LogisticRegression(C=self.C, max_iter=1000, fit_intercept=False).fit(Xp, yp)
        return self

    def score(self, t: dict[str, Any], head: np.ndarray | None = None) -> np.ndarray:
        return self.clf_.decision_function(self._f(t, head))


def bon_all(scores: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    """BoN@N with N = every answer of a prompt (ties: mean label of the tied best)."""
    return float(np.mean([M.bon_prompt(scores[r], y[r], len(r)) for r in M.by_group(g).values()]))


def concat_features(stores: Sequence[Any]):
    """One lazy ``TokenFeatures`` over every record of several stores of the same model and
    layers (train a head on more prompts / contexts than one store holds)."""
    from hsrm.store import StoreUnion

    return StoreUnion(stores).features()
