"""Optional head abilities, as small runtime-checkable protocols.

Every head has ``fit`` / ``score`` / ``save`` (``hsrm.heads.base.Head``). Some can do more; callers
ask with ``isinstance(head, HallucinationScorer)`` instead of probing attribute names with
``hasattr``, so the ability is named, typed and documented in one place.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from hsrm.features import TokenFeatures


@runtime_checkable
class HallucinationScorer(Protocol):
    """Per-answer hallucination probability and where it peaks (HARP)."""

    def hallucination(self, X: TokenFeatures) -> tuple[np.ndarray, np.ndarray]:
        """(n,) probabilities and (n,) index of the token with the largest logit (-1 if empty)."""
        ...


@runtime_checkable
class LatentSelector(Protocol):
    """A head over SAE latents that keeps a subset of them (SparseRM)."""

    def selected_latents(self) -> list[dict[str, float]]:
        """The selected latents: ``{"latent": index, "freq_diff": chosen minus rejected}`` each."""
        ...


@runtime_checkable
class TokenScorer(Protocol):
    """Per-token scores of one answer (ELHSR: gate weight and reward of every token)."""

    def token_scores(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(T,) gate weights and (T,) rewards of one answer x: (T, L, d)."""
        ...


__all__ = ["HallucinationScorer", "LatentSelector", "TokenScorer"]
