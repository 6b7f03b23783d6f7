"""Linear probes: the simple baseline. Logistic regression (or PCA + LDA) on one layer's mean
answer-token state, standardised (scikit-learn). The parameters live in safetensors, not pickles."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hsrm.errors import HsrmError
from hsrm.features import TokenFeatures
from hsrm.heads.base import Head, register


@register("probe")
class ProbeHead(Head):
    """``layer``: hidden-state index (None = the middle captured layer); ``method``: ``logreg`` or
    ``lda`` (PCA to ``pca_dim`` then LDA); ``C``: inverse L2 strength of the logistic regression."""

    calibrated = True  # logistic regression: sigmoid(score) is meant as P(correct)
    display_order = 20
    label = "probe"

    def __init__(
        self,
        layer: int | None = None,
        method: str = "logreg",
        C: float = 1.0,
        pool: str = "mean",
        pca_dim: int = 64,
        max_iter: int = 2000,
    ):
        self.layer = layer
        self.method = method
        self.C = C
        self.pool = pool
        self.pca_dim = pca_dim
        self.max_iter = max_iter

    def _pick_layer(self, X: TokenFeatures) -> int:
        if self.layer is not None:
            if self.layer not in X.layers:
                raise HsrmError(f"probe: layer {self.layer} not captured; have {list(X.layers)}")
            return self.layer
        mid = X.fingerprint.n_layers // 2
        return min(X.layers, key=lambda lay: abs(lay - mid))

    def _features(self, X: TokenFeatures) -> np.ndarray:
        return X.select_layers([self.layers_[0]]).pooled(self.pool)[:, 0].numpy().astype(np.float64)

    def _fit(self, X: TokenFeatures, y: np.ndarray, groups: np.ndarray | None) -> None:
        if self.method not in ("logreg", "lda"):
            raise HsrmError(f"probe: unknown method {self.method!r}; use logreg or lda")
        self.layers_ = (self._pick_layer(X),)
        F = self._features(X)
        self.mean_ = F.mean(0)
        self.std_ = F.std(0) + 1e-6
        Z = (F - self.mean_) / self.std_
        if self.method == "logreg":
            from sklearn.linear_model import LogisticRegression

            clf = LogisticRegression(C=self.C, max_iter=self.max_iter)
            clf.fit(Z, y)
            self.proj_ = np.zeros((0, 0))  # no projection: coef_ acts on the standardised state
            self.coef_, self.intercept_ = clf.coef_[0], float(clf.intercept_[0])
        else:
            from sklearn.decomposition import PCA
            from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

            k = min(self.pca_dim, Z.shape[0] - 1, Z.shape[1])
            pca = PCA(n_components=k, random_state=0).fit(Z)
            P = pca.transform(Z)
            lda = LinearDiscriminantAnalysis().fit(P, y)
            # Fold centring + PCA + LDA into one linear map so that only arrays are saved.
            self.proj_ = pca.components_.T
            self.mean_ = self.mean_ + pca.mean_ * self.std_
            self.coef_, self.intercept_ = lda.coef_[0], float(lda.intercept_[0])

    def _score(self, X: TokenFeatures) -> np.ndarray:
        Z = (self._features(X) - self.mean_) / self.std_
        if self.proj_.size:
            Z = Z @ self.proj_
        return Z @ self.coef_ + self.intercept_

    def n_parameters(self) -> int:
        """Trainable parameters: the linear weights and the bias (the standardisation statistics
        and the PCA projection of ``lda`` are fit, not trained)."""
        self._check_fitted()
        return int(np.asarray(self.coef_).size) + 1

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        t = {
            k: torch.as_tensor(np.asarray(getattr(self, k + "_"), dtype=np.float64))
            for k in ("mean", "std", "proj", "coef")
        }
        return t, {"intercept": self.intercept_}

    def _set_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        for k in ("mean", "std", "proj", "coef"):
            setattr(self, k + "_", tensors[k].numpy())
        self.intercept_ = float(extra["intercept"])
