"""``rank``: a linear within-prompt ranker on mean-pooled hidden states (``RankProbe``).

Trained with a pairwise logistic loss over each prompt's (right, wrong) answer pairs (RankNet;
Burges et al., ICML 2005), so it only learns to order one prompt's answers and cannot score a
prompt's difficulty. Defaults (``RANK_DEFAULT``: the last 8 hidden states, ``top:8``, L2 0.01, Adam lr 1e-3,
120 full-batch epochs) were chosen on a validation store of another task seed
(`research/quality/quality_levers.py`, `research/quality/results/quality_levers.md`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hsrm import metrics as M
from hsrm.errors import HsrmError
from hsrm.features import TokenFeatures
from hsrm.heads.base import Head, register
from hsrm.layer_spec import layer_positions

LOSSES = ("listwise", "pairwise", "pointwise")


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
        return P[:, layer_positions(self.layers, sl, self.n_layers)].reshape(len(P), -1)

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


RANK_DEFAULT: dict[str, Any] = {
    "layers": "top:8",
    "loss": "pairwise",
    "l2": 0.01,
    "lr": 1e-3,
    "epochs": 120,
}


@register("rank")
class RankHead(Head):
    """``layers``: a layer spec (``hsrm.layer_spec``: ``top:8``, ``every:K``, ...) or a list of
    hidden-state indices; the captured ones among them are read (all captured, if none); ``loss``:
    ``pairwise`` | ``listwise`` | ``pointwise``; ``l2``, ``lr``, ``epochs``: the full-batch Adam fit."""

    needs_groups = True
    display_order = 30
    label = "rank"

    def __init__(
        self,
        layers: Any = RANK_DEFAULT["layers"],
        loss: str = RANK_DEFAULT["loss"],
        l2: float = RANK_DEFAULT["l2"],
        lr: float = RANK_DEFAULT["lr"],
        epochs: int = RANK_DEFAULT["epochs"],
        seed: int = 0,
    ):
        self.layers, self.loss, self.l2, self.lr, self.epochs, self.seed = (
            layers,
            loss,
            l2,
            lr,
            epochs,
            seed,
        )

    def _pick(self, X: TokenFeatures) -> list[int]:
        pos = layer_positions(self.layers, list(X.layers), X.fingerprint.n_layers)
        return [X.layers[j] for j in pos]

    def _fit(self, X: TokenFeatures, y: np.ndarray, groups: np.ndarray | None) -> None:
        if self.loss not in LOSSES:
            raise HsrmError(f"rank: unknown loss {self.loss!r}; use one of {', '.join(LOSSES)}")
        assert groups is not None  # needs_groups
        self.layers_ = tuple(self._pick(X))
        P = X.select_layers(list(self.layers_)).pooled("mean").numpy()  # (n, L, d)
        rp = RankProbe("all", self.loss, self.l2, self.epochs, self.lr, seed=self.seed)
        rp.fit(P, y.astype(np.int64), groups)
        self.mean_, self.std_ = rp.mu_, rp.sd_
        self.coef_, self.intercept_ = rp.w_.numpy(), float(rp.b_[0])

    def _score(self, X: TokenFeatures) -> np.ndarray:
        P = X.select_layers(list(self.layers_)).pooled("mean").numpy()
        Z = (P.reshape(len(P), -1) - self.mean_) / self.std_
        return Z @ self.coef_ + self.intercept_

    def n_parameters(self) -> int:
        self._check_fitted()
        return int(np.asarray(self.coef_).size) + 1

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        t = {
            k: torch.as_tensor(np.asarray(getattr(self, k + "_"), dtype=np.float32))
            for k in ("mean", "std", "coef")
        }
        return t, {"intercept": self.intercept_}

    def _set_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        for k in ("mean", "std", "coef"):
            setattr(self, k + "_", tensors[k].numpy())
        self.intercept_ = float(extra["intercept"])
