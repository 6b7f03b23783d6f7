"""Compact stores: a fixed, seeded random projection of every layer's states to k dimensions.

Per-token all-layer float16 states cost ``2 * (n_layers + 1) * d`` bytes per token (270 KB at 8B).
A Gaussian random projection (Johnson-Lindenstrauss; Achlioptas 2003) to k dims keeps inner products
and norms within ``O(1/sqrt(k))`` relative error, which is what linear and attention-pooled heads
read. Each layer has its own matrix, drawn from ``(seed, layer index)`` alone, so a subset of
layers projects the same way as the full set, and the matrix never needs storing: the store's
``meta.json`` records ``{"kind", "k", "seed"}`` and anything that scores live states recreates it.

Projected features carry the model's fingerprint with ``hidden_size = k`` and the projection's
tag appended to its revision, so a head trained on a projected store refuses unprojected (or
differently projected) features and vice versa, through the usual ``check_compatible``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hsrm.errors import HsrmError
from hsrm.features import TokenFeatures
from hsrm.models import ModelFingerprint

KINDS = ("gaussian",)


@dataclass(frozen=True)
class Projection:
    k: int
    seed: int = 0
    kind: str = "gaussian"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise HsrmError(f"projection: k must be >= 1, got {self.k}")
        if self.kind not in KINDS:
            raise HsrmError(f"projection: unknown kind {self.kind!r}; use one of {KINDS}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Projection | None:
        if not d:
            return None
        try:
            return cls(
                k=int(d["k"]), seed=int(d.get("seed", 0)), kind=str(d.get("kind", "gaussian"))
            )
        except KeyError as e:
            raise HsrmError(f"projection: missing field {e.args[0]!r} in {d}") from None

    def tag(self) -> str:
        return f"proj:{self.kind}:k{self.k}:s{self.seed}"

    def matrix(self, layer: int, d: int) -> torch.Tensor:
        """(d, k) float32 matrix of ``layer``, N(0, 1/k) entries (so norms are kept on average)."""
        h = hashlib.sha256(f"{self.kind}:{self.seed}:{layer}:{d}:{self.k}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))
        return torch.randn(d, self.k, generator=g) / self.k**0.5

    def matrices(self, layers: Sequence[int], d: int) -> torch.Tensor:
        """(L, d, k) stacked matrices of ``layers``."""
        return torch.stack([self.matrix(int(lay), d) for lay in layers])

    def apply(self, h: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        """(..., L, d) states of ``layers`` -> (..., L, k), float32."""
        if h.shape[-2] != len(layers):
            raise HsrmError(f"projection: states hold {h.shape[-2]} layers, expected {len(layers)}")
        P = self.matrices(layers, h.shape[-1]).to(h.device)  # (L, d, k)
        return torch.einsum("...ld,ldk->...lk", h.float(), P).contiguous()

    def fingerprint(self, fp: ModelFingerprint) -> ModelFingerprint:
        """The fingerprint projected features carry (width k, projection tag in the revision)."""
        return dataclasses.replace(fp, hidden_size=self.k, revision=f"{fp.revision}+{self.tag()}")


def project_features(X: TokenFeatures, proj: Projection) -> TokenFeatures:
    """The projected view of raw features (what a projected store holds), e.g. to score live
    states with a head trained on a projected store."""
    if "+proj:" in X.fingerprint.revision:
        raise HsrmError(f"features are already projected ({X.fingerprint.revision})")
    P = proj.matrices(X.layers, X.hidden_size)  # (L, d, k), built once
    get = X._get

    def getter(i: int) -> torch.Tensor:
        return torch.einsum("tld,ldk->tlk", get(i).float(), P)

    return TokenFeatures(getter, len(X), X.layers, proj.fingerprint(X.fingerprint), X._lp)


def bytes_per_token(n_layers_kept: int, d: int, store_dtype: str, k: int = 0) -> int:
    """Bytes one answer token's states take in a store: layers x width x dtype (+ int8/fp8 scales)."""
    w = k or d
    if store_dtype in ("float16", "bfloat16"):
        return n_layers_kept * w * 2
    if store_dtype in ("int8", "fp8"):
        return n_layers_kept * (w + 2)  # one float16 absmax scale per token and layer
    if store_dtype == "float32":
        return n_layers_kept * w * 4
    raise HsrmError(f"unknown storage dtype {store_dtype!r}")
