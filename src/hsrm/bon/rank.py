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
import torch

from hsrm import metrics as M
from hsrm.bon.quality import _layer_pos, zscore_by_prompt

LOSSES = ("listwise", "pairwise", "pointwise")

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


def _mixed_groups(y: np.ndarray, g: np.ndarray) -> list[np.ndarray]:
    return [r for r in M.by_group(g).values() if 0 < y[r].sum() < len(r)]


def group_matrix(groups: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, m) answer indices of each prompt padded with 0, and the (G, m) mask of real entries."""
    m = max((len(r) for r in groups), default=1)
    idx = torch.zeros(len(groups), m, dtype=torch.long)
    mask = torch.zeros(len(groups), m, dtype=torch.bool)
    for i, r in enumerate(groups):
        idx[i, : len(r)], mask[i, : len(r)] = torch.as_tensor(r), True
    return idx, mask


def rank_loss(
    s: torch.Tensor, y: torch.Tensor, gm: tuple[torch.Tensor, torch.Tensor], loss: str
) -> torch.Tensor:
    """Mean loss over prompts of scores ``s`` (n,) with 0/1 labels ``y`` (n,); ``gm`` from
    ``group_matrix`` over the prompts that have both right and wrong answers."""
    if loss == "pointwise":
        return torch.nn.functional.binary_cross_entropy_with_logits(s, y.float())
    idx, mask = gm
    S, pos = s[idx], y[idx].bool() & mask  # (G, m)
    neg = mask & ~pos
    if loss == "listwise":
        ninf = torch.finfo(S.dtype).min
        return (
            torch.logsumexp(S.masked_fill(~mask, ninf), 1)
            - torch.logsumexp(S.masked_fill(~pos, ninf), 1)
        ).mean()
    # pairwise: softplus(s_wrong - s_right) averaged over each prompt's (right, wrong) pairs
    pair = pos[:, :, None] & neg[:, None, :]  # (G, m, m): [g, right i, wrong j]
    sp = torch.nn.functional.softplus(S[:, None, :] - S[:, :, None])
    return ((sp * pair).sum((1, 2)) / pair.sum((1, 2))).mean()


class RankProbe:
    """Linear scorer on standardised pooled states, trained with a within-prompt loss."""

    def __init__(
        self,
        layers: str | Sequence[int] = "every:2",
        loss: str = "listwise",
        l2: float = 1e-2,
        epochs: int = 200,
        lr: float = 1e-2,
        store_layers: Sequence[int] | None = None,
        n_layers: int = 30,
        seed: int = 0,
    ):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.layers, self.loss, self.l2, self.epochs, self.lr = layers, loss, l2, epochs, lr
        self.store_layers, self.n_layers, self.seed = store_layers, n_layers, seed

    def _x(self, P: np.ndarray) -> np.ndarray:
        sl = self.store_layers or list(range(P.shape[1]))
        return P[:, _layer_pos(self.layers, sl, self.n_layers)].reshape(len(P), -1)

    def fit(
        self,
        P: np.ndarray,
        y: np.ndarray,
        g: np.ndarray,
        val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> RankProbe:
        X = self._x(P)
        self.mu_, self.sd_ = X.mean(0), X.std(0) + 1e-6
        Xt = torch.as_tensor((X - self.mu_) / self.sd_, dtype=torch.float32)
        yt = torch.as_tensor(y)
        groups = group_matrix(_mixed_groups(y, g))
        torch.manual_seed(self.seed)
        w = torch.zeros(Xt.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=self.lr)
        best, self.history_ = (-1.0, w.detach().clone(), b.detach().clone(), 0), []
        Xv = None
        if val is not None:
            Xv = torch.as_tensor((self._x(val[0]) - self.mu_) / self.sd_, dtype=torch.float32)
        for ep in range(self.epochs):
            opt.zero_grad()
            lo = rank_loss(Xt @ w + b, yt, groups, self.loss) + self.l2 * (w * w).sum()
            lo.backward()
            opt.step()
            if val is not None and Xv is not None and (ep % 5 == 4 or ep == self.epochs - 1):
                with torch.no_grad():
                    a = M.within_prompt_auroc((Xv @ w + b).numpy(), val[1], val[2])
                self.history_.append((ep + 1, a))
                if a > best[0]:
                    best = (a, w.detach().clone(), b.detach().clone(), ep + 1)
        if Xv is not None:
            self.w_, self.b_, self.best_epoch_ = best[1], best[2], best[3]
        else:
            self.w_, self.b_, self.best_epoch_ = w.detach(), b.detach(), self.epochs
        return self

    def score(self, P: np.ndarray) -> np.ndarray:
        X = torch.as_tensor((self._x(P) - self.mu_) / self.sd_, dtype=torch.float32)
        return (X @ self.w_ + self.b_).numpy().astype(np.float64)


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
    from hsrm.errors import HsrmError
    from hsrm.features import TokenFeatures

    first = stores[0]
    for s in stores[1:]:
        if tuple(s.layers) != tuple(first.layers) or s.fingerprint != first.fingerprint:
            raise HsrmError(f"{s.path}: other model or layers than {first.path}")
    starts = np.cumsum([0] + [len(s) for s in stores])

    def pick(i: int) -> tuple[Any, int]:
        k = int(np.searchsorted(starts, i, side="right")) - 1
        return stores[k], i - int(starts[k])

    def hidden(i: int):
        s, j = pick(i)
        return s.hidden(j)

    def logprobs(i: int):
        s, j = pick(i)
        return s.logprobs(j)

    return TokenFeatures(hidden, int(starts[-1]), first.layers, first.fingerprint, logprobs)
