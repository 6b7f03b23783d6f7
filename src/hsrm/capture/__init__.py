"""Sampling with capture, and teacher-forced capture.

``sample_prompts`` decodes B prompts x N samples as one batch (prompts left-padded, one prefill per
prompt whose KV cache the N samples share, per-row positions and attention masks) and records for
every answer token the hidden states of the chosen layers and its log-probability *during* sampling
(no second forward pass). The state of answer token t is the one computed when t is fed back as
input, exactly where a teacher-forced pass over prompt + answer would put it; the last token needs
one extra decoder step, run without the LM head.

``teacher_force`` computes the same features for given answers (references, preference pairs, RL
completions), evaluating the LM head only on the positions that predict answer tokens.

Hidden-state index 0 is the embedding output and index ``n_layers`` the last block's output after
the final norm (the Hugging Face convention SWIFT uses). The LM itself is run through ``hsrm.lm``.

Reproducibility: each prompt draws all its random numbers up front from its own generator (seeded
by run seed and prompt id), one uniform per (step, sample); tokens are drawn by inverse-CDF
sampling with those uniforms. A prompt's samples therefore do not depend on which prompts share its
batch, on the batch size, or on rows that finished or were pruned around it.

The package, in the order a token goes through it: ``base`` (the layer spec, configs, answers,
drawing), ``batch`` (buffers, padding, the shared-prefix prefill), ``decode`` (the sampler),
``teacher`` (teacher forcing) and ``prune`` (the early-pruning policies the sampler's hook runs).
"""

from hsrm.capture.base import (
    CONFIDENCE_TOP_K,
    Answer,
    PromptResult,
    PruneHook,
    SampleConfig,
    SampleView,
    parse_layers,
    token_stats,
)
from hsrm.capture.batch import CAPTURE_BUFFER_BYTES, SHARED_PREFIX_MIN, prefix_groups
from hsrm.capture.decode import sample_prompt, sample_prompts
from hsrm.capture.teacher import teacher_force
from hsrm.lm import PrenormTap, prenorm_index, prompt_text

__all__ = [
    "CAPTURE_BUFFER_BYTES",
    "CONFIDENCE_TOP_K",
    "SHARED_PREFIX_MIN",
    "Answer",
    "PrenormTap",
    "PromptResult",
    "PruneHook",
    "SampleConfig",
    "SampleView",
    "parse_layers",
    "prefix_groups",
    "prenorm_index",
    "prompt_text",
    "sample_prompt",
    "sample_prompts",
    "teacher_force",
    "token_stats",
]
