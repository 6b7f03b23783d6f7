"""SparseRM (arXiv 2511.07896): a preference reward model from the decoder directions of an SAE.

1. z: one layer's state of the response, pooled over its tokens (``pool``: the paper does not say;
   ``mean`` and ``last`` are offered, the default chosen by the benchmark);
2. SAE latents f(z); per latent, activation frequency on preferred minus on rejected responses; the
   top ``k`` latents by that difference and the top ``k`` by its negative (paper: K = 128) give 2K
   decoder directions d_j;
3. v = [<z, d_j>] (2K numbers, standardised on the training set) -> MLP with one hidden layer
   (paper: 512) -> scalar reward;
4. loss: pairwise margin max(0, gamma - (s_chosen - s_rejected)) (paper), ``bt`` (Bradley-Terry,
   -log sigmoid(s_c - s_r)) or ``bce`` (pointwise, chosen = 1 / rejected = 0).

Ablations (``features``): ``raw`` feeds the 2K selected SAE activations f_j(z) instead of the
projections, ``random`` 2K random unit directions instead of decoder vectors, ``dense`` z itself
(the DenseRM baseline; also registered as ``denserm``). Pairs come from ``groups``: every
(chosen, rejected) combination inside a group (a pair id, or a prompt with several labelled answers).

``sae``: a folder in SAELens's format (``hsrm.sae.SAE.load``). Without one, the head trains a small
TopK SAE (``sae_latents``, ``sae_k``) on its training answers' token states at ``layer``: a
self-contained fallback for tests and models with no SAE; train a real one with ``hsrm sae train``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from hsrm.errors import HsrmError
from hsrm.features import TokenFeatures
from hsrm.heads._defaults import with_defaults
from hsrm.heads.base import Head, register
from hsrm.splits import split_groups

log = logging.getLogger(__name__)

FEATURES = ("projection", "raw", "random", "dense")
LOSSES = ("margin", "bt", "bce")


def _pairs_in_groups(y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(n_pairs, 2) index pairs (chosen, rejected) within each group."""
    out = []
    _, inv = np.unique(groups.astype(str), return_inverse=True)
    order = np.argsort(inv, kind="stable")
    bounds = np.flatnonzero(np.diff(inv[order])) + 1
    for idx in np.split(order, bounds):
        pos, neg = idx[y[idx] == 1], idx[y[idx] == 0]
        if len(pos) and len(neg):
            out.append(np.stack(np.meshgrid(pos, neg, indexing="ij"), -1).reshape(-1, 2))
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=int)


def _mlp(n_in: int, hidden: int) -> nn.Module:
    """One hidden ReLU layer (paper: 512); ``hidden=0`` gives a linear reward."""
    if hidden <= 0:
        return nn.Sequential(nn.Linear(n_in, 1))
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, 1))


@register("sparserm")
class SparseRMHead(Head):
    """SparseRM. ``layer``: hidden-state index (None: the SAE's hook layer, else the middle captured
    layer); ``k``: latents per sign (2k features); ``hidden``: MLP width (0 = linear); ``margin``: gamma of the
    margin loss; training: Adam (``lr``, ``weight_decay``), full-batch over pairs, early stopping on
    the pairwise accuracy of a ``val_frac`` split by group."""

    needs_groups = True
    display_order = 50
    label = "SparseRM"

    def __init__(
        self,
        sae: str | None = None,
        layer: int | None = None,
        pool: str = "mean",
        k: int = 128,
        hidden: int = 512,
        features: str = "projection",
        loss: str = "margin",
        margin: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        epochs: int = 200,
        patience: int = 20,
        val_frac: float = 0.2,
        sae_latents: int = 1024,
        sae_k: int = 16,
        sae_steps: int = 500,
        seed: int = 0,
    ):
        self.sae = sae
        self.layer = layer
        self.pool = pool
        self.k = k
        self.hidden = hidden
        self.features = features
        self.loss = loss
        self.margin = margin
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.patience = patience
        self.val_frac = val_frac
        self.sae_latents = sae_latents
        self.sae_k = sae_k
        self.sae_steps = sae_steps
        self.seed = seed

    # -- features -------------------------------------------------------------------------------
    def _pick_layer(self, X: TokenFeatures, sae_layer: int | None) -> int:
        lay = self.layer if self.layer is not None else sae_layer
        if lay is None:
            mid = X.fingerprint.n_layers // 2
            lay = min(X.layers, key=lambda v: abs(v - mid))
        if lay not in X.layers:
            raise HsrmError(
                f"sparserm: layer {lay} not captured; these features hold layers {list(X.layers)}"
            )
        return int(lay)

    def _pooled(self, X: TokenFeatures) -> torch.Tensor:
        return X.select_layers([self.layers_[0]]).pooled(self.pool)[:, 0]  # (n, d)

    def _get_sae(self, X: TokenFeatures, y: np.ndarray):
        from hsrm.sae import SAE, hook_metadata, train_topk_sae

        if self.sae is not None:
            sae = SAE.load(self.sae)
            if sae.d_in != X.hidden_size:
                raise HsrmError(
                    f"sparserm: SAE {self.sae} reads d_in={sae.d_in}, features have d={X.hidden_size}"
                )
            if self.features == "raw" and sae.normalize_activations != "none":
                raise HsrmError(
                    f"sparserm: features='raw' stores the SAE's encoder without its per-token "
                    f"normalize_activations={sae.normalize_activations!r}; use features='projection'"
                )
            return sae
        lay = self._pick_layer(X, None)
        j = X.layers.index(lay)
        acts = torch.cat([X[i][:, j] for i in range(len(X))])  # (tokens, d)
        sae, _ = train_topk_sae(
            acts,
            d_sae=self.sae_latents,
            k=min(self.sae_k, self.sae_latents),
            steps=self.sae_steps,
            batch_size=min(512, len(acts)),
            lr=1e-3,
            seed=self.seed,
            meta=hook_metadata(lay, X.fingerprint.n_layers, X.fingerprint.name),
        )
        return sae

    def _transform(self, Z: torch.Tensor) -> torch.Tensor:
        """(n, d) pooled states -> (n, F) standardised head inputs."""
        if self.features == "dense":
            V = Z
        elif self.features == "raw":
            pre = (Z - self.b_dec_ * self.apply_b_dec_) @ self.W_enc_ + self.b_enc_
            if self.sae_arch_ == "topk":
                top = pre.topk(min(self.sae_topk_, pre.shape[1]), dim=-1)
                act = torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
            elif self.sae_arch_ == "jumprelu":
                act = pre.relu() * (pre > self.threshold_)
            else:
                act = pre.relu()
            V = act[:, self.selected_]
        else:
            V = Z @ self.directions_.T  # (n, 2K): <z, d_j>
        return (V - self.v_mean_) / self.v_std_

    # -- fit ------------------------------------------------------------------------------------
    def _fit(self, X: TokenFeatures, y: np.ndarray, groups: np.ndarray | None) -> None:
        if self.features not in FEATURES:
            raise HsrmError(f"sparserm: unknown features {self.features!r}; use one of {FEATURES}")
        if self.loss not in LOSSES:
            raise HsrmError(f"sparserm: unknown loss {self.loss!r}; use one of {LOSSES}")
        torch.manual_seed(self.seed)
        sae = None
        if self.features in ("projection", "raw"):
            sae = self._get_sae(X, y)
        sae_layer = None
        if sae is not None:
            sae_layer = sae.hidden_state_index(X.fingerprint.n_layers)
            if sae_layer is None and self.layer is None:
                raise HsrmError(
                    f"sparserm: SAE {self.sae} names no hook (cfg.json metadata.hook_name); pass "
                    "layer= (a hidden-state index) rather than guess the layer it reads"
                )
            if sae_layer is not None and self.layer is not None and sae_layer != self.layer:
                warnings.warn(
                    f"sparserm: layer={self.layer} but SAE {self.sae} was trained on hidden-state "
                    f"index {sae_layer} (hook {sae.hook_name or 'none'}); its latents may not transfer",
                    stacklevel=2,
                )
        self.layers_ = (self._pick_layer(X, sae_layer),)
        Z = self._pooled(X)  # (n, d)
        self.sae_arch_ = sae.architecture if sae is not None else "none"
        if sae is not None:
            with torch.no_grad():
                fired = (sae.encode(Z) > 0).float()  # (n, d_sae)
            diff = fired[torch.as_tensor(y == 1)].mean(0) - fired[torch.as_tensor(y == 0)].mean(0)
            k = min(self.k, sae.d_sae // 2)
            pos = torch.argsort(diff, descending=True)[:k]
            neg = torch.argsort(diff)[:k]
            self.selected_ = torch.cat([pos, neg])
            self.freq_diff_ = diff[self.selected_].clone()
            with torch.no_grad():
                self.directions_ = sae.W_dec[self.selected_].detach().clone()  # (2K, d)
            if self.features == "raw":
                self.W_enc_ = sae.W_enc.detach().clone()
                self.b_enc_ = sae.b_enc.detach().clone()
                self.b_dec_ = sae.b_dec.detach().clone()
                self.apply_b_dec_ = torch.tensor(float(sae.apply_b_dec_to_input))
                self.sae_topk_ = int(sae.k)
                self.threshold_ = (
                    sae.threshold.detach().clone()
                    if sae.architecture == "jumprelu"
                    else torch.zeros(sae.d_sae)
                )
        elif self.features == "random":
            g = torch.Generator().manual_seed(self.seed)
            D = torch.randn(2 * self.k, Z.shape[1], generator=g)
            self.directions_ = D / D.norm(dim=1, keepdim=True)
            self.selected_ = torch.full((2 * self.k,), -1, dtype=torch.long)
        else:
            self.selected_ = torch.zeros(0, dtype=torch.long)
        self.v_mean_ = torch.zeros(1)
        self.v_std_ = torch.ones(1)
        V = self._transform(Z)
        self.v_mean_, self.v_std_ = V.mean(0), V.std(0) + 1e-6
        V = (V - self.v_mean_) / self.v_std_
        if groups is None:  # Head.fit enforces needs_groups; kept for direct _fit callers
            raise HsrmError(f"{self.architecture} needs groups (prompt or pair ids) to fit")
        self.net_ = self._train(V, y, groups)

    def _train(self, V: torch.Tensor, y: np.ndarray, groups: np.ndarray) -> nn.Module:
        g = np.asarray(groups).astype(str)
        tr, va = (
            split_groups(g, self.val_frac, self.seed, require_both=False)
            if self.val_frac > 0
            else (np.ones(len(y), bool), None)
        )
        pairs_tr = _pairs_in_groups(y * tr + (~tr) * -1, g)  # y=-1 hides validation rows
        pairs_va = (
            _pairs_in_groups(y * va + (~va) * -1, g) if va is not None else np.zeros((0, 2), int)
        )
        if len(pairs_tr) == 0:
            raise HsrmError(
                "sparserm: no (chosen, rejected) pair shares a group; groups must be pair or prompt ids"
            )
        if len(pairs_va) == 0:  # too few groups for a validation split
            pairs_tr = _pairs_in_groups(y, g)
        net = _mlp(V.shape[1], self.hidden)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        yt = torch.as_tensor(y, dtype=torch.float32)
        ptr = torch.as_tensor(pairs_tr)
        rows_tr = torch.as_tensor(np.flatnonzero(tr) if len(pairs_va) else np.arange(len(y)))
        best, best_state, bad = -1.0, None, 0
        self.history_: list[dict[str, float]] = []
        for epoch in range(self.epochs):
            net.train()
            s = net(V).squeeze(-1)  # (n,)
            if self.loss == "bce":
                loss = nn.functional.binary_cross_entropy_with_logits(s[rows_tr], yt[rows_tr])
            else:
                d = s[ptr[:, 0]] - s[ptr[:, 1]]
                loss = (
                    (self.margin - d).relu().mean()
                    if self.loss == "margin"
                    else nn.functional.softplus(-d).mean()
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec = {"epoch": epoch, "loss": float(loss.detach())}
            if len(pairs_va):
                with torch.no_grad():
                    s = net.eval()(V).squeeze(-1)
                    d = s[pairs_va[:, 0]] - s[pairs_va[:, 1]]
                    acc = float(((d > 0).float() + 0.5 * (d == 0).float()).mean())
                rec["val_acc"] = acc
                if acc > best + 1e-9:
                    best, bad = acc, 0
                    best_state = {k: v.clone() for k, v in net.state_dict().items()}
                else:
                    bad += 1
                    if bad >= self.patience:
                        self.history_.append(rec)
                        break
            self.history_.append(rec)
        if best_state is not None:
            net.load_state_dict(best_state)
        log.info(
            "sparserm(%s, %s): %d epochs, val pair acc %.3f",
            self.features,
            self.loss,
            len(self.history_),
            best,
        )
        return net.eval()

    @torch.no_grad()
    def _score(self, X: TokenFeatures) -> np.ndarray:
        return self.net_(self._transform(self._pooled(X))).squeeze(-1).numpy()

    # -- persistence ----------------------------------------------------------------------------
    _TENSORS: tuple[str, ...] = ("selected", "v_mean", "v_std")
    _PROJ: tuple[str, ...] = ("directions", "freq_diff")
    _RAW: tuple[str, ...] = ("W_enc", "b_enc", "b_dec", "apply_b_dec", "threshold")

    def _names(self) -> tuple[str, ...]:
        names = self._TENSORS
        if self.features in ("projection", "random", "raw"):
            names = names + ("directions",)
        if self.features in ("projection", "raw"):
            names = names + ("freq_diff",)
        if self.features == "raw":
            names = names + self._RAW
        return names

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        t = {n: getattr(self, n + "_").detach().clone() for n in self._names()}
        t.update({f"net.{k}": v.detach().clone() for k, v in self.net_.state_dict().items()})
        return t, {
            "sae_arch": self.sae_arch_,
            "sae_topk": getattr(self, "sae_topk_", 0),
            "history": getattr(self, "history_", []),
        }

    def _set_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        missing = [n for n in self._names() if n not in tensors]
        if missing:
            raise HsrmError(f"sparserm: saved state lacks tensors {missing}")
        for n in self._names():
            setattr(self, n + "_", tensors[n])
        self.sae_arch_ = extra.get("sae_arch", "none")
        self.sae_topk_ = int(extra.get("sae_topk", 0))
        w0 = tensors["net.0.weight"]
        net = _mlp(w0.shape[1], w0.shape[0] if "net.2.weight" in tensors else 0)
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        self.net_ = net.eval()
        self.history_ = extra.get("history", [])
        d = self.fingerprint_.hidden_size
        if "directions" in tensors and tensors["directions"].shape[1] != d:
            raise HsrmError(
                f"sparserm: saved directions have d={tensors['directions'].shape[1]}, model d={d}"
            )

    def selected_latents(self) -> list[dict[str, float]]:
        """The 2K selected SAE latents with their frequency difference (chosen minus rejected)."""
        self._check_fitted()
        if self.features not in ("projection", "raw"):
            return []
        return [
            {"latent": int(j), "freq_diff": float(f)}
            for j, f in zip(self.selected_.tolist(), self.freq_diff_.tolist())
        ]


@register("denserm")
@with_defaults(features="dense")
class DenseRMHead(SparseRMHead):
    """DenseRM: SparseRM's MLP and loss on the pooled state z itself (no SAE)."""

    display_order = 51
    label = "DenseRM"
