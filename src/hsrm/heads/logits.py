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

from hsrm.features import (
    LOGITS_LAYER,
    LOGPROB_FLOOR,
    TOPK_LAYER,
    logit_features,
    topk_fingerprint,
    topk_token_features,
    toplogprob_features,
)
from hsrm.heads._defaults import with_defaults
from hsrm.heads.base import register
from hsrm.heads.elhsr import ELHSRHead

__all__ = [
    "LOGITS_LAYER",
    "LOGPROB_FLOOR",
    "TOPK_LAYER",
    "LogitsELHSRHead",
    "TopLogprobsELHSRHead",
    "logit_features",
    "topk_fingerprint",
    "topk_token_features",
    "toplogprob_features",
]


@with_defaults(fixed={"final_norm": False}, standardize=True)
class _StandardizedELHSR(ELHSRHead):
    """ELHSR over per-feature standardised inputs (``elhsr``'s ``standardize``, on by default here:
    log-prob features differ in scale by orders of magnitude) and no per-token RMS norm."""

    # its features hold one pseudo-layer (the log-probs), not hidden states: no layer to choose
    default_layers = None
    display_order = 15


@register("elhsr_logits")
@with_defaults(memory_gb=1.0)
class LogitsELHSRHead(_StandardizedELHSR):
    """ELHSR over full-vocabulary log-probs (``logit_features``). ``memory_gb`` bounds the fp16
    in-memory copy (1 GB: vocab-wide rows are large); above it features are recomputed per batch
    (cheap: one (T, d) x (d, V) matmul)."""


@register("elhsr_toplogprobs")
class TopLogprobsELHSRHead(_StandardizedELHSR):
    """ELHSR over API-style top-k log-prob features (``toplogprob_features``), d = 2k+3."""
