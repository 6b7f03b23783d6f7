"""Detection data: the task behind a ``--source``, labelled answers read from a store, the split by
question."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsrm.errors import HsrmError
from hsrm.features import TokenFeatures
from hsrm.splits import split_groups
from hsrm.store import Store
from hsrm.tasks import get_task
from hsrm.tasks.base import Task
from hsrm.tasks.rouge import DEFAULT_ROUGE_THRESHOLD, TRUTHFUL
from hsrm.tasks.truthfulqa import TruthfulQATask

SPLITS = ("train", "test", "all")


def make_task(
    source: str,
    n_prompts: int | None = None,
    threshold: float = DEFAULT_ROUGE_THRESHOLD,
    seed: int = 0,
    shots: int = 3,
) -> Task:
    """The task of a ``--source``: ``truthfulqa:PATH`` (sampled, ROUGE-L labels),
    ``truthfulqa-refs:PATH`` (teacher-forced references) or any other ``hsrm.tasks.get_task`` spec
    (``synthetic``, ``gsm8k:PATH``, ...), each given only the options it takes."""
    name = source.partition(":")[0]
    kw: dict[str, Any] = {}
    if name.startswith("truthfulqa"):
        kw = {"limit": n_prompts, "threshold": threshold, "shots": shots}
    elif name == "synthetic":
        kw = {"n": n_prompts or 320, "seed": seed}
    else:  # files: gsm8k and bbh draw their few-shot examples with the seed
        kw = {"limit": n_prompts, "shots": shots, "seed": seed}
    return get_task(source, **kw)


@dataclass
class DetectData:
    """Labelled answers from a store: features, labels (1 = correct), question ids, texts, and the
    per-token log-probs and entropies the uncertainty baselines need."""

    features: TokenFeatures
    labels: np.ndarray
    groups: np.ndarray
    texts: list[str]
    logprobs: list[torch.Tensor]
    entropy: list[torch.Tensor]
    n_unlabelled: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: Sequence[int] | np.ndarray) -> DetectData:
        idx = np.asarray(idx, dtype=np.int64)
        return DetectData(
            self.features.subset(idx),
            self.labels[idx],
            self.groups[idx],
            [self.texts[i] for i in idx],
            [self.logprobs[i] for i in idx],
            [self.entropy[i] for i in idx],
            0,
        )


def load_labelled(
    path: str | Path | Store, labels: Sequence[int | None] | None = None, drop_empty: bool = True
) -> DetectData:
    """Labelled answers of a store (unlabelled TruthfulQA answers dropped and counted).

    ``labels`` (one per record, 1 / 0 / None = unlabelled) overrides the stored labels, e.g. from
    ``relabel_truthfulqa`` with another ROUGE-L threshold."""
    st = path if isinstance(path, Store) else Store(path)
    if labels is not None and len(labels) != len(st.records):
        raise HsrmError(f"{st.path}: {len(st.records)} records but {len(labels)} labels")
    unl = st.meta.get("task", {}).get("name") == "truthfulqa"
    keep, ys, n_unl = [], [], 0
    for i, r in enumerate(st.records):
        y = (
            (None if unl and r.get("extracted") is None else int(r["label"]))
            if labels is None
            else labels[i]
        )
        if y is None:
            n_unl += 1
            continue
        if drop_empty and r["n_tokens"] == 0:
            continue
        keep.append(i)
        ys.append(int(y))
    if not keep:
        raise HsrmError(f"{st.path}: no labelled answers ({n_unl} unlabelled)")
    feats = st.features(keep).materialize()
    return DetectData(
        feats,
        np.array(ys),
        np.array([st.records[i]["prompt_id"] for i in keep]),
        [st.records[i]["text"] for i in keep],
        [st.logprobs(i).float() for i in keep],
        [st.entropy(i).float() for i in keep],
        n_unl,
    )


def relabel_truthfulqa(
    store: str | Path | Store, csv_path: str | Path, threshold: float
) -> list[int | None]:
    """Labels of a sampled-TruthfulQA store's answers under ``label_rouge`` at another threshold."""
    st = store if isinstance(store, Store) else Store(store)
    task = TruthfulQATask(csv_path, mode="rouge", threshold=threshold)
    by_id = {p.id: p for p in task.prompts()}
    out: list[int | None] = []
    for r in st.records:
        p = by_id.get(r["prompt_id"])
        if p is None:
            raise HsrmError(f"{st.path}: question {r['prompt_id']} is not in {csv_path}")
        lab = task.extract(r["text"], p)
        out.append(None if lab is None else int(lab == TRUTHFUL))
    return out


def split_questions(
    groups: np.ndarray, test_frac: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, test) masks holding out ``test_frac`` of the *questions* (``split_groups``)."""
    return split_groups(groups, test_frac, seed)


def select_split(data: DetectData, split: str, test_frac: float = 0.3, seed: int = 0) -> DetectData:
    """The ``train`` or ``test`` questions of ``data`` (``all``: everything)."""
    if split not in SPLITS:
        raise HsrmError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "all":
        return data
    tr, te = split_questions(data.groups, test_frac, seed)
    return data.subset(np.flatnonzero(tr if split == "train" else te))
