"""AUROC of detecting hallucinations, with a bootstrap CI over questions, for heads and baselines."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hsrm.detect.baselines import length_normalised_entropy, perplexity
from hsrm.detect.data import DetectData
from hsrm.features import TokenFeatures
from hsrm.metrics import auroc, bootstrap_metric_ci


def auroc_row(
    name: str,
    halluc: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    n_boot: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """AUROC of detecting hallucinations (label 0) with ``halluc`` scores, CI resampling questions."""
    h, wrong = np.asarray(halluc, float), 1 - np.asarray(labels)

    def metric(idx: np.ndarray) -> float:
        return auroc(h[idx], wrong[idx])

    lo, hi = bootstrap_metric_ci(metric, np.asarray(groups), n_boot=n_boot, seed=seed)
    return {
        "method": name,
        "auroc": auroc(h, wrong),
        "ci_low": lo,
        "ci_high": hi,
        "n_answers": int(len(h)),
        "n_questions": int(len(np.unique(groups))),
        "hallucination_rate": float(wrong.mean()) if len(h) else float("nan"),
    }


def head_hallucination_scores(head: Any, X: TokenFeatures) -> np.ndarray:
    """Hallucination scores of any head: minus its (higher = correct) score."""
    return -np.asarray(head.score(X), float)


def baseline_rows(
    train: DetectData | None,
    test: DetectData,
    n_boot: int = 500,
    seed: int = 0,
    with_scores: bool = False,
) -> Any:
    """Perplexity and length-normalised entropy on ``test``; with ``train``, also the text-only
    control (TF-IDF on the answer text, fit on ``train``): does the wording alone give it away?
    With ``with_scores``: (rows, {method: per-answer hallucination score})."""
    scores = {
        "perplexity": perplexity(test.logprobs),
        "ln-entropy": length_normalised_entropy(test.entropy),
    }
    if train is not None:
        from hsrm.baselines.controls import TextOnlyScorer

        ctl = TextOnlyScorer().fit(train.texts, train.labels)
        scores["text-only (TF-IDF)"] = -ctl.score(test.texts)
    rows = [
        auroc_row(name, s, test.labels, test.groups, n_boot, seed) for name, s in scores.items()
    ]
    return (rows, scores) if with_scores else rows


def evaluate(
    train: DetectData,
    test: DetectData,
    heads: dict[str, Callable[[], Any]],
    n_boot: int = 500,
    seed: int = 0,
    text_control: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Fit each head factory on ``train``, score ``test``; add perplexity, length-normalised entropy
    and the text-only control. Returns (rows, fitted heads)."""
    rows, fitted = [], {}
    for name, make in heads.items():
        head = make().fit(train.features, train.labels, train.groups)
        fitted[name] = head
        rows.append(
            auroc_row(
                name,
                head_hallucination_scores(head, test.features),
                test.labels,
                test.groups,
                n_boot,
                seed,
            )
        )
    rows += baseline_rows(train if text_control else None, test, n_boot, seed)
    return rows, fitted


def markdown_table(rows: Sequence[dict[str, Any]], title: str | None = None) -> str:
    """The AUROC rows as a Markdown table (``hsrm.report.tables.markdown_table``), under a bold title."""
    from hsrm.report.tables import markdown_table as table

    cells = [
        [
            r["method"],
            f"{r['auroc']:.3f}",
            f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
            r["n_answers"],
            r["n_questions"],
        ]
        for r in rows
    ]
    body = table(["method", "AUROC", "95% CI", "answers", "questions"], cells)
    return f"**{title}**\n\n{body}" if title else body
