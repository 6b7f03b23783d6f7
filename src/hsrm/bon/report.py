"""The best-of-N report: any scorers' per-sample scores -> BoN@k, pass@k, AUROC, within-prompt AUROC,
gap closed, bootstrap CIs over prompts, and the same per task family.

``majority`` is special: its best-of-k is a vote *within* each k-subset (Monte Carlo), so it needs the
extracted answers; ``random`` is the mean accuracy; ``oracle`` is unbiased pass@k. So are the vote
scorers (``hsrm.bon.scorers.vote_keep``: DeepConf's confidence-weighted votes, a head's ``<head>_vote``,
and any name passed in ``votes``): their score array holds each trace's weight, and the weighted vote
is counted within each k-subset; their AUROCs rank samples by the weighted vote share of their answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hsrm import metrics as M
from hsrm.bon.scorers import vote_keep, weighted_vote_prompt, weighted_vote_share
from hsrm.errors import HsrmError
from hsrm.metrics import vote_counts

MAJORITY = "majority"


def _summary(
    scores: dict[str, np.ndarray],
    labels: np.ndarray,
    groups: np.ndarray,
    extracted: Sequence[object],
    ks: list[int],
    n_boot: int,
    seed: int,
    protocol: str = "random",
    vote_weights: dict[str, tuple[np.ndarray, float]] | None = None,
    finished: np.ndarray | None = None,
) -> dict[str, Any]:
    vote_weights = vote_weights or {}
    fin = np.ones(len(labels), bool) if finished is None else np.asarray(finished, bool)
    by = M.by_group(groups)
    y = np.asarray(labels, float)
    per_prompt_acc = {g: float(y[i].mean()) for g, i in by.items()}
    n_per = {len(i) for i in by.values()}
    n = min(n_per)
    ks = [k for k in ks if k <= n]
    out: dict[str, Any] = {
        "n_prompts": len(by),
        "n_samples": int(len(y)),
        "mean_accuracy": float(np.mean(list(per_prompt_acc.values()))),
        "mean_accuracy_ci": list(M.bootstrap_ci(per_prompt_acc, n_boot, seed=seed)),
        "pass_at_k": {},
        "bon": {},
        "bon_ci": {},
        "auroc": {},
        "auroc_ci": {},
        "within_prompt_auroc": {},
        "within_prompt_auroc_ci": {},
        "gap_closed": {},
    }
    pk = {}
    for k in ks:
        vals = {g: M.pass_at_k(len(i), int(y[i].sum()), k) for g, i in by.items()}
        pk[k] = float(np.mean(list(vals.values())))
        out["pass_at_k"][str(k)] = pk[k]
    rng = np.random.default_rng(seed)
    top: dict[str, dict[object, float]] = {}  # per-prompt BoN at the largest k, for vs_majority
    for name, s in scores.items():
        s = np.asarray(s, float)
        out["bon"][name], out["bon_ci"][name], out["gap_closed"][name] = {}, {}, {}
        for k in ks:
            per = bon_per_prompt(
                name, s, y, groups, extracted, k, rng, protocol, vote_weights.get(name)
            )
            top[name] = per
            v = float(np.mean(list(per.values())))
            out["bon"][name][str(k)] = v
            out["bon_ci"][name][str(k)] = list(M.bootstrap_ci(per, n_boot, seed=seed))
            out["gap_closed"][name][str(k)] = M.gap_closed(v, out["mean_accuracy"], pk[k])
        s, yf, gf = s[fin], y[fin], np.asarray(groups)[fin]  # AUROCs: finished samples only
        out["auroc"][name] = M.auroc(s, yf)
        out["auroc_ci"][name] = list(
            M.bootstrap_auroc_ci(s, yf, gf, n_boot=min(n_boot, 300), seed=seed)
        )
        wp = M.within_prompt_auroc_per_group(s, yf, gf)
        out["within_prompt_auroc"][name] = M.within_prompt_auroc(s, yf, gf)
        out["within_prompt_auroc_ci"][name] = list(M.bootstrap_ci(wp, n_boot, seed=seed))
    out["n_mixed_prompts"] = int(sum(0 < y[i].mean() < 1 for i in by.values()))
    if MAJORITY in top and ks:
        # "beats majority vote" asked as it should be: the same prompts, paired, at the largest k
        maj = top[MAJORITY]
        out["vs_majority"] = {"k": ks[-1]}
        for name, per in top.items():
            d = np.array([per[g] - maj[g] for g in by])
            ci = M.bootstrap_ci(d, n_boot, seed=seed)
            out["vs_majority"][name] = {"delta": float(d.mean()), "ci": list(ci)}
    return out


def bon_per_prompt(
    name: str,
    scores: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    extracted: Sequence[object],
    k: int,
    rng: np.random.Generator,
    protocol: str = "random",
    vote: tuple[np.ndarray, float] | None = None,
) -> dict[object, float]:
    """BoN@k of one scorer, per prompt: a (weighted) vote within k-subsets for ``majority`` and for
    ``vote`` = (per-trace weights, share kept); else the top-scored answer. ``protocol="first"``:
    the first k samples (one subset of size k)."""
    y = np.asarray(labels, float)
    if name != MAJORITY and vote is None:
        return M.per_prompt_bon(scores, y, groups, k, protocol)
    by = M.by_group(groups)
    sub = {g: (i[:k] if protocol == "first" else i) for g, i in by.items()}
    if vote is None:
        return {
            g: M.majority_prompt([extracted[j] for j in i], y[i], k, rng) for g, i in sub.items()
        }
    w, keep = vote
    return {
        g: weighted_vote_prompt([extracted[j] for j in i], y[i], w[i], k, rng, keep)
        for g, i in sub.items()
    }


def bon_report(
    scores: dict[str, np.ndarray],
    labels: np.ndarray,
    groups: np.ndarray,
    extracted: Sequence[object] | None = None,
    families: np.ndarray | None = None,
    ks: list[int] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    protocol: str = "random",
    votes: Sequence[str] = (),
    finished: np.ndarray | None = None,
) -> dict[str, Any]:
    """Best-of-N report over test samples. ``scores``: scorer name -> (n,) scores (higher = better);
    include ``"majority"`` (any array; votes come from ``extracted``) and ``"random"`` if wanted.
    Vote scorers (``vote_keep``; ``votes`` names more) hold per-trace weights.
    ``protocol``: ``random`` (exact mean over random k-subsets) or ``first`` (SWIFT: the first k
    samples of each prompt, in sample order).
    ``finished``: (n,) False for samples stopped early (``hsrm sample --prune``). Such a sample has
    no answer: it is never right, never votes, and a scorer picks it only when every sample of the
    k drawn was stopped; AUROCs are over the finished samples.
    With ``majority`` scored, ``vs_majority`` holds each scorer's BoN at the largest k minus
    majority's, paired over prompts (mean and bootstrap CI), overall and per family."""
    if protocol not in ("random", "first"):
        raise HsrmError(f"protocol must be 'random' or 'first', got {protocol!r}")
    labels, groups = np.asarray(labels), np.asarray(groups)
    extracted = list(extracted) if extracted is not None else [None] * len(labels)
    stopped = np.zeros(len(labels), bool) if finished is None else ~np.asarray(finished, bool)
    if stopped.any():
        labels = np.asarray(labels, bool) & ~stopped
        extracted = [None if c else e for e, c in zip(extracted, stopped)]
        scores = {
            k: v if vote_keep(k, votes) is not None else _below_finished(v, stopped)
            for k, v in scores.items()
        }
    if MAJORITY in scores:
        scores = {**scores, MAJORITY: vote_counts(extracted, groups)}
    vote_weights = {
        k: (np.asarray(v, float), keep)
        for k, v in scores.items()
        if (keep := vote_keep(k, votes)) is not None
    }
    for name, (w, _) in vote_weights.items():
        scores = {**scores, name: weighted_vote_share(extracted, groups, w)}
    n = min(len(i) for i in M.by_group(groups).values())
    ks = ks or M.ks_for(n)
    rep = _summary(
        scores, labels, groups, extracted, ks, n_boot, seed, protocol, vote_weights, ~stopped
    )
    rep["n_stopped_early"] = int(stopped.sum())
    if families is not None:
        fam = np.asarray(families)
        rep["per_family"] = {}
        for f in sorted(set(fam.tolist())):
            m = fam == f
            sub = {k: np.asarray(v)[m] for k, v in scores.items()}
            rep["per_family"][f] = _summary(
                sub,
                labels[m],
                groups[m],
                [e for e, keep in zip(extracted, m) if keep],
                ks,
                n_boot,
                seed,
                protocol,
                {k: (w[m], keep) for k, (w, keep) in vote_weights.items()},
                ~stopped[m],
            )
    return rep


def _below_finished(v: np.ndarray, stopped: np.ndarray) -> np.ndarray:
    """Scores with every stopped sample moved below every finished one."""
    v = np.asarray(v, float).copy()
    if (~stopped).any():
        v[stopped] = np.nanmin(v[~stopped]) - 1.0
    return v
