"""Score fusion within each prompt: SWIFT's two rules and fusion with the majority-vote count.

* ``rank_fusion``: each scorer ranks a prompt's samples (1 = worst, ties share their mean rank); the
  fused score is the *max* of a sample's ranks over scorers (SWIFT's "max of ranks"), ties broken by
  the mean rank;
* ``minmax_fusion``: each scorer is min-max scaled to [0, 1] within the prompt (a constant scorer
  gives 0.5) and the scaled scores are averaged, optionally weighted (SWIFT's "scaling average");
* the majority-vote count (``hsrm.metrics.vote_counts``, re-exported here) is a scorer that fuses
  like any other, e.g. ``minmax_fusion([head_scores, vote_counts(answers, groups)], groups)``.

Every rule works within a prompt, so only the order of a prompt's samples matters to best-of-N.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hsrm.errors import HsrmError
from hsrm.metrics import by_group, vote_counts

__all__ = ["fuse", "minmax_fusion", "minmax_scale", "rank_fusion", "vote_counts", "within_ranks"]


def _check(scores: Sequence[np.ndarray], groups: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    groups = np.asarray(groups)
    if len(scores) == 0:
        raise HsrmError("fusion: need at least one scorer")
    out = []
    for j, s in enumerate(scores):
        s = np.asarray(s, dtype=np.float64)
        if s.shape != (len(groups),):
            raise HsrmError(
                f"fusion: scorer {j} has shape {s.shape}; expected ({len(groups)},) like groups"
            )
        if not np.isfinite(s).all():
            raise HsrmError(f"fusion: scorer {j} has non-finite scores")
        out.append(s)
    return out, groups


def _group_index(groups: np.ndarray) -> list[np.ndarray]:
    return list(by_group(groups).values())


def within_ranks(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Rank of each sample among its prompt's samples: 1 = lowest score, ties share the mean rank."""
    s = np.asarray(scores, dtype=np.float64)
    out = np.zeros(len(s))
    for idx in _group_index(np.asarray(groups)):
        v = s[idx]
        order = np.argsort(v, kind="mergesort")
        ranks = np.empty(len(v))
        ranks[order] = np.arange(1, len(v) + 1)
        for u in np.unique(v):  # average ties
            m = v == u
            ranks[m] = ranks[m].mean()
        out[idx] = ranks
    return out


def rank_fusion(scores: Sequence[np.ndarray], groups: np.ndarray) -> np.ndarray:
    """Max over scorers of the within-prompt rank; the mean rank (scaled below 1) breaks ties."""
    ss, groups = _check(scores, groups)
    R = np.stack([within_ranks(s, groups) for s in ss])  # (scorers, samples)
    n_max = max((len(i) for i in _group_index(groups)), default=1)
    return R.max(0) + R.mean(0) / (n_max + 1)


def minmax_scale(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Min-max scaling to [0, 1] within each prompt; a prompt whose scores are all equal gets 0.5."""
    s = np.asarray(scores, dtype=np.float64)
    out = np.zeros(len(s))
    for idx in _group_index(np.asarray(groups)):
        lo, hi = s[idx].min(), s[idx].max()
        out[idx] = 0.5 if hi - lo <= 1e-12 else (s[idx] - lo) / (hi - lo)
    return out


def minmax_fusion(
    scores: Sequence[np.ndarray], groups: np.ndarray, weights: Sequence[float] | None = None
) -> np.ndarray:
    """Weighted mean of within-prompt min-max scaled scores (equal weights by default)."""
    ss, groups = _check(scores, groups)
    w = np.ones(len(ss)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(ss),) or (w < 0).any() or w.sum() <= 0:
        raise HsrmError(
            f"fusion: weights must be {len(ss)} non-negative numbers, not all zero; got {weights}"
        )
    Z = np.stack([minmax_scale(s, groups) for s in ss])
    return (w[:, None] * Z).sum(0) / w.sum()


def fuse(
    rule: str,
    scores: Sequence[np.ndarray],
    groups: np.ndarray,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """``rule`` is ``rank`` or ``minmax``."""
    if rule == "rank":
        if weights is not None:
            raise HsrmError("fusion: rank fusion takes no weights")
        return rank_fusion(scores, groups)
    if rule == "minmax":
        return minmax_fusion(scores, groups, weights)
    raise HsrmError(f"unknown fusion rule {rule!r}; use rank or minmax")
