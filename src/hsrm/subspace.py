"""The semantic and reasoning subspaces of a model's unembedding (HARP, arXiv 2509.11536).

The SVD of the (vocab, d) unembedding W = U S V^T orders the directions of the residual stream by
how strongly they move the logits. HARP calls the span of the right singular vectors with the
largest singular values (95 % of d) the *semantic* subspace and the remaining ~5 % of d (smallest
singular values) the *reasoning* subspace; hidden states projected on the latter feed its detector.

The SVD of a 49k x 576 matrix takes seconds on CPU, so it is computed once per model fingerprint and
cached as safetensors under ``hsrm.models.cache_dir()/svd/``; a cache hit is logged.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from hsrm.errors import HsrmError
from hsrm.io import atomic_write_bytes
from hsrm.models import LoadedModel, ModelFingerprint, cache_dir

log = logging.getLogger(__name__)

#: The paper's default: the reasoning subspace is the last ~5 % of d.
DEFAULT_REASONING_SIZE = 0.05


@dataclass(frozen=True)
class UnembeddingSVD:
    """Singular values (d,) in descending order and right singular vectors as columns of V (d, d)."""

    singular_values: torch.Tensor  # (d,)
    V: torch.Tensor  # (d, d); column j pairs with singular_values[j]
    fingerprint: ModelFingerprint

    @property
    def d(self) -> int:
        return int(self.V.shape[0])

    def reasoning_basis(self, size: float | int = DEFAULT_REASONING_SIZE) -> torch.Tensor:
        """(d, k): right singular vectors of the k *smallest* singular values."""
        k = resolve_size(size, self.d)
        return self.V[:, self.d - k :].clone()

    def semantic_basis(self, size: float | int | None = None) -> torch.Tensor:
        """(d, k): right singular vectors of the k largest singular values (default: d minus the
        default reasoning size, the complement of ``reasoning_basis()``)."""
        k = (
            self.d - resolve_size(DEFAULT_REASONING_SIZE, self.d)
            if size is None
            else resolve_size(size, self.d)
        )
        return self.V[:, :k].clone()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        meta = {
            "fingerprint": json.dumps(self.fingerprint.to_dict()),
            "kind": "hsrm-unembedding-svd",
        }
        atomic_write_bytes(
            path,
            save(
                {"singular_values": self.singular_values.contiguous(), "V": self.V.contiguous()},
                metadata=meta,
            ),
        )
        return path

    @staticmethod
    def load(path: str | Path) -> UnembeddingSVD:
        path = Path(path)
        if not path.exists():
            raise HsrmError(f"SVD file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("kind") != "hsrm-unembedding-svd" or "fingerprint" not in meta:
                    raise HsrmError(
                        f"{path}: not an hsrm unembedding SVD (metadata kind/fingerprint missing)"
                    )
                S, V = f.get_tensor("singular_values"), f.get_tensor("V")
        except HsrmError:
            raise
        except Exception as e:  # safetensors raises its own error types on corrupt files
            raise HsrmError(f"{path}: cannot read SVD file ({e})") from None
        fp = ModelFingerprint.from_dict(json.loads(meta["fingerprint"]))
        if V.ndim != 2 or V.shape[0] != V.shape[1] or S.shape != (V.shape[0],):
            raise HsrmError(
                f"{path}: malformed SVD (V {tuple(V.shape)}, singular_values {tuple(S.shape)})"
            )
        return UnembeddingSVD(S.float(), V.float(), fp)


def resolve_size(size: float | int, d: int) -> int:
    """A subspace size as a fraction of d (0 < size < 1) or a count (integer >= 1), clipped to [1, d]."""
    if isinstance(size, bool) or not isinstance(size, int | float):
        raise HsrmError(f"subspace size must be a fraction or a count, got {size!r}")
    if isinstance(size, float) and not size.is_integer():
        if not 0 < size < 1:
            raise HsrmError(f"subspace size {size} must be a fraction in (0, 1) or a count >= 1")
        return max(1, min(d, int(round(size * d))))
    k = int(size)
    if not 1 <= k <= d:
        raise HsrmError(f"subspace size {k} out of range: need 1 <= k <= d={d}")
    return k


def svd_of(W: torch.Tensor, fingerprint: ModelFingerprint) -> UnembeddingSVD:
    """SVD of a (vocab, d) unembedding, computed in float32 (float64 for small matrices)."""
    if W.ndim != 2:
        raise HsrmError(f"unembedding must be (vocab, d), got shape {tuple(W.shape)}")
    W = W.detach().cpu()
    W = W.double() if W.numel() <= 4_000_000 else W.float()
    _, S, Vh = torch.linalg.svd(W, full_matrices=False)  # S descending
    return UnembeddingSVD(S.float(), Vh.T.float().contiguous(), fingerprint)


def cache_path(fp: ModelFingerprint) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", fp.name)[-60:]
    return (
        cache_dir()
        / "svd"
        / f"{name}-{fp.revision[:16]}-{fp.vocab_size}x{fp.hidden_size}.safetensors"
    )


def cached_svd(fp: ModelFingerprint) -> UnembeddingSVD | None:
    """The cached SVD of this model, or None when it was never computed."""
    p = cache_path(fp)
    if not p.exists():
        return None
    svd = UnembeddingSVD.load(p)
    if not svd.fingerprint.compatible(fp):
        log.warning("SVD cache %s belongs to %s; ignoring it", p, svd.fingerprint.short())
        return None
    log.info("SVD cache hit: %s", p)
    return svd


def unembedding_svd(lm: LoadedModel, use_cache: bool = True) -> UnembeddingSVD:
    """The SVD of ``lm``'s unembedding, read from the cache when present, else computed and cached."""
    fp = lm.fingerprint
    if use_cache:
        hit = cached_svd(fp)
        if hit is not None:
            return hit
    t0 = time.perf_counter()
    W = lm.unembedding()  # (vocab, d)
    svd = svd_of(W, fp)
    log.info(
        "SVD of the %dx%d unembedding of %s: %.1f s",
        W.shape[0],
        W.shape[1],
        fp.short(),
        time.perf_counter() - t0,
    )
    if use_cache:
        p = svd.save(cache_path(fp))
        log.info("SVD cached at %s", p)
    return svd


def svd_for_fingerprint(fp: ModelFingerprint) -> UnembeddingSVD:
    """The SVD for a fingerprint: from the cache, or by loading the model by its name."""
    hit = cached_svd(fp)
    if hit is not None:
        return hit
    from hsrm.models import load_model

    lm = load_model(fp.name)
    if not lm.fingerprint.compatible(fp):
        raise HsrmError(f"loading {fp.name!r} gave {lm.fingerprint.short()}, not {fp.short()}")
    return unembedding_svd(lm)


def random_basis(d: int, k: int, seed: int = 0) -> torch.Tensor:
    """(d, k) orthonormal columns spanning a uniformly random k-dimensional subspace."""
    g = torch.Generator().manual_seed(seed)
    Q, R = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(R)).clamp_min(0).mul(2).sub(1)  # unique sign convention
    return Q.float()


def coordinate_basis(d: int, k: int, seed: int = 0) -> torch.Tensor:
    """(d, k) selector of k seeded-random coordinates: 'no projection' at the same dimension."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(d, generator=g)[:k].sort().values
    B = torch.zeros(d, k)
    B[idx, torch.arange(k)] = 1.0
    return B
