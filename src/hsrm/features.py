"""Per-answer token features, the one input type every head consumes.

A ``TokenFeatures`` is a lazy sequence: item i is answer i's tensor of shape (tokens, layers, d),
read on demand (from memory-mapped store shards or from tensors in memory). Heads never see the LM.

Derived features for heads that read no hidden state (``hsrm.heads.logits``) are built here too:
``logit_features`` (full-vocabulary log-probs from the last state, SWIFT's logits mode) and
``toplogprob_features`` (what an OpenAI-compatible API returns as ``top_logprobs``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from hsrm.errors import HsrmError
from hsrm.models import ModelFingerprint

Indices = Sequence[int] | np.ndarray  # sample indices


class TokenFeatures:
    """Lazy per-answer features: ``feats[i]`` is a float32 tensor (T_i, L, d)."""

    def __init__(
        self,
        getter: Callable[[int], torch.Tensor],
        n: int,
        layers: tuple[int, ...],
        fingerprint: ModelFingerprint,
        logprob_getter: Callable[[int], torch.Tensor] | None = None,
    ):
        self._get, self._n = getter, n
        self.layers = tuple(layers)
        self.fingerprint = fingerprint
        self._lp = logprob_getter

    @classmethod
    def from_tensors(
        cls,
        tensors: Sequence[torch.Tensor],
        layers: Sequence[int],
        fingerprint: ModelFingerprint,
        logprobs: Sequence[torch.Tensor] | None = None,
    ) -> TokenFeatures:
        """Wrap in-memory tensors, each (T_i, L, d)."""
        for i, t in enumerate(tensors):
            if t.ndim != 3 or t.shape[1] != len(layers):
                raise HsrmError(
                    f"features[{i}] has shape {tuple(t.shape)}; expected (tokens, {len(layers)}, d)"
                )
        ts = list(tensors)
        lp = list(logprobs) if logprobs is not None else None
        return cls(
            lambda i: ts[i].float(),
            len(ts),
            tuple(layers),
            fingerprint,
            (lambda i: lp[i]) if lp is not None else None,
        )

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < self._n:
            raise IndexError(i)
        return self._get(i)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(self._n):
            yield self._get(i)

    @property
    def hidden_size(self) -> int:
        return self.fingerprint.hidden_size

    def logprobs(self, i: int) -> torch.Tensor:
        if self._lp is None:
            raise HsrmError("these features carry no log-probabilities")
        return self._lp(i)

    def subset(self, idx: Indices) -> TokenFeatures:
        idx = [int(i) for i in idx]
        get, lp = self._get, self._lp
        return TokenFeatures(
            lambda j: get(idx[j]),
            len(idx),
            self.layers,
            self.fingerprint,
            (lambda j: lp(idx[j])) if lp is not None else None,
        )

    def select_layers(self, layers: Sequence[int]) -> TokenFeatures:
        """Keep only ``layers`` (hidden-state indices); a clear error if one was not captured."""
        missing = [lay for lay in layers if lay not in self.layers]
        if missing:
            raise HsrmError(
                f"layers {missing} were not captured; these features hold layers {list(self.layers)}"
            )
        if tuple(layers) == self.layers:
            return self
        pos = [self.layers.index(lay) for lay in layers]
        get = self._get
        return TokenFeatures(
            lambda i: get(i)[:, pos], self._n, tuple(layers), self.fingerprint, self._lp
        )

    def pooled(self, how: str = "mean") -> torch.Tensor:
        """(n, L, d): mean, last or max over each answer's tokens, computed one answer at a time."""
        out = torch.zeros(self._n, len(self.layers), self.hidden_size)
        for i in range(self._n):
            x = self._get(i)
            if x.shape[0] == 0:
                continue
            if how == "mean":
                out[i] = x.mean(0)
            elif how == "last":
                out[i] = x[-1]
            elif how == "max":
                out[i] = x.max(0).values
            else:
                raise HsrmError(f"unknown pooling {how!r}; use mean, last or max")
        return out

    def padded(self, idx: Indices | range) -> tuple[torch.Tensor, torch.Tensor]:
        """A padded batch: (B, T, L, d) features and a (B, T) bool mask of real tokens."""
        xs = [self._get(int(i)) for i in idx]
        T = max(1, max(x.shape[0] for x in xs))
        X = torch.zeros(len(xs), T, len(self.layers), self.hidden_size)
        M = torch.zeros(len(xs), T, dtype=torch.bool)
        for j, x in enumerate(xs):
            X[j, : x.shape[0]] = x
            M[j, : x.shape[0]] = True
        return X, M

    def map(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        layers: Sequence[int],
        fingerprint: ModelFingerprint,
    ) -> TokenFeatures:
        """Lazy per-answer transform: item i becomes ``fn(self[i])`` (T, L', d'), described by
        ``layers`` and ``fingerprint``; the log-probs are kept. How derived features (logits, ...)
        are built without reaching into this class's internals."""
        get = self._get
        return TokenFeatures(lambda i: fn(get(i)), self._n, tuple(layers), fingerprint, self._lp)

    def materialize(self) -> TokenFeatures:
        """Read every item once into memory (for small sets that are iterated many times)."""
        ts = [self._get(i) for i in range(self._n)]
        lp = [self._lp(i) for i in range(self._n)] if self._lp is not None else None
        return TokenFeatures.from_tensors(ts, self.layers, self.fingerprint, lp)

    def nbytes(self) -> int:
        return sum(self._get(i).numel() * 4 for i in range(self._n))


# -- features derived from the LM's output distribution (logits-only heads, API logs) --------------
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

    def to_logits(x: torch.Tensor) -> torch.Tensor:
        z = x[:, pos] @ W.T  # (T, d) -> (T, vocab)
        if softcap:
            z = torch.tanh(z / softcap) * softcap
        if transform == "log_softmax":
            z = torch.log_softmax(z, -1)
        return z[:, None]  # (T, 1, vocab)

    fp2 = dataclasses.replace(fp, hidden_size=int(W.shape[0]))
    return X.map(to_logits, (LOGITS_LAYER,), fp2)


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
