"""Tables (Markdown, rich) and plots (best-of-N curves) from a ``bon_report`` dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ORDER = ["elhsr", "probe", "text_only", "answer_prior", "majority", "mean_logprob", "random"]


def _scorers(rep: dict[str, Any]) -> list[str]:
    names = list(rep["bon"])
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def bon_rows(rep: dict[str, Any], ks: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    ks = ks or [
        k for k in rep["pass_at_k"] if k in ("1", "4", "8", "16") or k == list(rep["pass_at_k"])[-1]
    ]
    ks = list(dict.fromkeys(ks))
    header = ["scorer"] + [f"BoN@{k} [95% CI]" for k in ks] + ["within-prompt AUROC", "AUROC"]
    rows = []
    for name in _scorers(rep):
        row = [name]
        for k in ks:
            lo, hi = rep["bon_ci"][name][k]
            row.append(f"{rep['bon'][name][k]:.3f} [{lo:.3f}, {hi:.3f}]")
        w = rep["within_prompt_auroc"][name]
        wlo, whi = rep["within_prompt_auroc_ci"][name]
        row.append(f"{w:.3f} [{wlo:.3f}, {whi:.3f}]" if w == w else "n/a")
        a = rep["auroc"][name]
        row.append(f"{a:.3f}" if a == a else "n/a")
        rows.append(row)
    rows.append(["oracle (pass@k)"] + [f"{rep['pass_at_k'][k]:.3f}" for k in ks] + ["", ""])
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    from hsrm.tables import markdown_table

    return markdown_table(header, rows)


def bon_markdown(rep: dict[str, Any]) -> str:
    parts = [
        f"Held-out prompts: {rep['n_prompts']} ({rep['n_samples']} samples, "
        f"{rep.get('n_mixed_prompts', '?')} with both right and wrong answers); "
        f"mean accuracy {rep['mean_accuracy']:.3f}.",
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


def plot_bon(rep: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [int(k) for k in rep["pass_at_k"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.plot(ks, [rep["pass_at_k"][str(k)] for k in ks], "k--", label="oracle (pass@k)")
    for name in _scorers(rep):
        ys = [rep["bon"][name][str(k)] for k in ks]
        lo = [rep["bon_ci"][name][str(k)][0] for k in ks]
        hi = [rep["bon_ci"][name][str(k)][1] for k in ks]
        (line,) = ax.plot(ks, ys, marker="o", ms=3, label=name)
        ax.fill_between(ks, lo, hi, color=line.get_color(), alpha=0.12)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("N (answers per prompt)")
    ax.set_ylabel("accuracy of the selected answer")
    ax.set_title(f"best-of-N on {rep['n_prompts']} held-out prompts (95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
