"""HARP (arXiv 2509.11536): a hallucination detector on the reasoning subspace of the last hidden state.

Every answer token's last-layer state (after the final norm, as Hugging Face returns it) is projected
on a basis B (d, k); an MLP (k -> 1024 -> 1, ReLU) gives the token's hallucination logit, trained
per token with the answer's label (BCE); the answer's hallucination score is the max over its tokens
(``pool="mean"`` as an option). Paper defaults: reasoning subspace = right singular vectors of the
unembedding with the smallest singular values, 5 % of d; Adam, lr 1e-4 with cosine decay, 50 epochs,
batch 128, weight decay 3e-4. Inputs are standardised per projected dimension (our addition).

``projection`` selects the basis (the paper's ablations): ``reasoning`` (default), ``semantic`` (the
top-k singular directions, same k), ``random`` (a random orthonormal basis, same k), ``none`` (k raw,
seeded-random coordinates: no projection at the same dimension) and ``full`` (the whole d-dim state).
``reasoning`` and ``semantic`` need the unembedding SVD: from ``basis_file`` (a file written by
``hsrm.subspace.UnembeddingSVD.save``, e.g. the cache file) or, when that is None, from the SVD
cache of the features' model (``hsrm.subspace.unembedding_svd(lm)`` fills it); fit raises a clear
error when neither exists. The basis is part of the saved head, so a loaded head needs no SVD.

``score`` follows the head contract (higher = correct): minus the pooled hallucination logit.
``hallucination(X)`` gives the probability and the token where the max is.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from hsrm.errors import HsrmError
from hsrm.features import TokenFeatures
from hsrm.heads.base import Head, register
from hsrm.models import ModelFingerprint
from hsrm.subspace import (
    DEFAULT_REASONING_SIZE,
    UnembeddingSVD,
    cached_svd,
    coordinate_basis,
    random_basis,
    resolve_size,
)

log = logging.getLogger(__name__)
PROJECTIONS = ("reasoning", "semantic", "random", "none", "full")


def _mlp(k: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(k, hidden), nn.ReLU(), nn.Linear(hidden, 1))


@register("harp")
class HARPHead(Head):
    """``size``: subspace size, a fraction of d (0 < size < 1) or a count; ``layer``: hidden-state index
    to read (None = the last, n_layers); ``pool``: ``max`` or ``mean`` over tokens."""

    # the max-pooled token logit is not trained as a probability; the report's reliability
    # diagram shows how far sigmoid of it is from one
    calibrated = True
    display_order = 40
    label = "HARP"

    @classmethod
    def model_params(cls, params: dict[str, Any], fingerprint: ModelFingerprint) -> dict[str, Any]:
        """The SVD-based projections get ``basis_file``: the unembedding SVD of the features'
        model, computed once (loading the model by its name) and cached."""
        if params.get("projection", "reasoning") in ("reasoning", "semantic") and not params.get(
            "basis_file"
        ):
            from hsrm.subspace import cache_path, svd_for_fingerprint

            svd_for_fingerprint(fingerprint)
            params = {**params, "basis_file": str(cache_path(fingerprint))}
        return params

    def __init__(
        self,
        projection: str = "reasoning",
        size: float = DEFAULT_REASONING_SIZE,
        basis_file: str | None = None,
        layer: int | None = None,
        pool: str = "max",
        hidden: int = 1024,
        lr: float = 1e-4,
        weight_decay: float = 3e-4,
        epochs: int = 50,
        batch_size: int = 128,
        standardize: bool = True,
        seed: int = 0,
    ):
        self.projection = projection
        self.size = size
        self.basis_file = basis_file
        self.layer = layer
        self.pool = pool
        self.hidden = hidden
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.standardize = standardize
        self.seed = seed

    # -- basis --------------------------------------------------------------------------------
    def _basis(self, X: TokenFeatures) -> tuple[torch.Tensor, str]:
        d = X.hidden_size
        if self.projection not in PROJECTIONS:
            raise HsrmError(
                f"harp: unknown projection {self.projection!r}; use one of {', '.join(PROJECTIONS)}"
            )
        if self.projection == "full":
            return torch.eye(d), "identity"
        k = resolve_size(self.size, d)
        if self.projection == "random":
            return random_basis(d, k, self.seed), f"random(seed={self.seed})"
        if self.projection == "none":
            return coordinate_basis(d, k, self.seed), f"coordinates(seed={self.seed})"
        if self.basis_file:
            svd, src = UnembeddingSVD.load(self.basis_file), str(self.basis_file)
        else:
            hit, src = cached_svd(X.fingerprint), "svd cache"
            if hit is None:
                raise HsrmError(
                    f"harp: projection={self.projection!r} needs the unembedding SVD of {X.fingerprint.short()}: "
                    "pass basis_file=PATH, or compute it once with hsrm.subspace.unembedding_svd(load_model(...)) "
                    "(the CLI does this for you)"
                )
            svd = hit
        if not svd.fingerprint.compatible(X.fingerprint):
            raise HsrmError(
                f"harp: the SVD in {src} belongs to {svd.fingerprint.short()}, "
                f"but the features come from {X.fingerprint.short()}"
            )
        B = svd.reasoning_basis(k) if self.projection == "reasoning" else svd.semantic_basis(k)
        return B, src

    def _tokens(self, X: TokenFeatures, idx) -> list[torch.Tensor]:
        # each: (T_i, k) projected states of the head's layer
        pos = X.layers.index(self.layers_[0])
        return [X[int(i)][:, pos] @ self.basis_ for i in idx]

    # -- the contract ---------------------------------------------------------------------------
    def _fit(self, X: TokenFeatures, y: np.ndarray, groups: np.ndarray | None) -> None:
        if self.pool not in ("max", "mean"):
            raise HsrmError(f"harp: unknown pool {self.pool!r}; use max or mean")
        layer = self.layer if self.layer is not None else X.fingerprint.n_layers
        if layer not in X.layers:
            raise HsrmError(
                f"harp reads hidden-state index {layer} (the last layer by default) but the features "
                f"hold layers {list(X.layers)}; capture it (layers 'last' or include {layer})"
            )
        self.layers_ = (layer,)
        B, src = self._basis(X)
        self.basis_ = B.float().contiguous()  # (d, k)
        self.basis_source_ = src
        toks = self._tokens(X, range(len(X)))
        Z = torch.cat(toks)  # (N_tokens, k)
        if len(Z) == 0:
            raise HsrmError("harp: the training answers hold no tokens")
        # Target: 1 = hallucination (the answer was wrong), per token.
        t = torch.cat([torch.full((len(z),), 1.0 - float(lab)) for z, lab in zip(toks, y)])
        if self.standardize:
            self.mean_, self.std_ = Z.mean(0), Z.std(0).clamp_min(1e-6)
        else:
            self.mean_, self.std_ = torch.zeros(Z.shape[1]), torch.ones(Z.shape[1])
        Z = (Z - self.mean_) / self.std_
        torch.manual_seed(self.seed)
        net = _mlp(Z.shape[1], self.hidden)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        steps_per_epoch = math.ceil(len(Z) / self.batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=max(1, self.epochs * steps_per_epoch)
        )
        lossf = nn.BCEWithLogitsLoss()
        g = torch.Generator().manual_seed(self.seed)
        self.history_: list[float] = []
        net.train()
        for _ in range(self.epochs):
            order = torch.randperm(len(Z), generator=g)
            tot = 0.0
            for b in range(0, len(Z), self.batch_size):
                ii = order[b : b + self.batch_size]
                loss = lossf(net(Z[ii]).squeeze(-1), t[ii])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                tot += float(loss.detach()) * len(ii)
            self.history_.append(tot / len(Z))
        self.net_ = net.eval()
        log.info(
            "harp: %s basis (%s) k=%d, %d tokens, %d epochs, final train loss %.4f",
            self.projection,
            src,
            Z.shape[1],
            len(Z),
            self.epochs,
            self.history_[-1] if self.history_ else float("nan"),
        )

    @torch.no_grad()
    def token_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token hallucination logits (T,) of one answer's states of the head's layer, x: (T, d)."""
        self._check_fitted()
        return self.net_((x.float() @ self.basis_ - self.mean_) / self.std_).squeeze(-1)

    @torch.no_grad()
    def hallucination(self, X: TokenFeatures) -> tuple[np.ndarray, np.ndarray]:
        """(n,) hallucination probabilities (sigmoid of the pooled logit) and (n,) index of the
        token with the largest logit (-1 for an empty answer)."""
        self._check_fitted()
        self.check_compatible(X.fingerprint, X.layers)
        pooled, where = self._pooled(X)
        return 1.0 / (1.0 + np.exp(-pooled)), where

    @torch.no_grad()
    def _pooled(self, X: TokenFeatures) -> tuple[np.ndarray, np.ndarray]:
        pooled = np.zeros(len(X))
        where = np.full(len(X), -1, dtype=np.int64)
        pos = X.layers.index(self.layers_[0])
        for b0 in range(0, len(X), 512):  # one MLP pass over all tokens of 512 answers
            xs = [X[i][:, pos] for i in range(b0, min(len(X), b0 + 512))]  # each (T_i, d)
            lens = [len(x) for x in xs]
            if not sum(lens):
                continue
            lg = self.token_logits(torch.cat(xs))  # (sum T_i,)
            for j, seg in enumerate(torch.split(lg, lens)):
                if len(seg):
                    where[b0 + j] = int(seg.argmax())
                    pooled[b0 + j] = float(seg.max() if self.pool == "max" else seg.mean())
        return pooled, where

    def _score(self, X: TokenFeatures) -> np.ndarray:
        return -self._pooled(X)[0]

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        t = {f"net.{k}": v.detach().clone() for k, v in self.net_.state_dict().items()}
        t.update(basis=self.basis_, mean=self.mean_, std=self.std_)
        return t, {"basis_source": self.basis_source_, "history": getattr(self, "history_", [])}

    def _set_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        for key in ("basis", "mean", "std", "net.0.weight"):
            if key not in tensors:
                raise HsrmError(f"harp: saved state lacks tensor {key!r}")
        B = tensors["basis"]
        if B.shape[0] != self.fingerprint_.hidden_size:
            raise HsrmError(
                f"harp: saved basis is {tuple(B.shape)} but the model has d={self.fingerprint_.hidden_size}"
            )
        net = _mlp(B.shape[1], tensors["net.0.weight"].shape[0])
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        self.net_ = net.eval()
        self.basis_, self.mean_, self.std_ = (
            B.float(),
            tensors["mean"].float(),
            tensors["std"].float(),
        )
        self.basis_source_ = extra.get("basis_source", "saved")
        self.history_ = extra.get("history", [])
