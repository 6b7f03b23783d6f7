"""Sparse autoencoders on one layer's activations: the SAE and its SAELens 6 folder format
(``hsrm.sae.model``), and training one on a model's activations (``hsrm.sae.train``)."""

from hsrm.sae.model import (
    ARCHITECTURES,
    CFG_FILE,
    NORMALIZATIONS,
    SAE,
    WEIGHTS_FILE,
    hidden_index_to_hook,
    hook_metadata,
    hook_to_hidden_index,
)
from hsrm.sae.train import collect_activations, sae_stats, top_activating_tokens, train_topk_sae

__all__ = [
    "ARCHITECTURES",
    "CFG_FILE",
    "NORMALIZATIONS",
    "SAE",
    "WEIGHTS_FILE",
    "collect_activations",
    "hidden_index_to_hook",
    "hook_metadata",
    "hook_to_hidden_index",
    "sae_stats",
    "top_activating_tokens",
    "train_topk_sae",
]
