"""The prompt / question splitters: hold out whole groups, never single samples.

Every train / held-out split in hsrm (a head's validation split, ``hsrm detect``'s question split,
``hsrm prefs``' pair split) goes through ``split_groups`` so that they all behave the same way: the
held-out share is rounded to whole groups and clamped to at least one group on each side.

Best-of-N keeps two splitters of its own, because stores and heads on disk were split by them (a
head's ``training.json`` lists its prompts; evaluate holds out the rest): ``is_test_prompt``, a
hash of the prompt id, so a prompt's side does not depend on which other prompts a store holds
(``hsrm train``), and ``prompt_folds``, k folds by prompt (``hsrm demo``'s cross-fitting).
Both must stay byte-identical (tests/test_splits_tables.py pins them).
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from hsrm.errors import HsrmError

log = logging.getLogger(__name__)


def split_groups(
    groups: np.ndarray,
    frac: float,
    seed: int = 0,
    *,
    require_both: bool = True,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, held_out) over samples, holding out ``round(frac * n_groups)`` groups
    (at least 1, at most n_groups - 1), drawn with ``np.random.default_rng(seed)`` from the sorted
    unique group ids.

    With fewer than two groups nothing can be held out: ``require_both`` raises ``HsrmError``, else
    every sample is train. ``labels``, when given, are checked so that a side holding one class only
    is logged as a warning (its AUROC would be undefined)."""
    groups = np.asarray(groups)
    if not 0 < frac < 1:
        raise HsrmError(f"split: held-out fraction must be in (0, 1), got {frac}")
    uniq = np.unique(groups)
    if len(uniq) < 2:
        if require_both:
            raise HsrmError(f"split: need at least 2 groups (prompts / questions), got {len(uniq)}")
        return np.ones(len(groups), bool), np.zeros(len(groups), bool)
    n_held = min(len(uniq) - 1, max(1, int(round(frac * len(uniq)))))
    rng = np.random.default_rng(seed)
    held_groups = set(rng.choice(uniq, size=n_held, replace=False).tolist())
    held = np.array([g in held_groups for g in groups.tolist()], dtype=bool)
    if labels is not None:
        y = np.asarray(labels)
        for name, m in (("train", ~held), ("held-out", held)):
            if len(np.unique(y[m])) < 2:
                log.warning("split: the %s side holds one class only (%d samples)", name, m.sum())
    return ~held, held


def prompt_folds(prompt_ids: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) of each sample, assigned per *prompt* (never per sample)."""
    uniq = np.unique(prompt_ids)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(uniq))
    fold_of = {uniq[j]: i % k for i, j in enumerate(perm)}
    return np.array([fold_of[p] for p in prompt_ids])


def is_test_prompt(prompt_id: str, test_frac: float, seed: int) -> bool:
    """Whether ``prompt_id`` is held out: the first 8 bytes of sha256("seed:id") as a uniform
    in [0, 1), below ``test_frac``."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:8], "little")
    return (h / 2**64) < test_frac
