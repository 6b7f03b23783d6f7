"""Per-answer token features, the one input type every head consumes.

A ``TokenFeatures`` is a lazy sequence: item i is answer i's tensor of shape (tokens, layers, d),
read on demand (from memory-mapped store shards or from tensors in memory). Heads never see the LM.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

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

    def materialize(self) -> TokenFeatures:
        """Read every item once into memory (for small sets that are iterated many times)."""
        ts = [self._get(i) for i in range(self._n)]
        lp = [self._lp(i) for i in range(self._n)] if self._lp is not None else None
        return TokenFeatures.from_tensors(ts, self.layers, self.fingerprint, lp)

    def nbytes(self) -> int:
        return sum(self._get(i).numel() * 4 for i in range(self._n))
