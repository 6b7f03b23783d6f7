"""``hsrm detect capture | train | evaluate | score``: hallucination detection (HARP and baselines)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from hsrm.config import add_arguments, from_sources, load_yaml
from hsrm.errors import HsrmError

log = logging.getLogger(__name__)


def _out(text: str) -> None:
    from rich.console import Console

    Console(highlight=False, soft_wrap=True).print(text, markup=False)


def _parse_params(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they can be (numbers, true/false, lists)."""
    out: dict[str, Any] = {}
    for it in items or []:
        key, sep, val = it.partition("=")
        if not sep or not key:
            raise HsrmError(f"--param expects key=value, got {it!r}")
        try:
            out[key.replace("-", "_")] = json.loads(val)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = val
    return out


def _split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--split", choices=("train", "test", "all"), default=None, help="which questions to use"
    )
    p.add_argument(
        "--test-frac",
        type=float,
        default=0.3,
        help="share of questions held out as test (default: 0.3)",
    )
    p.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")


def _select(data, split: str, test_frac: float, seed: int):
    from hsrm.detect import split_questions

    if split == "all":
        return data
    tr, te = split_questions(data.groups, test_frac, seed)
    return data.subset(np.flatnonzero(tr if split == "train" else te))


def _harp_basis(params: dict[str, Any], fingerprint) -> dict[str, Any]:
    """For HARP's SVD-based projections, make sure the SVD exists (computed once, then cached)."""
    if params.get("projection", "reasoning") in ("reasoning", "semantic") and not params.get(
        "basis_file"
    ):
        from hsrm.subspace import cache_path, svd_for_fingerprint

        svd_for_fingerprint(fingerprint)
        params = {**params, "basis_file": str(cache_path(fingerprint))}
    return params


def cmd_capture(args: argparse.Namespace) -> int:
    from hsrm.detect import CaptureConfig, capture
    from hsrm.models import load_model

    cfg = from_sources(CaptureConfig, load_yaml(args.config, "capture"), args)
    lm = load_model(args.model)
    st = capture(lm, cfg, args.out)
    labels = [r.get("extracted") for r in st.records]
    n_unl = sum(x is None for x in labels) if st.meta["task"].get("name") == "truthfulqa" else 0
    n_ok = sum(bool(r["label"]) for r in st.records)
    _out(
        f"{args.out}: {len(st)} answers, {n_ok} correct, {len(st) - n_ok - n_unl} wrong, {n_unl} unlabelled"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from hsrm.detect import load_labelled
    from hsrm.heads import make_head

    data = _select(load_labelled(args.store), args.split or "train", args.test_frac, args.seed)
    params = _parse_params(args.param)
    if args.head == "harp":
        params = _harp_basis(params, data.features.fingerprint)
    from hsrm.io import check_out, exclusive

    check_out(args.out, "head", overwrite=args.overwrite, inputs=[args.store])
    with exclusive(args.out):
        head = make_head(args.head, **params).fit(data.features, data.labels, data.groups)
        head.save(args.out, overwrite=args.overwrite, inputs=(args.store,))
    _out(
        f"trained {args.head} on {len(data)} answers ({len(np.unique(data.groups))} questions) -> {args.out}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hsrm.detect import (
        auroc_row,
        head_hallucination_scores,
        length_normalised_entropy,
        load_labelled,
        markdown_table,
        perplexity,
    )
    from hsrm.heads import Head
    from hsrm.report_html import CALIBRATED, ScoreData, write_detect_html

    if args.n_boot < 1:
        raise HsrmError(f"--n-boot must be >= 1, got {args.n_boot}")
    full = load_labelled(args.store)
    split = args.split or "test"
    data = _select(full, split, args.test_frac, args.seed)
    rows = []
    halluc: dict[str, np.ndarray] = {}  # per-answer scores for the HTML page's ROC curves
    calibrated = []
    for h in args.head or []:
        head = Head.load(h)
        name = f"{head.architecture} ({Path(h).name})"
        halluc[name] = head_hallucination_scores(head, data.features)
        if head.architecture in CALIBRATED:
            calibrated.append(name)
        rows.append(auroc_row(name, halluc[name], data.labels, data.groups, args.n_boot))
    halluc["perplexity"] = perplexity(data.logprobs)
    halluc["ln-entropy"] = length_normalised_entropy(data.entropy)
    for name in ("perplexity", "ln-entropy"):
        rows.append(auroc_row(name, halluc[name], data.labels, data.groups, args.n_boot))
    if split == "test" and args.text_control:
        from hsrm.baselines.controls import TextOnlyScorer

        train = _select(full, "train", args.test_frac, args.seed)
        ctl = TextOnlyScorer().fit(train.texts, train.labels)
        halluc["text-only (TF-IDF)"] = -ctl.score(data.texts)
        rows.append(
            auroc_row(
                "text-only (TF-IDF)",
                halluc["text-only (TF-IDF)"],
                data.labels,
                data.groups,
                args.n_boot,
            )
        )
    _out(markdown_table(rows, f"{args.store} ({split} split): AUROC of detecting hallucinations"))
    if args.json:
        from hsrm.io import atomic_write_json

        atomic_write_json(args.json, rows)
        page = write_detect_html(
            Path(args.json).with_suffix(".html"),
            rows,
            ScoreData(halluc, data.labels, tuple(calibrated)),
            title=f"hsrm detect evaluate: {args.store} ({split} split)",
        )
        _out(f"wrote {args.json} and {page}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from hsrm.capture import Answer, SampleConfig, sample_prompt, teacher_force
    from hsrm.detect import QA_PRIMER
    from hsrm.features import TokenFeatures
    from hsrm.heads import Head
    from hsrm.models import load_model
    from hsrm.tasks.base import Prompt

    head = Head.load(args.head)
    if not hasattr(head, "hallucination"):
        raise HsrmError(
            f"head {args.head} ({head.architecture}) gives no per-token hallucination scores; use a harp head"
        )
    lm = load_model(_model_for(head, args.model, args.head))
    head.check_compatible(lm.fingerprint, head.required_layers())
    layers = head.required_layers()
    turns = []
    for pq, pa in QA_PRIMER[: args.shots]:  # the primer the TruthfulQA captures use
        turns += [{"role": "user", "content": pq}, {"role": "assistant", "content": pa}]
    prompt = Prompt(
        id="cli", messages=(*turns, {"role": "user", "content": args.question}), answer=""
    )
    answers: list[Answer]
    if args.answer:
        answers = teacher_force(lm, prompt, args.answer, layers)
    else:
        cfg = SampleConfig(
            n=args.samples, temperature=args.temperature, max_new_tokens=args.max_new_tokens
        )
        answers = sample_prompt(lm, prompt, cfg, layers).answers
    hidden = [a.hidden for a in answers if a.hidden is not None]  # (T_i, 1, d) each
    X = TokenFeatures.from_tensors(hidden, layers, lm.fingerprint)
    probs, where = head.hallucination(X)
    for a, p, w in zip(answers, probs, where):
        tok = repr(lm.tokenizer.decode([a.token_ids[w]])) if w >= 0 else "-"
        _out(f"p(hallucination)={p:.3f}  max at token {w} {tok}  answer: {a.text!r}")
    return 0


def _model_for(head, model: str | None, where: str) -> str:
    """The model to load for a saved head. A name read from a file is never loaded on its own
    unless it is an embedded model: a crafted head must not decide what gets downloaded."""
    from hsrm.models import EMBEDDED

    if model:
        return model
    name = head.fingerprint_.name
    if name in EMBEDDED:
        return name
    raise HsrmError(
        f"{where}/config.json: the head was trained on {name!r}, which is not an embedded model; "
        f"hsrm loads a model named inside a file only when you name it: pass --model {name} "
        "(or its local folder) if you trust it"
    )


def register(sub, groups) -> None:
    g = groups["detect"]
    p = g.add_parser("capture", help="sample or teacher-force labelled answers into a store")
    p.add_argument("--out", required=True, help="store folder to write (resumable)")
    p.add_argument(
        "--model", default="smollm2-135m-instruct", help="model to load (default: the embedded one)"
    )
    p.add_argument("--config", default=None, help="YAML file (section 'capture')")
    from hsrm.detect import CaptureConfig

    add_arguments(p, CaptureConfig)
    p.set_defaults(func=cmd_capture)

    p = g.add_parser(
        "train", help="train a detector head (e.g. --head harp) on a store's train questions"
    )
    p.add_argument(
        "--store", required=True, help="store written by `hsrm detect capture` (or `hsrm sample`)"
    )
    p.add_argument("--head", default="harp", help="registered head name (default: harp)")
    p.add_argument(
        "--param",
        nargs="*",
        metavar="KEY=VALUE",
        help="head parameters, e.g. projection=random size=0.1",
    )
    p.add_argument("--out", required=True, help="folder to save the head")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty folder hsrm did not make (only hsrm's own files replaced)",
    )
    _split_args(p)
    p.set_defaults(func=cmd_train)

    p = g.add_parser(
        "evaluate", help="AUROC (bootstrap CI over questions) of heads and uncertainty baselines"
    )
    p.add_argument("--store", required=True)
    p.add_argument("--head", nargs="*", help="saved head folders")
    p.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples (default: 500)")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument(
        "--text-control",
        type=lambda v: v.lower() in ("1", "true", "yes", "on"),
        default=True,
        help="with --split test: add the TF-IDF control fit on the train questions' answer texts (default: true)",
    )
    _split_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = g.add_parser(
        "score", help="per-answer hallucination probability and the token where the max is"
    )
    p.add_argument("--head", required=True, help="saved harp head folder")
    p.add_argument("--question", required=True)
    p.add_argument(
        "--answer",
        nargs="*",
        help="answers to score (teacher-forced); none = sample from the model",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model (default: the head's, only if it is an embedded model; others must be named)",
    )
    p.add_argument(
        "--shots", type=int, default=1, help="QA-primer examples before the question (default: 1)"
    )
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.set_defaults(func=cmd_score)
