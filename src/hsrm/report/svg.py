"""The SVG figures of ``results.html`` (``hsrm.report.html``): ROC curves and reliability diagrams,
drawn with matplotlib and inlined as text, so the page fetches nothing."""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of ranking ``labels == 1`` above ``labels == 0`` by ``scores`` (ties as one step)."""
    s, y = np.asarray(scores, float), np.asarray(labels, int)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each run of tied scores
    tp, fp = np.cumsum(y)[last], np.cumsum(1 - y)[last]
    P, N = max(int(y.sum()), 1), max(int((1 - y).sum()), 1)
    return np.r_[0.0, fp / N], np.r_[0.0, tp / P]


def reliability(
    probs: np.ndarray, labels: np.ndarray, bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Equal-width reliability bins: (mean prediction, accuracy, count) per non-empty bin, and the
    expected calibration error (count-weighted |accuracy - confidence|; Guo et al., 2017)."""
    p, y = np.asarray(probs, float), np.asarray(labels, float)
    b = np.minimum((p * bins).astype(int), bins - 1)
    conf, acc, cnt = [], [], []
    for k in range(bins):
        m = b == k
        if m.any():
            conf.append(p[m].mean())
            acc.append(y[m].mean())
            cnt.append(int(m.sum()))
    c, a, n = np.array(conf), np.array(acc), np.array(cnt)
    ece = float((n * np.abs(a - c)).sum() / max(n.sum(), 1))
    return c, a, n, ece


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, float), -50, 50)))


# ----------------------------------------------------------------------------------------------
# figures
def _svg(fig: Any) -> str:
    """The figure as an inline ``<svg>`` element (text kept as text: smaller and searchable)."""
    import matplotlib
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg")
    plt.close(fig)
    s = buf.getvalue()
    return s[s.index("<svg") :]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_svg(scores: dict[str, np.ndarray], labels: np.ndarray, title: str) -> str:
    from hsrm.metrics import auroc

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=110)
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":")
    for name, s in scores.items():
        if np.ptp(np.asarray(s, float)) == 0:
            continue  # a constant scorer (random, majority placeholder): the diagonal
        fpr, tpr = roc_curve(s, labels)
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUROC {auroc(np.asarray(s), labels):.3f})")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _svg(fig)


def calibration_svg(scores: dict[str, np.ndarray], labels: np.ndarray) -> tuple[str, list[str]]:
    plt = _plt()
    fig, (ax, axh) = plt.subplots(
        2, 1, figsize=(4.6, 5.0), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":", label="perfect")
    notes = []
    for name, s in scores.items():
        p = _sigmoid(s)
        c, a, n, ece = reliability(p, labels)
        ax.plot(c, a, marker="o", ms=3, label=f"{name} (ECE {ece:.3f})")
        axh.hist(p, bins=20, range=(0, 1), alpha=0.5, label=name)
        notes.append(f"{name}: ECE {ece:.3f} over {len(p)} answers")
    ax.set_ylabel("fraction correct")
    ax.set_title("reliability of sigmoid(head score)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    axh.set_xlabel("predicted P(correct)")
    axh.set_ylabel("answers")
    fig.tight_layout()
    return _svg(fig), notes


# ----------------------------------------------------------------------------------------------
# HTML pieces
