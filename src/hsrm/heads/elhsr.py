"""ELHSR / SWIFT: a gated linear reward over the concatenated hidden states of each answer token.

Per token t, one linear layer over the concatenated layers gives a gate g_t and a reward r_t; the
answer's score is sum_t sigmoid(g_t) r_t / sum_t sigmoid(g_t), trained with BCE-with-logits against
correct / incorrect. Defaults follow the SWIFT code (Guo et al., 2025): AdamW, lr 1e-4, weight
decay 1e-5, batch 16, up to 40 epochs, early stopping with patience 3 on a 20 % validation split
(here by prompt, so validation prompts are unseen).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from hsrm.errors import HsrmError
from hsrm.features import Indices, TokenFeatures
from hsrm.heads.base import Head, register
from hsrm.splits import split_groups

log = logging.getLogger(__name__)


class _ELHSRNet(nn.Module):
    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self, in_dim: int, gate: bool, final_norm: bool):
        super().__init__()
        self.linear = nn.Linear(in_dim, 2)
        self.gate, self.final_norm = gate, final_norm
        # Per-feature standardisation (identity unless fit with standardize=True).
        self.register_buffer("shift", torch.zeros(in_dim))
        self.register_buffer("scale", torch.ones(in_dim))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., L, d) -> (..., L*d)
        if self.final_norm:
            # Parameter-free RMS norm on every layer; the norm's fixed gain folds into `linear`.
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return (x.flatten(-2) - self.shift) / self.scale

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x: (B, T, L, d), mask: (B, T) -> (B,) score logits
        gr = self.linear(self.features(x))  # (B, T, 2)
        g, r = gr[..., 0], gr[..., 1]
        m = mask.float()
        w = torch.sigmoid(g) * m if self.gate else m
        return (w * r).sum(1) / w.sum(1).clamp_min(1e-6)


class _Packed:
    """Selected layers of a set of answers, held as fp16 in memory (on ``device``) when they fit
    the budget; batches come back as float32 on ``device``."""

    def __init__(self, X: TokenFeatures, budget_bytes: float, device: torch.device):
        self.X, self.device = X, device
        n = len(X)
        lens = [X[i].shape[0] for i in range(min(n, 64))]
        est = n * max(lens + [1]) * len(X.layers) * X.hidden_size * 2
        self.inmem = est <= budget_bytes
        if self.inmem:
            data, mask = X.padded(range(n))  # (answers, tokens, layers, d), (answers, tokens)
            self.data, self.mask = data.half().to(device), mask.to(device)

    def batch(self, idx: Indices) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inmem:
            ii = torch.as_tensor(np.asarray(idx), dtype=torch.long, device=self.device)
            m = self.mask[ii]
            t = max(1, int(m.sum(1).max()))
            return self.data[ii, :t].float(), m[:, :t]
        x, m = self.X.padded(idx)
        return x.to(self.device), m.to(self.device)


@register("elhsr")
class ELHSRHead(Head):
    """SWIFT's ELHSR head. ``layers``: subset of the captured hidden-state indices (None = all);
    ``gate=False`` gives a plain mean of per-token rewards; ``final_norm`` RMS-normalises every layer.

    Two options that are not in SWIFT (off by default; see benchmarks/results/ablations.md for
    what they change): ``standardize`` z-scores every input feature with training-token statistics,
    and ``early_stop="within_auroc"`` stops on the validation prompts' within-prompt AUROC (the
    ranking best-of-N needs) instead of the validation BCE, which mostly measures calibration
    across prompts of different difficulty.

    ``device`` is where the fit runs (``cpu``, ``cuda``, ``cuda:N``): the packed answers and the
    optimiser live there, and the fitted head comes back to the CPU, so scoring, saving and
    loading do not depend on it. ``memory_gb`` bounds the packed fp16 copy (on that device).
    """

    # hsrm train's layers: every 4th of the model's, 8 of 31 hidden states on the embedded model,
    # a quarter of the features' memory and fit time of all of them
    default_layers: ClassVar[str | None] = "every:4"
    calibrated = True  # trained with BCE: sigmoid(score) is meant as P(correct)
    token_view = True  # token_contributions: per-token gate and reward
    display_order = 10
    label = "ELHSR"

    def __init__(
        self,
        layers: Sequence[int] | None = None,
        gate: bool = True,
        final_norm: bool = False,
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        batch_size: int = 16,
        max_epochs: int = 40,
        patience: int = 3,
        val_frac: float = 0.2,
        seed: int = 0,
        memory_gb: float = 4.0,
        standardize: bool = False,
        early_stop: str = "loss",
        device: str = "cpu",
    ):
        self.layers = list(layers) if layers is not None else None
        self.gate = gate
        self.final_norm = final_norm
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_frac = val_frac
        self.seed = seed
        self.memory_gb = memory_gb
        self.standardize = standardize
        self.early_stop = early_stop
        self.device = device

    def _select(self, X: TokenFeatures) -> TokenFeatures:
        return X.select_layers(self.layers) if self.layers is not None else X

    def _fit(self, X: TokenFeatures, y: np.ndarray, groups: np.ndarray | None) -> None:
        X = self._select(X)
        self.layers_ = tuple(X.layers)
        torch.manual_seed(self.seed)
        dev = torch.device(self.device)
        net = _ELHSRNet(len(X.layers) * X.hidden_size, self.gate, self.final_norm).to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        g = groups if groups is not None else np.arange(len(y))
        tr, va = (
            split_groups(g, self.val_frac, self.seed, require_both=False)
            if self.val_frac > 0
            else (np.ones(len(y), bool), np.zeros(len(y), bool))
        )
        if va.sum() == 0 or len(np.unique(y[va])) < 1:
            tr, va = np.ones(len(y), bool), np.zeros(len(y), bool)
        if self.early_stop not in ("loss", "within_auroc"):
            raise HsrmError(
                f"elhsr: early_stop must be 'loss' or 'within_auroc', got {self.early_stop!r}"
            )
        packed = _Packed(X, self.memory_gb * 1e9, dev)
        tr_idx, va_idx = np.flatnonzero(tr), np.flatnonzero(va)
        if self.standardize:
            net.shift, net.scale = self._token_stats(packed, tr_idx, net)
        yt = torch.as_tensor(y).to(dev)
        rng = np.random.default_rng(self.seed)
        lossf = nn.BCEWithLogitsLoss()
        best, best_state, bad = float("inf"), None, 0
        self.history_: list[dict[str, float]] = []
        for epoch in range(self.max_epochs):
            net.train()
            order = rng.permutation(tr_idx)
            tot = torch.zeros((), device=dev)  # summed on the device: no host sync per step
            for b in range(0, len(order), self.batch_size):
                idx = order[b : b + self.batch_size]
                xb, mb = packed.batch(idx)
                loss = lossf(net(xb, mb), yt[torch.as_tensor(idx, device=dev)])
                opt.zero_grad()
                loss.backward()
                opt.step()
                tot += loss.detach() * len(idx)
            rec = {"epoch": epoch, "train_loss": float(tot) / max(1, len(order))}
            if len(va_idx):
                vl, vs = self._eval_loss(net, packed, va_idx, yt)
                rec["val_loss"] = vl
                if self.early_stop == "within_auroc":
                    from hsrm.metrics import within_prompt_auroc

                    wa = within_prompt_auroc(vs, y[va_idx], g[va_idx])
                    rec["val_within_auroc"] = wa
                    vl = -wa if wa == wa else vl
                if vl < best - 1e-6:
                    best, bad = vl, 0
                    best_state = {k: v.clone() for k, v in net.state_dict().items()}
                else:
                    bad += 1
            self.history_.append(rec)
            if len(va_idx) and bad >= self.patience:
                break
        if best_state is not None:
            net.load_state_dict(best_state)
        self.net_ = net.cpu().eval()
        if len(va_idx):
            log.info("elhsr: %d epochs, best validation value %.4f", len(self.history_), best)
        else:
            log.info(
                "elhsr: %d epochs on every training prompt (no validation split)",
                len(self.history_),
            )

    @staticmethod
    @torch.no_grad()
    def _token_stats(
        packed: _Packed, idx: np.ndarray, net: _ELHSRNet
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of every input feature over the training answers' tokens."""
        s = s2 = None
        n = 0
        for b in range(0, len(idx), 256):
            xb, mb = packed.batch(idx[b : b + 256])
            f = net.features(xb)[mb]  # (tokens, L*d)
            s = f.sum(0) if s is None else s + f.sum(0)
            s2 = f.pow(2).sum(0) if s2 is None else s2 + f.pow(2).sum(0)
            n += f.shape[0]
        assert s is not None and s2 is not None
        mean = s / max(n, 1)
        std = (s2 / max(n, 1) - mean.pow(2)).clamp_min(0).sqrt() + 1e-4
        return mean, std

    @torch.no_grad()
    def _eval_loss(
        self, net: nn.Module, packed: _Packed, idx: np.ndarray, yt: torch.Tensor
    ) -> tuple[float, np.ndarray]:
        net.eval()
        tot, scores = 0.0, []
        for b in range(0, len(idx), 256):
            ii = idx[b : b + 256]
            xb, mb = packed.batch(ii)
            out = net(xb, mb)
            scores.append(out.cpu().numpy())
            yi = yt[torch.as_tensor(ii, device=yt.device)]
            tot += float(nn.functional.binary_cross_entropy_with_logits(out, yi, reduction="sum"))
        return tot / len(idx), np.concatenate(scores)

    @torch.no_grad()
    def _score(self, X: TokenFeatures) -> np.ndarray:
        X = X.select_layers(self.layers_)
        out = []
        for b in range(0, len(X), 256):
            xb, mb = X.padded(range(b, min(len(X), b + 256)))
            out.append(self.net_(xb, mb))
        return torch.cat(out).numpy()

    @torch.no_grad()
    def token_scores(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Per-token (gate weight, reward) of one answer x: (T, L, d) over the head's layers."""
        gr = self.net_.linear(self.net_.features(x))
        return torch.sigmoid(gr[:, 0]).numpy(), gr[:, 1].numpy()

    def token_contributions(self, X: TokenFeatures) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per answer of ``X`` (any superset of the head's layers): (gate weights (T,), rewards
        (T,)); the answer's score is their gate-weighted mean (with ``gate=False`` the weights
        are all 1)."""
        self._check_fitted()
        X = X.select_layers(self.layers_)
        out = []
        for i in range(len(X)):
            g, r = self.token_scores(X[i].float())  # X[i]: (T, L, d)
            out.append((g if self.gate else np.ones_like(g), r))
        return out

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {k: v.detach().clone() for k, v in self.net_.state_dict().items()}, {
            "history": getattr(self, "history_", [])
        }

    def _set_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        in_dim = tensors["linear.weight"].shape[1]
        d = self.fingerprint_.hidden_size
        if in_dim != len(self.required_layers()) * d:
            raise HsrmError(
                f"elhsr weights expect {in_dim} inputs but layers {list(self.required_layers())} x d={d} give "
                f"{len(self.required_layers()) * d}"
            )
        net = _ELHSRNet(in_dim, self.gate, self.final_norm)
        net.load_state_dict(tensors)
        self.net_ = net.eval()
        self.history_ = extra.get("history", [])
