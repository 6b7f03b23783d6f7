"""hsrm: hidden-state reward models.

Score an LLM's answers from its own hidden states, logits, SAE latents or a subspace of its last
hidden state, with heads of ~1e5 parameters: ELHSR/SWIFT, SparseRM, HARP and linear probes.
"""

__version__ = "0.1.0"
