"""One config dataclass and one function per ``hsrm detect`` command after ``capture``:

* ``train_detector(DetectTrainConfig)``: fit a head on a store's train questions and save it;
* ``evaluate_store(DetectEvalConfig)``: the AUROC table of saved heads and the uncertainty baselines;
* ``score_answers(DetectScoreConfig)``: per-answer hallucination probability of a HARP head.

The CLI (``hsrm.cli.detect``) only parses flags into these configs, calls, and prints.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hsrm.config import field
from hsrm.detect.data import DetectData, load_labelled, select_split
from hsrm.detect.evaluation import auroc_row, baseline_rows, head_hallucination_scores
from hsrm.errors import HsrmError
from hsrm.heads.abilities import HallucinationScorer
from hsrm.models import EMBEDDED, LoadedModel, ModelConfig, ModelFingerprint
from hsrm.tasks.truthfulqa import QA_PRIMER


# -- train ------------------------------------------------------------------------------------------
@dataclass
class DetectTrainConfig:
    """``hsrm detect train``: a detector head fit on the train questions of a store."""

    store: str = field("runs/detect", "store written by `hsrm detect capture` (or `hsrm sample`)")
    out: str = field("runs/detect-head", "folder to save the head")
    head_type: str = field("harp", "registered head architecture")
    params: dict = field({}, "head hyperparameters (YAML mapping; CLI: JSON or key=value)")
    split: str = field("train", "which questions to fit on: train | test | all")
    test_frac: float = field(0.3, "share of questions held out as test")
    seed: int = field(0, "split seed")
    overwrite: bool = field(False, "replace an earlier head folder at --out (never foreign files)")


def train_detector(cfg: DetectTrainConfig) -> tuple[Any, DetectData]:
    """Fit ``cfg.head_type`` on the ``cfg.split`` questions of ``cfg.store``, save it to
    ``cfg.out``. Returns (head, the data it was fit on)."""
    from hsrm.heads import get_head_class, make_head
    from hsrm.io import check_out

    cls = get_head_class(cfg.head_type)  # the head type and its parameters fail first
    cls.check_params(cfg.params, f"head {cfg.head_type!r}")
    check_out(cfg.out, "head", overwrite=cfg.overwrite, inputs=[cfg.store])  # before any work
    data = select_split(load_labelled(cfg.store), cfg.split, cfg.test_frac, cfg.seed)
    params = cls.model_params(dict(cfg.params), data.features.fingerprint)
    head = make_head(cls, **params).fit(data.features, data.labels, data.groups)
    head.save(cfg.out, overwrite=cfg.overwrite, inputs=(cfg.store,))
    return head, data


# -- evaluate ---------------------------------------------------------------------------------------
@dataclass
class DetectEvalConfig:
    """``hsrm detect evaluate``: AUROC (bootstrap CI over questions) of heads and baselines."""

    store: str = field("runs/detect", "store written by `hsrm detect capture`")
    heads: list[str] = field([], "saved head folders")
    split: str = field("test", "which questions to evaluate on: train | test | all")
    test_frac: float = field(0.3, "share of questions held out as test")
    seed: int = field(0, "split seed")
    n_boot: int = field(500, "bootstrap resamples", min=1)
    text_control: bool = field(
        True, "with split test: add the TF-IDF control fit on the train questions' answer texts"
    )
    out: str | None = field(None, "also write the rows as JSON here")


def evaluate_store(cfg: DetectEvalConfig) -> list[dict[str, Any]]:
    """AUROC rows of every saved head in ``cfg.heads``, then perplexity, length-normalised
    entropy and (test split only) the text-only control; written to ``cfg.out`` as JSON if set."""
    from hsrm.heads import Head
    from hsrm.report.html import ScoreData, write_detect_html

    full = load_labelled(cfg.store)
    data = select_split(full, cfg.split, cfg.test_frac, cfg.seed)
    rows = []
    halluc: dict[str, np.ndarray] = {}  # per-answer scores for the HTML page's ROC curves
    calibrated = []
    for h in cfg.heads:
        head = Head.load(h)
        name = f"{head.architecture} ({Path(h).name})"
        halluc[name] = head_hallucination_scores(head, data.features)
        if head.calibrated:
            calibrated.append(name)
        rows.append(auroc_row(name, halluc[name], data.labels, data.groups, cfg.n_boot, cfg.seed))
    train = None
    if cfg.split == "test" and cfg.text_control:
        train = select_split(full, "train", cfg.test_frac, cfg.seed)
    base_rows, base_scores = baseline_rows(train, data, cfg.n_boot, cfg.seed, with_scores=True)
    rows += base_rows
    halluc.update(base_scores)
    if cfg.out:
        from hsrm.io import atomic_write_json

        atomic_write_json(cfg.out, rows)
        write_detect_html(  # results.html beside the JSON
            Path(cfg.out).with_suffix(".html"),
            rows,
            ScoreData(halluc, data.labels, tuple(calibrated)),
            title=f"hsrm detect evaluate: {cfg.store} ({cfg.split} split)",
        )
    return rows


# -- score ------------------------------------------------------------------------------------------
@dataclass
class DetectScoreConfig(ModelConfig):
    """``hsrm detect score``: hallucination probability of given (or sampled) answers to a question.
    The model fields are ``ModelConfig``'s, but ``model`` defaults to the head's own."""

    head: str = field("runs/detect-head", "saved harp head folder")
    question: str = field("", "the question")
    answers: list[str] = field(
        [], "answers to score (teacher-forced); none = sample from the model"
    )
    model: str | None = field(  # type: ignore[assignment]  # None: the head's model
        None,
        "model to load; default: the head's model if it is an embedded one, else this is required",
    )
    shots: int = field(1, "QA-primer examples before the question")
    n: int = field(3, "answers to sample when none are given")
    temperature: float = field(0.7, "sampling temperature")
    max_new_tokens: int = field(32, "sampled answer length cap in tokens")
    seed: int = field(0, "sampling seed")


@dataclass
class ScoredAnswer:
    text: str
    p_hallucination: float
    token_index: int  # the answer token where the per-token probability peaks (-1: none)
    token: str  # that token's text ("-" for none)


def model_for_head(fingerprint: ModelFingerprint, model: str | None) -> str:
    """The model to load for a head: ``model`` if given, else the head's own model when it is an
    embedded one. A hub id or path read from a head file is never loaded unasked: a head file
    from elsewhere must not make hsrm download or execute an arbitrary model."""
    if model:
        return model
    if fingerprint.name in EMBEDDED:
        return fingerprint.name
    raise HsrmError(
        f"the head was trained on {fingerprint.name!r}, which is not an embedded model; "
        f"pass --model {fingerprint.name} to load it"
    )


def score_answers(cfg: DetectScoreConfig, lm: LoadedModel | None = None) -> list[ScoredAnswer]:
    """Score ``cfg.answers`` (teacher-forced) or ``cfg.n`` sampled answers to ``cfg.question``
    with a head that gives per-token hallucination probabilities (``HallucinationScorer``)."""
    from hsrm.capture import Answer, SampleConfig, sample_prompt, teacher_force
    from hsrm.features import TokenFeatures
    from hsrm.heads import Head
    from hsrm.models import load_model
    from hsrm.tasks.base import Prompt

    if not cfg.question.strip():
        raise HsrmError("detect score: --question is empty")
    if not 0 <= cfg.shots <= len(QA_PRIMER):
        raise HsrmError(f"detect score: shots must be 0..{len(QA_PRIMER)}, got {cfg.shots}")
    head = Head.load(cfg.head)
    if not isinstance(head, HallucinationScorer):
        raise HsrmError(
            f"head {cfg.head} ({head.architecture}) gives no per-token hallucination scores; "
            "use a harp head"
        )
    model = model_for_head(head.fingerprint_, cfg.model)
    lm = lm or load_model(replace(cfg.model_config(), model=model))
    layers = head.required_layers()
    turns: list[dict[str, str]] = []
    for pq, pa in QA_PRIMER[: cfg.shots]:  # the primer the TruthfulQA captures use
        turns += [{"role": "user", "content": pq}, {"role": "assistant", "content": pa}]
    prompt = Prompt(
        id="cli", messages=(*turns, {"role": "user", "content": cfg.question}), answer=""
    )
    answers: list[Answer]
    if cfg.answers:
        answers = teacher_force(lm, prompt, cfg.answers, layers)
    else:
        scfg = SampleConfig(
            n=cfg.n,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.seed,
        )
        answers = sample_prompt(lm, prompt, scfg, layers).answers
    hidden = [a.hidden for a in answers if a.hidden is not None]  # (T_i, L, d) each
    X = TokenFeatures.from_tensors(hidden, layers, lm.fingerprint)
    probs, where = head.hallucination(X)
    out = []
    for a, p, w in zip(answers, np.asarray(probs, float), where):
        tok = lm.tokenizer.decode([a.token_ids[int(w)]]) if w >= 0 else "-"
        out.append(ScoredAnswer(a.text, float(p), int(w), tok))
    return out
