"""``hsrm detect capture | train | evaluate | score``: hallucination detection (HARP and baselines).

Each command parses flags (and ``--config run.yaml``) into its config dataclass from
``hsrm.detect``, calls the one library function, and prints."""

from __future__ import annotations

import argparse

import numpy as np

from hsrm.cli._common import add_common, file_values
from hsrm.cli._params import (
    add_params_argument,
    head_config,
)
from hsrm.config import add_arguments, from_sources


def _out(text: str) -> None:
    from rich.console import Console

    Console(highlight=False, soft_wrap=True).print(text, markup=False)


def cmd_capture(args: argparse.Namespace) -> int:
    from hsrm.detect import CaptureConfig, capture
    from hsrm.models import load_model
    from hsrm.sampling import check_model_resumes

    cfg = from_sources(CaptureConfig, file_values(args, "capture"), args)
    check_model_resumes(cfg.out, cfg.resolve())  # before the model loads
    st = capture(load_model(cfg), cfg)
    labels = [r.get("extracted") for r in st.records]
    n_unl = sum(x is None for x in labels) if st.meta["task"].get("name") == "truthfulqa" else 0
    n_ok = sum(bool(r["label"]) for r in st.records)
    _out(
        f"{cfg.out}: {len(st)} answers, {n_ok} correct, {len(st) - n_ok - n_unl} wrong, "
        f"{n_unl} unlabelled"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from hsrm.detect import DetectTrainConfig, train_detector

    values = file_values(args, "train")
    cfg = head_config(DetectTrainConfig, args, values)
    head, data = train_detector(cfg)
    _out(
        f"trained {cfg.head_type} on {len(data)} answers ({len(np.unique(data.groups))} questions)"
        f" -> {cfg.out}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hsrm.detect import DetectEvalConfig, evaluate_store, markdown_table

    cfg = from_sources(DetectEvalConfig, file_values(args, "evaluate"), args)
    rows = evaluate_store(cfg)
    _out(
        markdown_table(rows, f"{cfg.store} ({cfg.split} split): AUROC of detecting hallucinations")
    )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from hsrm.detect import DetectScoreConfig, score_answers

    cfg = from_sources(DetectScoreConfig, file_values(args, "score"), args)
    for a in score_answers(cfg):
        tok = repr(a.token) if a.token_index >= 0 else "-"
        _out(
            f"p(hallucination)={a.p_hallucination:.3f}  max at token {a.token_index} {tok}  "
            f"answer: {a.text!r}"
        )
    return 0


def register(sub, groups) -> None:
    from hsrm.detect import CaptureConfig, DetectEvalConfig, DetectScoreConfig, DetectTrainConfig

    g = groups["detect"]
    p = g.add_parser("capture", help="sample or teacher-force labelled answers into a store")
    add_common(p, "capture", CaptureConfig)
    add_arguments(p, CaptureConfig)
    p.set_defaults(func=cmd_capture)

    p = g.add_parser(
        "train", help="train a detector head (--head-type harp) on a store's questions"
    )
    add_common(p, "train")
    add_arguments(p, DetectTrainConfig, skip=("params",))
    add_params_argument(p)
    p.set_defaults(func=cmd_train)

    p = g.add_parser(
        "evaluate", help="AUROC (bootstrap CI over questions) of heads and uncertainty baselines"
    )
    add_common(p, "evaluate")
    add_arguments(p, DetectEvalConfig, skip=("heads",))
    p.add_argument(
        "--head", dest="heads", nargs="+", default=None, help="saved head folders (default: none)"
    )
    p.set_defaults(func=cmd_evaluate)

    p = g.add_parser(
        "score", help="per-answer hallucination probability and the token where the max is"
    )
    add_common(p, "score", DetectScoreConfig)
    add_arguments(p, DetectScoreConfig, skip=("answers",))
    p.add_argument(
        "--answer",
        dest="answers",
        nargs="+",
        default=None,
        help="answers to score (teacher-forced); none = sample --n from the model",
    )
    p.set_defaults(func=cmd_score)
