"""Metrics: best-of-N, unbiased pass@k, AUROC, within-prompt AUROC, pairwise accuracy, bootstrap CIs.

Conventions: ``scores``, ``labels`` (1 = correct) and ``groups`` (prompt ids) are aligned arrays over
samples. Best-of-k is the expected correctness of the top-scored answer in a uniformly random size-k
subset of a prompt's samples, computed exactly (ties broken uniformly at random); SWIFT's protocol,
the first k samples, is ``protocol="first"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import comb

import numpy as np

from hsrm.errors import HsrmError


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC as the Mann-Whitney U statistic (ties between a positive and a negative count half);
    NaN when only one class is present. Equal to scikit-learn's ``roc_auc_score`` (tested), computed
    from average ranks here because reports call it tens of thousands of times (within-prompt AUROC
    under the bootstrap): ``roc_auc_score``'s input validation alone cost ~8 ms a call, 165 s of a
    275 s demo report."""
    s, y = np.asarray(scores, float), np.asarray(labels).astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    # average rank (1-based) of each run of tied scores
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    ends = np.r_[starts[1:], len(ss)]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def by_group(groups: np.ndarray) -> dict[object, np.ndarray]:
    """Sample indices of each group (prompt / question), groups in sorted order."""
    groups = np.asarray(groups)
    uniq, inv, cnt = np.unique(groups, return_inverse=True, return_counts=True)
    if len(uniq) == 0:
        return {}
    # one stable sort, not a scan of every sample per group (quadratic: minutes at 4096 prompts)
    parts = np.split(np.argsort(inv.ravel(), kind="stable"), np.cumsum(cnt)[:-1])
    return dict(zip(uniq, parts, strict=True))


_by_group = by_group  # the old private name, still used by hsrm.bon.prune


def zscore_by_prompt(v: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``v`` standardised within each group (mean 0, std 1; a constant group gives 0)."""
    v = np.asarray(v, float)
    out = np.zeros(len(v))
    for i in by_group(groups).values():
        sd = v[i].std()
        out[i] = (v[i] - v[i].mean()) / sd if sd > 1e-9 else 0.0
    return out


def score_vote_weights(
    scores: np.ndarray, groups: np.ndarray, temperature: float = 1.0
) -> np.ndarray:
    """Per-sample weights for a score-weighted majority vote (``vote_prompt``): within each prompt,
    ``exp(z / temperature)`` of the scores' within-prompt z-score, i.e. a softmax over the prompt's
    answers, so a head's scale and a prompt's offset do not matter. ``temperature=0`` gives best-of-k
    as a vote: weight ``(n + 1) ** rank``, so the top-scored trace of any subset outweighs all the
    others together (an answer-less top trace is then skipped, where best-of-k would count it
    wrong). Large temperatures tend to plain majority vote."""
    s = np.asarray(scores, float)
    if temperature < 0:
        raise HsrmError(f"vote temperature must be >= 0, got {temperature}")
    if temperature > 0:
        return np.exp(zscore_by_prompt(s, groups) / temperature)
    out = np.zeros(len(s))
    for i in by_group(groups).values():
        if len(i) > 128:  # (n + 1) ** (n - 1) must stay a finite float64
            raise HsrmError(
                f"a temperature-0 vote takes at most 128 samples a prompt, got {len(i)}"
            )
        # dense ranks: tied scores get the same weight, so the vote splits them like best-of-k
        _, rank = np.unique(s[i], return_inverse=True)
        out[i] = float(len(i) + 1) ** rank
    return out


def vote_counts(
    answers: Sequence[object], groups: np.ndarray, fraction: bool = False
) -> np.ndarray:
    """Per sample: how many samples of its prompt gave the same extracted answer (None -> 0); with
    ``fraction``, that count divided by the prompt's number of samples (the self-consistency score
    that fusion combines with a head's)."""
    groups = np.asarray(groups)
    if len(answers) != len(groups):
        raise HsrmError(f"vote_counts: {len(answers)} answers but {len(groups)} groups")
    out = np.zeros(len(groups))
    for idx in by_group(groups).values():
        counts: dict[object, int] = {}
        for i in idx:
            if answers[i] is not None:
                counts[answers[i]] = counts.get(answers[i], 0) + 1
        for i in idx:
            c = counts.get(answers[i], 0) if answers[i] is not None else 0
            out[i] = c / len(idx) if fraction else c
    return out


def within_prompt_auroc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Mean AUROC over prompts that have both right and wrong samples (what best-of-N needs)."""
    vals = within_prompt_auroc_per_group(scores, labels, groups)
    v = [x for x in vals.values() if not np.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def within_prompt_auroc_per_group(scores, labels, groups) -> dict[object, float]:
    """AUROC of every group (NaN where it has one class), all groups of one size at once: the
    Mann-Whitney count over each group's (right, wrong) pairs, equal to ``auroc`` per group."""
    s, y = np.asarray(scores, float), np.asarray(labels).astype(bool)
    by = by_group(groups)
    out: dict[object, float] = {}
    for keys, idx in _size_buckets(by):  # idx: (groups, n)
        vals = np.empty(len(keys))
        for lo in range(0, len(keys), _ROWS):
            S, Y = s[idx[lo : lo + _ROWS]], y[idx[lo : lo + _ROWS]]  # (rows, n)
            pair = Y[:, :, None] & ~Y[:, None, :]  # (rows, n, n): [right i, wrong j]
            wins = (S[:, :, None] > S[:, None, :]) + 0.5 * (S[:, :, None] == S[:, None, :])
            n_pos = Y.sum(1)
            den = n_pos * (Y.shape[1] - n_pos)
            with np.errstate(invalid="ignore", divide="ignore"):
                vals[lo : lo + _ROWS] = np.where(den > 0, (wins * pair).sum((1, 2)) / den, np.nan)
        out.update(zip(keys, vals.tolist(), strict=True))
    return {g: out[g] for g in by}


# rows per vectorised chunk: (rows, n, n) comparisons stay small for n up to a few hundred
_ROWS = 2048


def _size_buckets(by: dict[object, np.ndarray]) -> list[tuple[list[object], np.ndarray]]:
    """Groups bucketed by size: (group keys, (groups, size) sample indices) per size, so a
    per-group metric runs as array operations instead of a Python loop over prompts."""
    sizes: dict[int, list[object]] = {}
    for g, i in by.items():
        sizes.setdefault(len(i), []).append(g)
    return [(keys, np.stack([by[g] for g in keys])) for keys in sizes.values()]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise HsrmError(f"pass@k: k={k} > n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def bon_prompt(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Expected correctness of the best-scored answer among a random k-subset of one prompt's
    samples, exactly: P(max of subset falls in tie-group s) x mean label of that group."""
    s, y = np.asarray(scores, float), np.asarray(labels, float)
    n = len(s)
    if k > n:
        raise HsrmError(f"best-of-k: k={k} > n={n} samples")
    total = comb(n, k)
    # tie groups in ascending order; P(the subset's max is in group g) = (C(<= g, k) - C(< g, k)) / C(n, k)
    _, inv, cnt = np.unique(s, return_inverse=True, return_counts=True)
    mean_y = np.bincount(inv, weights=y) / cnt
    le = np.cumsum(cnt).tolist()
    out = 0.0
    for g, (a, c) in enumerate(zip(le, cnt.tolist())):
        if a >= k:  # exact integer binomials: no float overflow for large n
            out += (comb(a, k) - comb(a - c, k)) / total * float(mean_y[g])
    return out


def bon_first_k(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """SWIFT's protocol: the best-scored of the first k samples (ties: mean label)."""
    s, y = np.asarray(scores, float)[:k], np.asarray(labels, float)[:k]
    return float(y[s == s.max()].mean())


def vote_prompt(
    answers: Sequence[object],
    labels: np.ndarray,
    weights: np.ndarray | None,
    k: int,
    rng: np.random.Generator,
    keep: float = 1.0,
    n_sub: int = 200,
) -> float:
    """A (weighted) majority vote within random k-subsets of one prompt's answers: keep the
    ``ceil(keep * k)`` heaviest traces of each subset (stable order), sum their weights per answer
    (``weights=None``: one vote each), the heaviest answer wins, ties split evenly. ``None`` (no
    answer) never wins unless the whole subset is ``None`` (then the subset's mean label). Monte
    Carlo over ``n_sub`` subsets, exact when k = n. Vectorised over subsets: the per-subset Python
    loop it replaces was ~90 s of a 100 s demo report."""
    n = len(answers)
    y = np.asarray(labels, float)
    w = np.ones(n) if weights is None else np.asarray(weights, float)
    if k > n:
        raise HsrmError(f"vote: k={k} > n={n} samples")
    codes_of: dict[object, int] = {}
    codes = np.array(
        [-1 if a is None else codes_of.setdefault(a, len(codes_of)) for a in answers],
        dtype=np.int64,
    )
    n_ans = max(len(codes_of), 1)
    # label of an answer = label of its first sample (an extracted answer is graded one way)
    ya = np.zeros(n_ans)
    for i in range(n - 1, -1, -1):
        if codes[i] >= 0:
            ya[codes[i]] = y[i]
    if k == n:
        sub = np.arange(n)[None, :]  # (1, n)
    else:
        # a uniform k-subset per row: the first k of a random permutation
        sub = np.argsort(rng.random((n_sub, n)), axis=1)[:, :k]  # (n_sub, k)
    m = max(1, int(np.ceil(keep * k - 1e-9)))
    if m < k:
        order = np.argsort(-w[sub], axis=1, kind="stable")[:, :m]
        sub = np.take_along_axis(sub, order, axis=1)  # (rows, m)
    rows = np.broadcast_to(np.arange(sub.shape[0])[:, None], sub.shape)
    c, valid = codes[sub], codes[sub] >= 0
    tally = np.zeros((sub.shape[0], n_ans))
    present = np.zeros((sub.shape[0], n_ans), dtype=bool)
    np.add.at(tally, (rows[valid], c[valid]), w[sub][valid])
    present[rows[valid], c[valid]] = True
    best = np.where(present, tally, -np.inf).max(axis=1, keepdims=True)
    win = present & (tally >= best - 1e-12)
    n_win = win.sum(axis=1)
    voted = n_win > 0
    acc = np.where(voted, (win * ya).sum(axis=1) / np.maximum(n_win, 1), y[sub].mean(axis=1))
    return float(acc.mean())


def majority_prompt(
    answers: Sequence[object],
    labels: np.ndarray,
    k: int,
    rng: np.random.Generator,
    n_sub: int = 200,
) -> float:
    """Majority vote over extracted answers within random k-subsets (None = no answer, never wins
    unless all are None); ties between answers broken uniformly. Monte Carlo over ``n_sub`` subsets."""
    return vote_prompt(answers, labels, None, k, rng, 1.0, n_sub)


def ks_for(n: int) -> list[int]:
    """1, 2, 4, ..., n (n included)."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    ks.append(n)
    return ks


def per_prompt_bon(
    scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int, protocol: str = "random"
) -> dict[object, float]:
    """Best-of-k of every group: ``bon_prompt`` (``protocol="random"``), computed for all groups
    of one size at once, or ``bon_first_k`` (``"first"``)."""
    s, y = np.asarray(scores, float), np.asarray(labels, float)
    by = by_group(groups)
    if protocol != "random":
        return {g: bon_first_k(s[i], y[i], k) for g, i in by.items()}
    out: dict[object, float] = {}
    for keys, idx in _size_buckets(by):
        out.update(zip(keys, _bon_rows(s[idx], y[idx], k).tolist(), strict=True))
    return {g: out[g] for g in by}


def _bon_rows(S: np.ndarray, Y: np.ndarray, k: int) -> np.ndarray:
    """``bon_prompt`` of every row of S, Y: (groups, n). A sample in the tie run [a0, a1) of its
    sorted row weighs P(the subset's max falls in that run) / run size =
    (C(a1, k) - C(a0, k)) / C(n, k) / (a1 - a0), from exact integer binomials."""
    G, n = S.shape
    if k > n:
        raise HsrmError(f"best-of-k: k={k} > n={n} samples")
    order = np.argsort(S, axis=1, kind="stable")
    Ss, Ys = np.take_along_axis(S, order, 1), np.take_along_axis(Y, order, 1)
    new = np.ones((G, n), bool)
    new[:, 1:] = Ss[:, 1:] != Ss[:, :-1]  # a tie run starts here
    pos = np.broadcast_to(np.arange(n), (G, n))
    a0 = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    ends = np.ones((G, n), bool)
    ends[:, :-1] = new[:, 1:]
    a1 = np.minimum.accumulate(np.where(ends, pos + 1, n)[:, ::-1], axis=1)[:, ::-1]
    total = comb(n, k)
    ck = [comb(a, k) for a in range(n + 1)]
    table = np.array([[(ck[b] - ck[a]) / total for b in range(n + 1)] for a in range(n + 1)])
    return (table[a0, a1] / (a1 - a0) * Ys).sum(1)


def bootstrap_ci(
    per_group: dict[object, float] | np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile CI of the mean over prompts, resampling prompts."""
    v = np.asarray(list(per_group.values()) if isinstance(per_group, dict) else per_group, float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def bootstrap_metric_ci(
    metric: Callable[[np.ndarray], float],
    groups: np.ndarray,
    n_boot: int = 500,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """CI of ``metric(sample_indices)`` resampling whole groups (prompts / questions) with replacement."""
    by = list(by_group(groups).values())
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(by), size=len(by))
        idx = np.concatenate([by[i] for i in pick])
        v = metric(idx)
        if not np.isnan(v):
            vals.append(v)
    if not vals:
        return (float("nan"), float("nan"))
    return float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))


def bootstrap_auroc_ci(
    scores: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    n_boot: int = 500,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """``bootstrap_metric_ci`` of ``auroc`` (the same resamples of whole groups, the same values):
    a resample is a weight per sample (how often its group was drawn), and the AUROC of the
    weighted samples is the Mann-Whitney count over one sort of the scores, for many resamples
    at once instead of a sort per resample."""
    s, y = np.asarray(scores, float), np.asarray(labels).astype(bool)
    by = list(by_group(groups).values())
    rng = np.random.default_rng(seed)
    picks = [rng.integers(0, len(by), size=len(by)) for _ in range(n_boot)]
    gid = np.empty(len(s), np.int64)
    for j, i in enumerate(by):
        gid[i] = j
    order = np.argsort(s, kind="mergesort")
    ss, ys, gs = s[order], y[order], gid[order]
    # each sorted sample's tie run [first, last]: ties with a right answer count half
    new = np.r_[True, ss[1:] != ss[:-1]]
    first = np.maximum.accumulate(np.where(new, np.arange(len(ss)), 0))
    last = np.r_[np.flatnonzero(new)[1:], len(ss)][np.cumsum(new) - 1] - 1
    vals = []
    for lo in range(0, n_boot, 32):
        mult = np.stack([np.bincount(p, minlength=len(by)) for p in picks[lo : lo + 32]])
        w = mult[:, gs].astype(float)  # (resamples, samples): copies of each sample
        wn = np.cumsum(w * ~ys, axis=1)  # wrong answers up to each sorted sample
        below = np.where(first > 0, wn[:, np.maximum(first - 1, 0)], 0.0)  # in lower runs
        num = (w * ys * 0.5 * (below + wn[:, last])).sum(1)  # (copies exact in float64)
        den = (w * ys).sum(1) * wn[:, -1]
        vals += [float(a / d) for a, d in zip(num, den, strict=True) if d > 0]
    if not vals:
        return (float("nan"), float("nan"))
    return float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))


def pairwise_accuracy(chosen_scores: np.ndarray, rejected_scores: np.ndarray) -> float:
    """Share of pairs where chosen outscores rejected (ties count half)."""
    c, r = np.asarray(chosen_scores, float), np.asarray(rejected_scores, float)
    if len(c) != len(r) or len(c) == 0:
        raise HsrmError("pairwise_accuracy: need equal, non-empty chosen and rejected arrays")
    return float(((c > r) + 0.5 * (c == r)).mean())


def gap_closed(bon: float, mean_acc: float, pass_k: float) -> float:
    """(BoN@k - mean accuracy) / (pass@k - mean accuracy); NaN when pass@k = mean accuracy."""
    den = pass_k - mean_acc
    return float((bon - mean_acc) / den) if den > 1e-12 else float("nan")
