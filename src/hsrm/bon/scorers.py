"""Training-free selectors: scores read from the per-token statistics the sampler stores.

Each scorer maps one answer's per-token statistics (``logprobs``, ``entropy``, ``self_certainty``,
``confidence``; see ``capture.token_stats``) to one float, higher = more likely right. Nothing is
fitted, so they apply to any store, including one no head or control has seen.

- ``self_certainty``: mean per-token KL(U || p) (Kang et al. 2025, arXiv 2502.18581).
- ``deepconf_lowest_group``: the lowest mean token confidence over sliding windows of 2048 tokens
  (DeepConf, Fu et al. 2025, arXiv 2508.15260; token confidence = minus the mean top-20 log-prob).
- ``deepconf_bottom10``: the mean of the lowest 10% of those window means (DeepConf's "bottom-10%
  group confidence").
- ``deepconf_tail``: mean confidence of the last 2048 tokens (DeepConf's "tail confidence").
- ``neg_mean_entropy``: minus the mean per-token entropy.

DeepConf's window and tail are 2048 tokens. Every window here is clipped to the answer's length, so
on answers shorter than 2048 tokens (all of this project's synthetic answers, 1-40 tokens) the three
DeepConf scores coincide with the answer's mean token confidence; ``DEEPCONF_SHORT`` gives the same
three scores with a 16-token window and tail, scaled to these answers (our choice, not the paper's).

Vote-style selectors (``VOTES``) do not rank answers one by one: within each k-subset of a prompt's
answers, the answer string with the largest summed trace confidence wins (DeepConf's
confidence-weighted majority vote), after keeping only the top-eta share of the subset's traces by
confidence (DeepConf-high: eta = 90%, DeepConf-low: eta = 10%). ``hsrm.bon.report`` counts them
within each subset, like ``majority``.

A head's own vote is named ``<head>_vote`` (``add_head_votes``): the reward-model-weighted majority
vote of Uesato et al. 2022 (arXiv 2211.14275) and DiVeRSe (Li et al. 2023, arXiv 2206.02336), with
each trace weighted by ``exp(z)`` of the head's within-prompt z-score (``metrics.score_vote_weights``)
so that heads of any scale vote alike. Chosen on a validation store of a third task seed: it beat the
head's own best-of-16 there on ``arith`` for every ELHSR setting tried, not on ``compare``
(research/quality/results/quality_votes.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from hsrm.errors import HsrmError
from hsrm.metrics import by_group, score_vote_weights, vote_prompt

log = logging.getLogger(__name__)

#: DeepConf's sliding-window size and tail length (arXiv 2508.15260, Sec. 3).
DEEPCONF_WINDOW = 2048
DEEPCONF_TAIL = 2048
#: DeepConf's "bottom-10% group confidence" share.
BOTTOM_FRAC = 0.1
#: The window/tail scaled to this project's short answers (not from the paper).
SHORT_WINDOW = 16

Stats = dict[str, torch.Tensor]


def group_confidences(conf: torch.Tensor, window: int = DEEPCONF_WINDOW) -> torch.Tensor:
    """(G,) means of ``conf`` (T,) over every sliding window of ``min(window, T)`` tokens."""
    t = len(conf)
    if t == 0:
        return torch.zeros(1)
    w = max(1, min(window, t))
    c = torch.cat([torch.zeros(1), conf.double().cumsum(0)])
    return ((c[w:] - c[:-w]) / w).float()


def lowest_group_confidence(conf: torch.Tensor, window: int = DEEPCONF_WINDOW) -> float:
    return float(group_confidences(conf, window).min())


def bottom_group_confidence(
    conf: torch.Tensor, window: int = DEEPCONF_WINDOW, frac: float = BOTTOM_FRAC
) -> float:
    g = group_confidences(conf, window).sort().values
    return float(g[: max(1, int(np.ceil(frac * len(g))))].mean())


def tail_confidence(conf: torch.Tensor, tail: int = DEEPCONF_TAIL) -> float:
    return float(conf[-tail:].mean()) if len(conf) else 0.0


def _mean(x: torch.Tensor) -> float:
    return float(x.mean()) if len(x) else 0.0


#: name -> (per-token statistics it reads, function of those statistics)
SCORERS: dict[str, tuple[tuple[str, ...], Callable[[Stats], float]]] = {
    "self_certainty": (("self_certainty",), lambda s: _mean(s["self_certainty"])),
    "deepconf_lowest_group": (
        ("confidence",),
        lambda s: lowest_group_confidence(s["confidence"]),
    ),
    "deepconf_bottom10": (("confidence",), lambda s: bottom_group_confidence(s["confidence"])),
    "deepconf_tail": (("confidence",), lambda s: tail_confidence(s["confidence"])),
    "neg_mean_entropy": (("entropy",), lambda s: -_mean(s["entropy"])),
}

#: The DeepConf scores with the window and tail scaled to short answers.
DEEPCONF_SHORT: dict[str, tuple[tuple[str, ...], Callable[[Stats], float]]] = {
    "deepconf_lowest_group_w16": (
        ("confidence",),
        lambda s: lowest_group_confidence(s["confidence"], SHORT_WINDOW),
    ),
    "deepconf_tail16": (("confidence",), lambda s: tail_confidence(s["confidence"], SHORT_WINDOW)),
}

#: Vote scorers: name -> (per-sample weight scorer, eta = share of a subset's traces kept).
VOTES: dict[str, tuple[str, float]] = {
    "deepconf_vote": ("deepconf_lowest_group", 0.9),
    "deepconf_vote_low": ("deepconf_lowest_group", 0.1),
}


#: Suffix of a scorer that is a vote whose score array holds per-trace weights (keep = 1).
VOTE_SUFFIX = "_vote"


def vote_keep(name: str, votes: Sequence[str] = ()) -> float | None:
    """The share of a subset's traces a vote scorer keeps (``VOTES``; 1.0 for ``<name>_vote`` and
    the names in ``votes``); None for a scorer that ranks answers one by one."""
    if name in VOTES:
        return VOTES[name][1]
    if name.endswith(VOTE_SUFFIX) or name in votes:
        return 1.0
    return None


def add_head_votes(
    scores: dict[str, np.ndarray], heads: Sequence[str], groups: np.ndarray
) -> dict[str, np.ndarray]:
    """``scores`` plus ``<head>_vote`` for every head: its score-weighted majority vote (weights
    ``exp(z)`` of the within-prompt z-score)."""
    return {**scores, **{h + VOTE_SUFFIX: score_vote_weights(scores[h], groups) for h in heads}}


def score_stats(stats: Stats, names: Sequence[str] | None = None) -> dict[str, float]:
    """Scores of one answer from its per-token statistics ``stats`` (name -> (tokens,))."""
    table = {**SCORERS, **DEEPCONF_SHORT}
    out = {}
    for n in names or list(SCORERS):
        if n not in table:
            raise HsrmError(f"unknown training-free scorer {n!r}; known: {', '.join(table)}")
        out[n] = table[n][1](stats)
    return out


def store_scores(store, idx: Sequence[int] | np.ndarray, names: Sequence[str] | None = None):
    """Training-free scores of records ``idx`` of a ``Store``: name -> (len(idx),) array, vote
    scorers included (their array holds each trace's confidence weight). Returns {} (and logs
    why) for a store written before per-token confidences were captured."""
    names = list(names or list(SCORERS))
    table = {**SCORERS, **DEEPCONF_SHORT}
    need = sorted({st for n in names for st in table[n][0]})
    out = {n: np.zeros(len(idx)) for n in names}
    try:
        for j, i in enumerate(idx):
            stats = {st: store.token_stat(int(i), st).float() for st in need}
            for n, val in score_stats(stats, names).items():
                out[n][j] = val
    except HsrmError as e:
        log.info("training-free scorers skipped: %s", e)
        return {}
    for vote, (base, _) in VOTES.items():
        if base in out:
            out[vote] = out[base].copy()
    return out


def weighted_vote_prompt(
    answers: Sequence[object],
    labels: np.ndarray,
    weights: np.ndarray,
    k: int,
    rng: np.random.Generator,
    keep: float = 1.0,
    n_sub: int = 200,
) -> float:
    """DeepConf's confidence-weighted majority vote within random k-subsets of one prompt's answers:
    keep the ``ceil(keep * k)`` most confident traces of the subset, sum their weights per answer
    (None never wins unless all are None), pick the heaviest (ties split). Monte Carlo over
    ``n_sub`` subsets (exact when k = n); the one vote counter is ``metrics.vote_prompt``."""
    return vote_prompt(answers, labels, weights, k, rng, keep, n_sub)


def weighted_vote_share(
    extracted: Sequence[object], groups: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Per sample: summed weight of its prompt's samples that gave the same answer (0 for none)."""
    out = np.zeros(len(extracted))
    w = np.asarray(weights, float)
    for members in by_group(groups).values():  # one sort, not a scan of every sample per prompt
        idx = [int(i) for i in members]
        tot: dict[object, float] = {}
        for i in idx:
            if extracted[i] is not None:
                tot[extracted[i]] = tot.get(extracted[i], 0.0) + w[i]
        for i in idx:
            out[i] = tot.get(extracted[i], 0.0) if extracted[i] is not None else 0.0
    return out
