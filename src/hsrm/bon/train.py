"""``hsrm train``: fit a head on a store's training prompts and save it with the prompts it saw."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hsrm.capture import parse_layers
from hsrm.config import field, validate
from hsrm.errors import HsrmError
from hsrm.heads.base import Head, make_head
from hsrm.io import check_out, exclusive
from hsrm.splits import is_test_prompt
from hsrm.store import Store

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    run: str = field("runs/sample", "sample store to train on")
    out: str = field("runs/head", "output folder of the head")
    head: str = field("elhsr", "head architecture (elhsr, probe, ...)")
    layers: str = field("every:4", "layers the head reads (subset of the captured ones)")
    test_frac: float = field(
        0.3, "share of prompts held out for evaluation (by prompt id hash)", min=0.0, max=1.0
    )
    split_seed: int = field(0, "seed of the train/test prompt split")
    params: dict = field({}, "extra head hyperparameters (YAML mapping / JSON object)")
    overwrite: bool = field(
        False, "write into a non-empty folder hsrm did not make (only hsrm's own files replaced)"
    )


def _head_params(name: str, layers: tuple[int, ...], params: dict[str, Any]) -> dict[str, Any]:
    from hsrm.heads.base import get_head_class

    p = dict(params)
    names = get_head_class(name).param_names()
    if "layers" in names and "layers" not in p:
        p["layers"] = list(layers)
    if "layer" in names and "layer" not in p and len(layers) == 1:
        p["layer"] = layers[0]
    return p


def train(cfg: TrainConfig, store: Store | None = None) -> Head:
    """Fit a head on the training prompts of a store and save it (with the prompt ids it saw).

    The head folder appears complete, ``training.json`` included, in one rename; it is locked
    for the whole run (a second writer is refused)."""
    validate(cfg, "train")
    check_out(cfg.out, "head", overwrite=cfg.overwrite, inputs=[cfg.run])
    store = store or Store(cfg.run)
    layers = (
        # a logits-only store (``hsrm import`` without a model) holds pseudo-layers alone
        tuple(store.layers)
        if all(lay < 0 for lay in store.layers)
        else parse_layers(cfg.layers, store.fingerprint.n_layers)
    )
    pids = store.prompt_ids
    train_idx = np.flatnonzero([not is_test_prompt(p, cfg.test_frac, cfg.split_seed) for p in pids])
    if len(train_idx) == 0:
        raise HsrmError(f"{cfg.run}: no training prompts (test_frac={cfg.test_frac})")
    head = make_head(cfg.head, **_head_params(cfg.head, layers, cfg.params))
    with exclusive(cfg.out):
        X = store.features(train_idx)
        t0 = time.perf_counter()
        head.fit(X, store.labels[train_idx], pids[train_idx])
        dt = time.perf_counter() - t0
        record = {
            "run": str(cfg.run),
            "task": store.meta.get("task"),
            "train_prompts": sorted(set(pids[train_idx].tolist())),
            "n_samples": int(len(train_idx)),
            "seconds": dt,
            "config": asdict(cfg),
        }
        head.save(
            cfg.out,
            overwrite=cfg.overwrite,
            inputs=(cfg.run,),
            records={"training.json": record},
        )
    log.info(
        "trained %s on %d samples (%d prompts) in %.1f s -> %s",
        cfg.head,
        len(train_idx),
        len(set(pids[train_idx])),
        dt,
        cfg.out,
    )
    return head
