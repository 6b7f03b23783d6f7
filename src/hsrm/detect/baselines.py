"""Uncertainty baselines of hallucination detection (higher = more likely wrong)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def perplexity(logprobs: Sequence[torch.Tensor]) -> np.ndarray:
    """exp(-mean token log-prob) of each answer (1.0 for an empty answer)."""
    return np.array([float(torch.exp(-lp.mean())) if len(lp) else 1.0 for lp in logprobs])


def length_normalised_entropy(entropy: Sequence[torch.Tensor]) -> np.ndarray:
    """Sum of the next-token predictive entropies over the answer divided by its length."""
    return np.array([float(e.sum() / len(e)) if len(e) else 0.0 for e in entropy])
