"""``hsrm evaluate``: saved heads against the baselines on a store's prompts none of them trained on."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hsrm.bon.baselines import baseline_scores, prompt_question
from hsrm.bon.outputs import html_data, question_split, store_report, write_outputs
from hsrm.bon.scorers import add_head_votes
from hsrm.config import field, validate
from hsrm.errors import HsrmError
from hsrm.heads.base import Head
from hsrm.io import atomic_dir, check_out, read_json
from hsrm.store import Store

log = logging.getLogger(__name__)


@dataclass
class EvaluateConfig:
    run: str = field("runs/sample", "sample store to evaluate on")
    heads: list[str] = field([], "saved head folders to evaluate")
    out: str = field("", "folder for results.json, results.md and bon.png (default: RUN/eval)")
    n_boot: int = field(1000, "bootstrap resamples over prompts", min=1)
    protocol: str = field(
        "random", "BoN@k over random k-subsets (exact) or 'first' k samples (SWIFT)"
    )
    allow_unknown_training: bool = field(
        False,
        "score heads with no training.json (RISK: their training prompts are unknown, so the "
        "report may score them on prompts they were trained on)",
    )
    overwrite: bool = field(
        False, "write into a non-empty folder hsrm did not make (only hsrm's own files replaced)"
    )


def evaluate(cfg: EvaluateConfig, store: Store | None = None) -> dict[str, Any]:
    """Evaluate saved heads on a store's prompts that none of them trained on."""
    validate(cfg, "evaluate")
    if not cfg.heads:
        raise HsrmError("evaluate: give at least one head folder (--heads HEAD/)")
    out = Path(cfg.out or Path(cfg.run) / "eval")
    check_out(
        out, "eval", overwrite=cfg.overwrite, inputs=[cfg.run, *cfg.heads], inside_inputs_ok=True
    )
    store = store or Store(cfg.run)
    # each store read once: the controls and the question split may both need a head's training
    # store, which may be the evaluated store itself
    opened: dict[Path, Store] = {Path(cfg.run).resolve(): store}

    def open_store(run: str) -> Store:
        key = Path(run).resolve()
        if key not in opened:
            opened[key] = Store(run)
        return opened[key]

    heads, seen = {}, set()
    ctrl_from: tuple[str, list[str]] | None = None  # (training store, its training prompts)
    trained_on: list[tuple[str, set[str]]] = []  # every head's (training store, its prompts)
    first: tuple[str, Head] | None = None
    for hp in cfg.heads:
        h = Head.load(hp)
        if first is not None and not first[1].fingerprint_.compatible(h.fingerprint_):
            raise HsrmError(
                f"{hp}: trained on {h.fingerprint_.short()}, but {first[0]} on "
                f"{first[1].fingerprint_.short()}; evaluate heads of one model together"
            )
        first = first or (hp, h)
        try:
            h.check_compatible(store.fingerprint, store.layers)
        except HsrmError as e:
            raise HsrmError(f"{e} (store {cfg.run})") from None
        train_prompts = _training_prompts(Path(hp), cfg.allow_unknown_training)
        tj = Path(hp) / "training.json"
        tinfo = read_json(tj, "training record") if tj.exists() else {}
        # prompt ids ("arith-00003") repeat across task seeds: they name the same prompts only
        # when the head's training store holds the same task (its size aside)
        if _same_task(tinfo.get("task") or _store_task(tinfo.get("run", "")), store.meta["task"]):
            seen |= train_prompts
        if tinfo.get("run"):
            ctrl_from = ctrl_from or (tinfo["run"], sorted(train_prompts))
            trained_on.append((tinfo["run"], train_prompts))
        name = (
            h.architecture if h.architecture not in heads else f"{h.architecture}:{Path(hp).name}"
        )
        heads[name] = h
    pids = store.prompt_ids
    test_idx = np.flatnonzero([p not in seen for p in pids])
    train_idx = np.flatnonzero([p in seen for p in pids])
    if len(test_idx) == 0:
        raise HsrmError(f"{cfg.run}: every prompt was used to train these heads; nothing held out")
    scores = {n: h.score(store.features(test_idx)) for n, h in heads.items()}
    # each head's score-weighted majority vote beside its best-of-N
    scores = add_head_votes(scores, list(heads), pids[test_idx])
    if len(train_idx):
        scores.update(baseline_scores(store, train_idx, test_idx))
    elif ctrl_from and Path(ctrl_from[0], "meta.json").exists():
        # a store no head saw: controls are fitted on the first head's training store and prompts
        tstore = open_store(ctrl_from[0])
        keep = set(ctrl_from[1])
        t_idx = np.flatnonzero([p in keep for p in tstore.prompt_ids])
        scores.update(baseline_scores(store, t_idx, test_idx, train_store=tstore))
    else:
        log.info("no training store found for the controls; reporting the unfitted baselines")
        scores.update(baseline_scores(store, np.zeros(0, int), test_idx, train_store=store))
    rep = store_report(store, test_idx, scores, cfg.n_boot, protocol=cfg.protocol)
    asked = _training_questions(trained_on, open_store)
    if asked is not None:
        tq = [prompt_question(store, store.records[i]) for i in test_idx]
        rep["questions"] = question_split(
            store, test_idx, scores, np.isin(tq, sorted(asked)), cfg.n_boot, protocol=cfg.protocol
        )
        if rep["questions"]["seen_prompts"]:
            log.warning(
                "%d of %d test prompts ask a question the heads trained on (in another context); "
                "results.json 'questions' reports the seen and unseen ones apart",
                rep["questions"]["seen_prompts"],
                rep["questions"]["prompts"],
            )
    elhsr = next((n for n, h in heads.items() if h.token_view), None)
    data = html_data(
        store,
        test_idx,
        scores,
        (lambda i: heads[elhsr]) if elhsr else None,
        key=elhsr or "elhsr",
    )
    with atomic_dir(
        out,
        "eval",
        overwrite=cfg.overwrite,
        inputs=[cfg.run, *cfg.heads],
        inside_inputs_ok=True,  # the default RUN/eval sits inside the store it reports on
    ) as tmp:
        write_outputs(tmp, rep, data, title=f"hsrm evaluate: {cfg.run}")
    return rep


def _training_questions(
    trained_on: list[tuple[str, set[str]]], open_store: Callable[[str], Store]
) -> set[str] | None:
    """The questions the heads' training prompts asked (``prompt_question``), read from their
    training stores; None when no head's training store is at hand (nothing to compare)."""
    asked: set[str] | None = None
    for run, prompts in trained_on:
        if not Path(run, "meta.json").exists():
            continue
        ts = open_store(run)
        asked = (asked or set()) | {
            prompt_question(ts, r) for r, p in zip(ts.records, ts.prompt_ids) if p in prompts
        }
    return asked


def _training_prompts(head_dir: Path, allow_unknown: bool) -> set[str]:
    """The prompt ids a head was trained on, from its ``training.json``. A head without one may
    have seen any prompt, so it is refused unless the caller accepts that risk."""
    tj = head_dir / "training.json"
    if not tj.exists():
        if allow_unknown:
            log.warning(
                "%s has no training.json: its training prompts are unknown and may be scored", tj
            )
            return set()
        raise HsrmError(
            f"{head_dir}: no training.json, so which prompts it was trained on is unknown and "
            "evaluate could score it on its own training prompts (a killed or foreign train?); "
            "retrain it, or pass --allow-unknown-training to accept that risk"
        )
    rec = read_json(tj, "training record")
    tp = rec.get("train_prompts") if isinstance(rec, dict) else None
    if not isinstance(tp, list) or not all(isinstance(p, str) for p in tp):
        raise HsrmError(f"{tj}: field 'train_prompts' must be a list of prompt ids")
    return set(tp)


def _store_task(run: str) -> dict[str, Any] | None:
    mp = Path(run) / "meta.json"
    return json.loads(mp.read_text()).get("task") if mp.exists() else None


def _same_task(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """Whether two stores' tasks generate the same prompts under the same ids (None: assume so)."""
    if a is None:
        return True
    size = ("n", "limit", "skip_prompts")  # ids are positions in the task, whatever is sampled
    return {k: v for k, v in a.items() if k not in size} == {
        k: v for k, v in b.items() if k not in size
    }
