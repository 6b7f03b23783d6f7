"""``hsrm train``: fit a head on a store's training prompts and save it with the prompts it saw."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from hsrm.config import field, validate
from hsrm.errors import HsrmError
from hsrm.features import LOGITS_LAYER, TOPK_LAYER
from hsrm.heads.base import Head, get_head_class, make_head
from hsrm.io import check_out, exclusive
from hsrm.layer_spec import VOCABULARY, check_layer_spec, parse_layers
from hsrm.splits import is_test_prompt
from hsrm.store import Store

log = logging.getLogger(__name__)

#: What ``--head-type auto`` fits on a store of hidden states: the head that did best on the nine
#: reasoning-gym development tasks, chosen by research/rg/PROTOCOL.md
#: (benchmarks/results/tasks_recipe.md, docs/tasks.md#which-head-hsrm-train-fits).
DEFAULT_HEAD = "rank"
#: ... and on a store of logits alone (``hsrm import`` without a model), by its pseudo-layer.
LOGITS_HEADS = {TOPK_LAYER: "elhsr_toplogprobs", LOGITS_LAYER: "elhsr_logits"}


def auto_head_type(layers: tuple[int, ...] | list[int]) -> str:
    """The head ``--head-type auto`` fits on a store holding ``layers``."""
    pseudo = [lay for lay in layers if lay < 0]
    if pseudo and len(pseudo) == len(layers) and pseudo[0] in LOGITS_HEADS:
        return LOGITS_HEADS[pseudo[0]]
    return DEFAULT_HEAD


@dataclass
class TrainConfig:
    run: str = field("runs/sample", "sample store to train on")
    out: str = field("runs/head", "output folder of the head")
    head_type: str = field(
        "auto",
        "head architecture: auto (rank, a within-prompt ranker that did best on the development "
        "tasks, docs/tasks.md#which-head-hsrm-train-fits; on a store of logits alone, "
        "elhsr_toplogprobs or elhsr_logits), rank, elhsr, probe, ...",
    )
    layers: str | None = field(
        None,
        f"layers the head reads, among the captured ones: {VOCABULARY} (default: the head's "
        "own: top:8 for rank, every:4 for elhsr; the layers the store holds for the others)",
    )
    test_frac: float = field(
        0.3, "share of prompts held out for evaluation (by prompt id hash)", min=0.0, max=1.0
    )
    split_seed: int = field(0, "seed of the train/test prompt split")
    params: dict = field({}, "extra head hyperparameters (YAML mapping / JSON object)")
    overwrite: bool = field(
        False, "write into a non-empty folder hsrm did not make (only hsrm's own files replaced)"
    )


def train(cfg: TrainConfig, store: Store | None = None) -> Head:
    """Fit a head on the training prompts of a store and save it (with the prompt ids it saw).

    The head folder appears complete, ``training.json`` included, in one rename; it is locked
    for the whole run (a second writer is refused)."""
    validate(cfg, "train")
    if cfg.layers is not None:  # a bad --layers fails before any read, whatever the head
        check_layer_spec(cfg.layers, "--layers")
    head_type = cfg.head_type
    if head_type == "auto":  # which head depends on what the store holds (its meta alone)
        store = store or Store(cfg.run)
        head_type = auto_head_type(store.layers)
    cls = get_head_class(head_type)  # the head type and its parameters fail before the states
    cls.check_params(cfg.params, f"head {head_type!r}")
    spec = cfg.layers if cfg.layers is not None else cls.default_layers
    flag = "--layers" if cfg.layers is not None else f"--layers (the {head_type} default)"
    if spec is not None:
        check_layer_spec(spec, flag)
    check_out(cfg.out, "head", overwrite=cfg.overwrite, inputs=[cfg.run])
    store = store or Store(cfg.run)
    params = cls.model_params(dict(cfg.params), store.fingerprint)
    if store.layers and all(lay < 0 for lay in store.layers):
        # a logits-only store (``hsrm import`` without a model) holds pseudo-layers alone
        params = {**cls.layer_params(tuple(store.layers)), **params}
    elif spec is not None:  # what the user set in --params wins over --layers
        layers = parse_layers(spec, store.fingerprint.n_layers, flag)
        missing = [lay for lay in layers if lay not in store.layers]
        if missing:
            raise HsrmError(
                f"{flag} {spec!r}: layers {missing} were not captured in {cfg.run} "
                f"(it holds {list(store.layers)})"
            )
        params = {**cls.layer_params(layers), **params}
    pids = store.prompt_ids
    train_idx = np.flatnonzero([not is_test_prompt(p, cfg.test_frac, cfg.split_seed) for p in pids])
    if len(train_idx) == 0:
        raise HsrmError(f"{cfg.run}: no training prompts (test_frac={cfg.test_frac})")
    head = make_head(cls, **params)
    with exclusive(cfg.out):
        X = store.features(train_idx)
        t0 = time.perf_counter()
        head.fit(X, store.labels[train_idx], pids[train_idx])
        dt = time.perf_counter() - t0
        record = {
            "run": str(cfg.run),
            "task": store.meta.get("task"),
            # the dtype the store's states were computed in, resolved (a head read in another
            # dtype's states sees other numbers); None for stores from before it was recorded
            "model_dtype": store.meta.get("model_dtype"),
            "train_prompts": sorted(set(pids[train_idx].tolist())),
            "n_samples": int(len(train_idx)),
            "seconds": dt,
            "config": {**asdict(cfg), "head_type": head_type},
        }
        head.save(
            cfg.out,
            overwrite=cfg.overwrite,
            inputs=(cfg.run,),
            records={"training.json": record},
        )
    log.info(
        "trained %s on %d samples (%d prompts) in %.1f s -> %s",
        head_type,
        len(train_idx),
        len(set(pids[train_idx])),
        dt,
        cfg.out,
    )
    return head
