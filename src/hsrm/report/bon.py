"""Tables (Markdown, rich) and plots (best-of-N curves) from a ``bon_report`` dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ORDER = [
    "elhsr",
    "probe",
    "rank",
    "elhsr_vote",
    "probe_vote",
    "rank_vote",
    "picked",
    "text_only",
    "answer_prior",
    "majority",
    "mean_logprob",
    "random",
]


def _scorers(rep: dict[str, Any]) -> list[str]:
    names = list(rep["bon"])
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def paired_text(d: dict[str, Any]) -> str:
    """A ``vs_majority`` entry as text: "+0.082 [+0.021, +0.140]" (difference [95% CI])."""
    return f"{d['delta']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"


def bon_rows(rep: dict[str, Any], ks: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    ks = ks or [
        k for k in rep["pass_at_k"] if k in ("1", "4", "8", "16") or k == list(rep["pass_at_k"])[-1]
    ]
    ks = list(dict.fromkeys(ks))
    vm = rep.get("vs_majority")  # reports written before it lack it
    header = ["scorer"] + [f"BoN@{k} [95% CI]" for k in ks]
    header += [f"vs majority @{vm['k']}, paired [95% CI]"] if vm else []
    header += ["within-prompt AUROC", "AUROC"]
    rows = []
    for name in _scorers(rep):
        row = [name]
        for k in ks:
            lo, hi = rep["bon_ci"][name][k]
            row.append(f"{rep['bon'][name][k]:.3f} [{lo:.3f}, {hi:.3f}]")
        if vm:
            d = vm.get(name)
            row.append(paired_text(d) if d else "")
        w = rep["within_prompt_auroc"][name]
        wlo, whi = rep["within_prompt_auroc_ci"][name]
        row.append(f"{w:.3f} [{wlo:.3f}, {whi:.3f}]" if w == w else "n/a")
        a = rep["auroc"][name]
        row.append(f"{a:.3f}" if a == a else "n/a")
        rows.append(row)
    oracle = ["oracle (pass@k)"] + [f"{rep['pass_at_k'][k]:.3f}" for k in ks]
    rows.append(oracle + [""] * (len(header) - len(oracle)))
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    from hsrm.report.tables import markdown_table

    return markdown_table(header, rows)


def bon_markdown(rep: dict[str, Any]) -> str:
    parts = [
        f"Held-out prompts: {rep['n_prompts']} ({rep['n_samples']} samples, "
        f"{rep.get('n_mixed_prompts', '?')} with both right and wrong answers); "
        f"mean accuracy {rep['mean_accuracy']:.3f}."
        + (
            f" {rep['n_stopped_early']} samples were stopped early (`--prune`): they count as no "
            "answer, and AUROCs are over the finished samples."
            if rep.get("n_stopped_early")
            else ""
        )
        + (
            f" Every split's heads and controls also trained on {sz['train_only_prompts']} "
            f"training-only prompts ({sz['train_only_samples']} samples), never tested."
            if (sz := rep.get("sizes", {})).get("train_only_prompts")
            else ""
        ),
        "",
        _md_table(*bon_rows(rep)),
    ]
    for fam, sub in rep.get("per_family", {}).items():
        parts += [
            "",
            f"Family `{fam}`: {sub['n_prompts']} prompts, mean accuracy {sub['mean_accuracy']:.3f}",
            "",
        ]
        parts.append(_md_table(*bon_rows(sub)))
    return "\n".join(parts) + "\n"


def rich_table(rep: dict[str, Any], title: str = "best-of-N on held-out prompts"):
    """A terminal-width table: BoN@k for a few k, the 95% CI at the largest k, within-prompt AUROC."""
    from rich.table import Table

    ks = list(rep["pass_at_k"])
    show = [k for k in ks if k in ("1", "4", "8")] + [ks[-1]]
    show = list(dict.fromkeys(show))
    n = show[-1]
    t = Table(title=title, title_justify="left")
    t.add_column("scorer")
    for k in show:
        t.add_column(f"BoN@{k}", justify="right")
    t.add_column(f"95% CI @{n}", justify="right")
    t.add_column("within-prompt AUROC", justify="right")
    for name in _scorers(rep):
        lo, hi = rep["bon_ci"][name][n]
        w = rep["within_prompt_auroc"][name]
        t.add_row(
            name,
            *[f"{rep['bon'][name][k]:.3f}" for k in show],
            f"{lo:.3f}-{hi:.3f}",
            f"{w:.3f}" if w == w else "n/a",
        )
    t.add_row("oracle (pass@k)", *[f"{rep['pass_at_k'][k]:.3f}" for k in show], "", "")
    return t


# Controls and baselines are drawn as thin lines without CI bands: with 7 scorers, 7 overlapping
# bands hide each other; the bands that matter are the heads' (and the oracle is exact).
BASELINES = ("text_only", "answer_prior", "majority", "mean_logprob", "random")
MIN_PROMPTS = (
    20  # below this the bootstrap CIs span most of [0, 1]: say so rather than plot quietly
)


def small_store_warnings(rep: dict[str, Any]) -> list[str]:
    """Why a best-of-N plot of ``rep`` would mislead (too few prompts, too few N), if it would."""
    out = []
    n = int(rep.get("n_prompts", 0))
    if n < MIN_PROMPTS:
        out.append(
            f"only {n} held-out prompts (< {MIN_PROMPTS}): the 95% CIs are wide; "
            "read the curves as anecdotes"
        )
    if rep.get("n_mixed_prompts", 1) == 0:
        out.append(
            "no held-out prompt has both right and wrong answers: every scorer's best-of-N equals "
            "the mean accuracy"
        )
    if len(rep.get("pass_at_k", {})) < 2:
        out.append("fewer than 2 values of N (samples per prompt < 2): no best-of-N curve to draw")
    for fam, sub in rep.get("per_family", {}).items():
        if int(sub.get("n_prompts", 0)) < MIN_PROMPTS <= n:
            out.append(f"family {fam!r}: only {sub['n_prompts']} prompts")
    return out


def _bon_panel(ax: Any, rep: dict[str, Any], title: str) -> None:
    ks = [int(k) for k in rep["pass_at_k"]]
    ax.plot(ks, [rep["pass_at_k"][str(k)] for k in ks], "k--", lw=1, label="oracle (pass@k)")
    for name in _scorers(rep):
        ys = [rep["bon"][name][str(k)] for k in ks]
        if name in BASELINES:
            ax.plot(ks, ys, lw=1, alpha=0.8, label=name)
            continue
        lo = [rep["bon_ci"][name][str(k)][0] for k in ks]
        hi = [rep["bon_ci"][name][str(k)][1] for k in ks]
        (line,) = ax.plot(ks, ys, marker="o", ms=3, lw=2, label=name)
        ax.fill_between(ks, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    if len(ks) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("N (answers per prompt)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def bon_figure(rep: dict[str, Any]) -> Any:
    """Best-of-N curves, one panel for all prompts and one per task family; 95% CI bands for the
    heads only (baselines as thin lines), so the bands do not pile up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("all", rep)]
    fams = rep.get("per_family", {})
    if len(fams) > 1:
        panels += list(fams.items())
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.6 * len(panels) + 1.2, 3.6), dpi=110, sharey=True, squeeze=False
    )
    for ax, (name, sub) in zip(axes[0], panels):
        title = (
            f"all: {sub['n_prompts']} held-out prompts"
            if name == "all"
            else f"{name}: {sub['n_prompts']} prompts"
        )
        _bon_panel(ax, sub, title)
    axes[0][0].set_ylabel("accuracy of the selected answer")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right", frameon=False)
    fig.suptitle("best-of-N (bands: 95% bootstrap CI over prompts, heads only)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 1.1 / fig.get_figwidth(), 1))
    return fig


def plot_bon(rep: dict[str, Any], path: str | Path) -> None:
    """``bon_figure`` saved to ``path`` (PNG); logs a warning where the store is too small."""
    import logging

    import matplotlib.pyplot as plt

    for w in small_store_warnings(rep):
        logging.getLogger(__name__).warning("bon plot: %s", w)
    fig = bon_figure(rep)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
