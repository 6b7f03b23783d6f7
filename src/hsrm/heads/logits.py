"""Logits-only ELHSR heads, for models whose hidden states you cannot read.

Both are SWIFT's gated linear head (``elhsr``) over other per-token features, standardised per
feature on the training tokens (the scales differ by orders of magnitude):

* ``elhsr_logits`` -- SWIFT's logits mode: the full-vocabulary next-token log-probabilities at every
  answer token. ``logit_features(X, unembedding)`` turns captured last-layer states into them
  lazily (logits = W h, with h the last hidden state after the final norm), so nothing of size
  vocab is stored. Features: ``layers=(LOGITS_LAYER,)``, d = vocab; ~2 x vocab parameters.
* ``elhsr_toplogprobs`` -- what an OpenAI-compatible API returns (``top_logprobs``, k <= 20): per
  answer token the vector [top-k log-probs (sorted), their probabilities, the chosen token's
  log-prob, the probability mass outside the top k, the entropy of the renormalised top k], d = 2k+3.
  ``toplogprob_features`` builds them from API logs (``hsrm.apilog.read_api_log``) or from hsrm
  samples drawn with ``SampleConfig(top_logprobs=k)``. Features: ``layers=(TOPK_LAYER,)``.

Logit features carry the model's fingerprint with ``hidden_size`` set to the feature width, so a
head trained on one kind of feature refuses the others (and other models). Defaults otherwise are
SWIFT's (see ``hsrm.heads.elhsr``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from hsrm.errors import HsrmError
from hsrm.features import TokenFeatures
from hsrm.heads.base import register
from hsrm.heads.elhsr import ELHSRHead
from hsrm.models import ModelFingerprint

LOGITS_LAYER = -1  # pseudo layer index of full-vocabulary log-prob features
TOPK_LAYER = -2  # pseudo layer index of top-k log-prob features
LOGPROB_FLOOR = -30.0  # APIs report underflow as -9999; clamp so it does not dominate


def logit_features(
    X: TokenFeatures,
    unembedding: torch.Tensor,
    layer: int | None = None,
    softcap: float | None = None,
    transform: str = "log_softmax",
) -> TokenFeatures:
    """Full-vocabulary features from captured states of ``layer`` (default: the last, after the
    final norm). ``unembedding`` is ``LoadedModel.unembedding()`` (vocab, d). ``transform``:
    ``log_softmax`` (log-probs, what SWIFT's logits mode sees up to a per-token shift) or ``none``."""
    fp = X.fingerprint
    layer = fp.n_layers if layer is None else layer
    if layer not in X.layers:
        raise HsrmError(
            f"logit features need layer {layer} (the last hidden state); the features hold {list(X.layers)}"
        )
    if unembedding.ndim != 2 or unembedding.shape[1] != X.hidden_size:
        raise HsrmError(
            f"unembedding has shape {tuple(unembedding.shape)}; expected (vocab, {X.hidden_size})"
        )
    if transform not in ("log_softmax", "none"):
        raise HsrmError(f"logit features: unknown transform {transform!r}; use log_softmax or none")
    W = unembedding.float()
    pos = X.layers.index(layer)
    get = X._get

    def getter(i: int) -> torch.Tensor:
        h = get(i)[:, pos]  # (T, d)
        z = h @ W.T  # (T, vocab)
        if softcap:
            z = torch.tanh(z / softcap) * softcap
        if transform == "log_softmax":
            z = torch.log_softmax(z, -1)
        return z[:, None]  # (T, 1, vocab)

    fp2 = dataclasses.replace(fp, hidden_size=int(W.shape[0]))
    return TokenFeatures(getter, len(X), (LOGITS_LAYER,), fp2, X._lp)


def topk_token_features(chosen: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """(T,) chosen-token log-probs and (T, k) top-k log-probs -> (T, 2k+3) features."""
    top = top.float().clamp_min(LOGPROB_FLOOR).sort(-1, descending=True).values
    chosen = chosen.float().clamp_min(LOGPROB_FLOOR)
    p = top.exp()  # (T, k)
    mass = p.sum(-1, keepdim=True)
    rest = (1 - mass).clamp_min(0)
    q = p / mass.clamp_min(1e-12)
    ent = -(q * q.clamp_min(1e-12).log()).sum(-1, keepdim=True)
    return torch.cat([top, p, chosen[:, None], rest, ent], -1)


def topk_fingerprint(name: str, revision: str, k: int) -> ModelFingerprint:
    """The fingerprint top-k features carry: the model's name and revision (API: ``model`` and
    ``system_fingerprint``) and the feature width; no layers, no vocabulary."""
    return ModelFingerprint(
        name=name, revision=revision, n_layers=0, hidden_size=2 * k + 3, vocab_size=0
    )


def toplogprob_features(
    samples: Sequence[Any],
    k: int | None = None,
    fingerprint: ModelFingerprint | None = None,
) -> TokenFeatures:
    """Top-k features of API samples (``hsrm.apilog.ApiSample``) or of hsrm ``Answer`` objects
    sampled with ``top_logprobs=k`` (then pass the model's ``fingerprint``)."""
    if not samples:
        raise HsrmError("top-k features: no samples")
    pairs = []
    for j, s in enumerate(samples):
        if hasattr(s, "top_logprobs") and isinstance(s.top_logprobs, torch.Tensor):  # ApiSample
            pairs.append((s.logprobs, s.top_logprobs))
        elif "top_logprobs" in getattr(s, "extra", {}):  # capture.Answer
            pairs.append((s.logprobs, s.extra["top_logprobs"]))
        else:
            raise HsrmError(
                f"sample {j} carries no top-k log-probs; sample with SampleConfig(top_logprobs=k)"
            )
    have = [t.shape[1] for lp, t in pairs if t.shape[0] > 0]
    if not have:
        raise HsrmError("top-k features: every sample is empty")
    kk = min(have) if k is None else k
    if min(have) < kk:
        bad = next(j for j, (_, t) in enumerate(pairs) if t.shape[0] and t.shape[1] < kk)
        raise HsrmError(
            f"top-k features: sample {bad} has {pairs[bad][1].shape[1]} top log-probs; need k={kk}"
        )
    if fingerprint is None:
        s0 = samples[0]
        if not hasattr(s0, "system_fingerprint"):
            raise HsrmError("top-k features of hsrm answers need the model's fingerprint")
        fps = {(s.model, s.system_fingerprint) for s in samples}
        if len(fps) > 1:
            raise HsrmError(f"top-k features: samples come from several models {sorted(fps)}")
        fingerprint = topk_fingerprint(s0.model, s0.system_fingerprint, kk)
    else:
        fingerprint = topk_fingerprint(fingerprint.name, fingerprint.revision, kk)
    feats = [
        topk_token_features(lp, t[:, :kk])[:, None] if t.shape[0] else torch.zeros(0, 1, 2 * kk + 3)
        for lp, t in pairs
    ]
    return TokenFeatures.from_tensors(feats, (TOPK_LAYER,), fingerprint, [lp for lp, _ in pairs])


class _StandardizedELHSR(ELHSRHead):
    """ELHSR over per-feature standardised inputs (``elhsr``'s ``standardize``, on by default here:
    log-prob features differ in scale by orders of magnitude) and no per-token RMS norm."""

    def __init__(
        self,
        layers: Sequence[int] | None = None,
        gate: bool = True,
        standardize: bool = True,
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        batch_size: int = 16,
        max_epochs: int = 40,
        patience: int = 3,
        val_frac: float = 0.2,
        seed: int = 0,
        memory_gb: float = 4.0,
        early_stop: str = "loss",
    ):
        super().__init__(
            layers=layers,
            gate=gate,
            final_norm=False,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            max_epochs=max_epochs,
            patience=patience,
            val_frac=val_frac,
            seed=seed,
            memory_gb=memory_gb,
            standardize=standardize,
            early_stop=early_stop,
        )


@register("elhsr_logits")
class LogitsELHSRHead(_StandardizedELHSR):
    """ELHSR over full-vocabulary log-probs (``logit_features``). ``memory_gb`` bounds the fp16
    in-memory copy; above it features are recomputed per batch (cheap: one (T, d) x (d, V) matmul)."""

    def __init__(
        self,
        layers: Sequence[int] | None = None,
        gate: bool = True,
        standardize: bool = True,
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        batch_size: int = 16,
        max_epochs: int = 40,
        patience: int = 3,
        val_frac: float = 0.2,
        seed: int = 0,
        memory_gb: float = 1.0,
        early_stop: str = "loss",
    ):
        super().__init__(
            layers,
            gate,
            standardize,
            lr,
            weight_decay,
            batch_size,
            max_epochs,
            patience,
            val_frac,
            seed,
            memory_gb,
            early_stop,
        )


@register("elhsr_toplogprobs")
class TopLogprobsELHSRHead(_StandardizedELHSR):
    """ELHSR over API-style top-k log-prob features (``toplogprob_features``), d = 2k+3."""
