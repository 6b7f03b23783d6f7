"""Selectors built to hold on prompts and contexts they never saw.

- ``PooledProbe``: a standardised L2 logistic regression on each answer's mean-pooled hidden states
  of several layers (optionally centred on its prompt's mean, which makes it a within-prompt ranker).
- ``StackedSelector``: a small second-stage logistic regression, fitted on training prompts only,
  over within-prompt z-scores of the pooled probe's score, mean log-prob, self-certainty, DeepConf
  confidence, entropy and vote share, plus the answer prior. Its first-stage inputs on the
  training prompts are out-of-fold (inner prompt splits), so the second stage learns how much to
  trust a first-stage score on prompts that score never saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hsrm.layer_spec import layer_positions
from hsrm.metrics import zscore_by_prompt

#: Settings of the pooled probe the issue found to transfer (every 2nd layer, C = 0.01).
POOLED_DEFAULT: dict[str, Any] = {"layers": "every:2", "C": 0.01}


def pooled_states(store, idx: Sequence[int] | np.ndarray, prefix: int | None = None) -> np.ndarray:
    """(n, L, d) float32 mean over each answer's first ``prefix`` tokens (all when None) of the
    store's captured layers; an empty answer gives zeros."""
    L, d = len(store.layers), store.fingerprint.hidden_size
    out = np.zeros((len(idx), L, d), np.float32)
    for j, i in enumerate(idx):
        h = store.hidden(int(i))  # (tokens, L, d)
        if prefix is not None:
            h = h[:prefix]
        if len(h):
            out[j] = h.mean(0).numpy()
    return out


def center_by_prompt(X: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = X.copy()
    for g in np.unique(groups):
        m = groups == g
        out[m] -= X[m].mean(0)
    return out


class PooledProbe:
    """Standardised logistic regression on mean-pooled states of chosen layers."""

    def __init__(
        self,
        layers: str | Sequence[int] = "every:2",
        C: float = 0.01,
        center: bool = False,
        store_layers: Sequence[int] | None = None,
        n_layers: int = 30,
    ):
        self.layers, self.C, self.center = layers, C, center
        self.store_layers, self.n_layers = store_layers, n_layers

    def _x(self, P: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        sl = self.store_layers or list(range(P.shape[1]))
        pos = layer_positions(self.layers, sl, self.n_layers)
        X = P[:, pos].reshape(len(P), -1)
        if self.center:
            if groups is None:
                raise ValueError("a centred probe needs the prompt ids")
            X = center_by_prompt(X, groups)
        return X

    def fit(self, P: np.ndarray, y: np.ndarray, groups: np.ndarray) -> PooledProbe:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        X = self._x(P, groups)
        self.scaler_ = StandardScaler().fit(X)
        # tol 1e-3 / 100 iterations: the ranking settles long before lbfgs' default tolerance,
        # and a fit on 2k answers x 9216 features then takes seconds on one busy core
        clf = LogisticRegression(C=self.C, max_iter=100, tol=1e-3)
        self.clf_ = clf.fit(self.scaler_.transform(X).astype(np.float32), y)
        return self

    def score(self, P: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        return self.clf_.decision_function(
            self.scaler_.transform(self._x(P, groups)).astype(np.float32)
        )


#: within-prompt z-scored inputs of the second stage (training-free scores read from the store)
_FREE = ("mean_logprob", "self_certainty", "deepconf_lowest_group", "neg_mean_entropy")


def _free_features(store, idx: np.ndarray) -> dict[str, np.ndarray]:
    from hsrm.bon.scorers import store_scores
    from hsrm.metrics import vote_counts

    recs = store.records
    s = store_scores(store, idx, ["self_certainty", "deepconf_lowest_group", "neg_mean_entropy"])
    s["mean_logprob"] = np.array([recs[i]["mean_logprob"] for i in idx])
    g = store.prompt_ids[idx]
    n = np.array([np.sum(g == p) for p in g], float)
    s["vote_share"] = vote_counts([recs[i]["extracted"] for i in idx], g) / n
    return s


class StackedSelector:
    """Second-stage logistic regression over first-stage scores; see the module docstring."""

    def __init__(self, inner_folds: int = 3, C: float = 1.0, seed: int = 0):
        self.inner_folds, self.C, self.seed = inner_folds, C, seed

    def _features(self, store, idx, probe_s, prior_s) -> np.ndarray:
        g = store.prompt_ids[idx]
        free = _free_features(store, idx)
        cols = [zscore_by_prompt(probe_s, g), probe_s, prior_s, zscore_by_prompt(prior_s, g)]
        cols += [zscore_by_prompt(free[k], g) for k in (*_FREE, "vote_share") if k in free]
        cols.append(free["vote_share"])
        return np.stack(cols, 1)

    def fit(self, store, idx: np.ndarray, P: np.ndarray) -> StackedSelector:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        from hsrm.bon.baselines import control_scores
        from hsrm.splits import prompt_folds

        y, g = store.labels[idx], store.prompt_ids[idx]
        fold = prompt_folds(g, self.inner_folds, self.seed)
        probe_s, prior_s = np.zeros(len(idx)), np.zeros(len(idx))
        kw = {
            **POOLED_DEFAULT,
            "store_layers": store.layers,
            "n_layers": store.fingerprint.n_layers,
        }
        for f in range(self.inner_folds):
            a, b = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            probe_s[b] = PooledProbe(**kw).fit(P[a], y[a], g[a]).score(P[b], None)
            prior_s[b] = control_scores(store, idx[a], store, idx[b])["answer_prior"]
        F = self._features(store, idx, probe_s, prior_s)
        self.scaler_ = StandardScaler().fit(F)
        self.clf_ = LogisticRegression(C=self.C, max_iter=500).fit(self.scaler_.transform(F), y)
        self.probe_ = PooledProbe(**kw).fit(P, y, g)
        self.train_ = (store, idx)
        return self

    def score(self, store, idx: np.ndarray, P: np.ndarray) -> np.ndarray:
        from hsrm.bon.baselines import control_scores

        tstore, tidx = self.train_
        prior = control_scores(tstore, tidx, store, idx)["answer_prior"]
        F = self._features(store, idx, self.probe_.score(P, None), prior)
        return self.clf_.decision_function(self.scaler_.transform(F))
