"""Aligned decode windows: prompts sampled in the same batches whatever engine samples them.

Batches are aligned to absolute prompt positions, so a prompt always shares its batch with the
same neighbours and a resumed run, or a Ray worker sampling one shard, writes byte-identical
shards (``hsrm.sampling`` and ``hsrm.scale`` both sample through these).
"""

from __future__ import annotations

from typing import Any

from hsrm.capture.base import PromptResult, SampleConfig
from hsrm.capture.decode import sample_prompts
from hsrm.tasks.base import Prompt


def sample_batch(
    lm: Any,
    prompts: list[Prompt],
    scfg: SampleConfig,
    layers: tuple[int, ...],
    batch_prompts: int,
    prune: Any = None,
) -> list[PromptResult]:
    """``sample_prompts`` with the pruning policy: a per-step hook, or ``consensus``'s waves."""
    if hasattr(prune, "sample"):  # hsrm.capture.prune.ConsensusStop
        return prune.sample(lm, prompts, scfg, layers, batch_prompts)
    return sample_prompts(lm, prompts, scfg, layers, batch_prompts=batch_prompts, prune=prune)


def window_prompts(batch_prompts: int, refill_window: int = 0) -> int:
    """Prompts per aligned sampling window: the refill window if set (at least one batch), else
    one batch."""
    return max(refill_window, batch_prompts) if refill_window else batch_prompts


def batch_window(k: int, shard_prompts: int, batch_prompts: int, n_prompts: int) -> tuple[int, int]:
    """Prompt positions [a, b) of the aligned batches (``sample``'s) that cover shard k."""
    lo, hi = k * shard_prompts, min((k + 1) * shard_prompts, n_prompts)
    B = batch_prompts
    return (lo // B) * B, min(-(-hi // B) * B, n_prompts)


def sample_window(
    lm: Any,
    window: list[Prompt],
    start: int,
    lo: int,
    hi: int,
    B: int,
    scfg: SampleConfig,
    layers: tuple[int, ...],
    batch_prompts: int = 0,
    prune: Any = None,
) -> list[PromptResult]:
    """Results of prompts at positions [lo, hi), sampled in the same aligned batches (windows) of
    B as the local engine (``window`` = the prompts at positions [start, start + len(window))),
    with at most ``batch_prompts`` decoding at once (refill), so another engine sampling one shard
    at a time writes byte-identical shards. ``prune``: the early-pruning hook, as in ``sample``."""
    out = []
    for c in range(0, len(window), B):
        res = sample_batch(lm, window[c : c + B], scfg, layers, batch_prompts, prune)
        for j, r in enumerate(res):
            if lo <= start + c + j < hi:
                out.append(r)
    return out
