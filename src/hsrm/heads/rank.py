"""``rank``: a linear within-prompt ranker on mean-pooled hidden states (``hsrm.bon.rank.RankProbe``).

Trained with a pairwise logistic loss over each prompt's (right, wrong) answer pairs (RankNet;
Burges et al., ICML 2005), so it only learns to order one prompt's answers and cannot score a
prompt's difficulty. Defaults (``RANK_DEFAULT``: the last 8 captured layers, L2 0.01, Adam lr 1e-3,
120 full-batch epochs) were chosen on a validation store of another task seed
(`benchmarks/bench_quality.py --levers`, `benchmarks/results/quality_levers.md`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hsrm.errors import HsrmError
from hsrm.features import TokenFeatures
from hsrm.heads.base import Head, register

RANK_DEFAULT: dict[str, Any] = {
    "layers": "last8",
    "loss": "pairwise",
    "l2": 0.01,
    "lr": 1e-3,
    "epochs": 120,
}


@register("rank")
class RankHead(Head):
    """``layers``: ``last8`` | ``all`` | ``every:K`` | list of captured layer indices; ``loss``:
    ``pairwise`` | ``listwise`` | ``pointwise``; ``l2``, ``lr``, ``epochs``: the full-batch Adam fit."""

    needs_groups = True

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
        from hsrm.bon.quality import _layer_pos

        pos = _layer_pos(self.layers, list(X.layers), X.fingerprint.n_layers)
        return [X.layers[j] for j in pos]

    def _fit(self, X: TokenFeatures, y: np.ndarray, groups: np.ndarray | None) -> None:
        from hsrm.bon.rank import LOSSES, RankProbe

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
