"""Tables (Markdown, rich) and plots (best-of-N curves) from a ``bon_report`` dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The pick among a demo's heads and their votes (``hsrm.bon.demo.PICKED``).
PICKED = "picked"
#: Baselines and controls, in the order reports list them after the heads, their votes and the
#: pick; the training-free selectors of ``hsrm.bon.scorers`` follow, by name.
BASELINE_ORDER = ("text_only", "answer_prior", "majority", "mean_logprob", "random")
#: Scorers that are not selectors a user could run without training: no "best training-free".
NOT_TRAINING_FREE = ("text_only", "answer_prior", "random", PICKED)


def scorer_head(name: str) -> tuple[Any, bool]:
    """(the registered head class a scorer name stands for, whether it is that head's vote):
    ``elhsr``, ``elhsr:folder`` (a second head of a type), ``elhsr_vote``; (None, False) for the
    baselines. A head's place and label in reports come from its class (``Head.display_order``)."""
    from hsrm.bon.scorers import VOTE_SUFFIX
    from hsrm.heads.registry import REGISTRY  # loads hsrm.heads, which registers the built-ins

    base = name.split(":")[0]
    vote = base.endswith(VOTE_SUFFIX) and base[: -len(VOTE_SUFFIX)] in REGISTRY
    if vote:
        base = base[: -len(VOTE_SUFFIX)]
    return REGISTRY.get(base), vote


def scorer_label(name: str) -> str:
    """A scorer's name in plot legends: the head's ``label`` for heads and their votes."""
    cls, vote = scorer_head(name)
    if cls is None:
        return name
    rest = name.split(":", 1)[1] if ":" in name else ""
    return cls.display_label() + (" vote" if vote else "") + (f" ({rest})" if rest else "")


def _order_key(name: str) -> tuple[int, int, str]:
    cls, vote = scorer_head(name)
    if cls is not None:
        return (1 if vote else 0, cls.display_order, name)
    if name == PICKED:
        return (2, 0, name)
    if name in BASELINE_ORDER:
        return (3, BASELINE_ORDER.index(name), name)
    return (4, 0, name)


def _scorers(rep: dict[str, Any]) -> list[str]:
    """``rep``'s scorers in report order: heads (by ``display_order``), their votes, the pick,
    the baselines, the other training-free selectors."""
    return sorted(rep["bon"], key=_order_key)


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


def _training_free(name: str) -> bool:
    return scorer_head(name)[0] is None and name not in NOT_TRAINING_FREE


def default_series(rep: dict[str, Any]) -> list[str]:
    """The scorers a best-of-N plot draws by default, at a glance: the pick (``picked``, else the
    first head), majority vote, and the best other training-free selector at the largest N (the
    oracle, pass@k, is always drawn). The rest is one click away in results.html."""
    names = list(rep["bon"])
    heads = [n for n in names if scorer_head(n)[0] is not None and not scorer_head(n)[1]]
    pick = PICKED if PICKED in names else (heads[0] if heads else names[0] if names else None)
    k = max(rep["pass_at_k"], key=int) if rep.get("pass_at_k") else None
    free = [n for n in names if _training_free(n) and n != "majority" and n != pick]
    best = max(free, key=lambda n: (rep["bon"][n][k], -free.index(n))) if free and k else None
    out = [n for n in (pick, "majority" if "majority" in names else None, best) if n is not None]
    return list(dict.fromkeys(out))


#: Colours of the default series (the pick, majority, the best training-free), so they read the
#: same in every panel and stand out from the others' palette.
DEFAULT_COLOURS = ("#d62728", "#1f77b4", "#2ca02c")


def _banded(name: str) -> bool:
    """Controls and baselines are drawn without CI bands: many overlapping bands hide each other;
    the bands that matter are the heads' and the pick's (and the oracle is exact)."""
    return name == PICKED or scorer_head(name)[0] is not None


def series_styles(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """Every series of a best-of-N plot in legend order, the oracle first: ``name``, ``label``,
    ``role`` (why it is drawn by default, "" for the rest), ``default``, ``colour`` and ``band``
    (a CI band: heads, their votes and the pick, not the baselines, whose bands would pile up)."""
    from matplotlib import colormaps

    defaults = default_series(rep)
    roles = {defaults[0]: "the pick"} if defaults else {}
    for n in defaults[1:]:
        roles[n] = "" if n == "majority" else "best other training-free"
    others = [n for n in _scorers(rep) if n not in defaults]
    pal = colormaps["tab20"]
    # tab20 without its blues, greens and reds: those are the defaults'
    hues = (2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19)
    out = [
        {
            "name": "oracle",
            "label": "oracle (pass@k)",
            "role": "",
            "default": True,
            "colour": "#000000",
            "band": False,
        }
    ]
    for i, n in enumerate(defaults):
        out.append(
            {
                "name": n,
                "label": scorer_label(n),
                "role": roles[n],
                "default": True,
                "colour": DEFAULT_COLOURS[i],
                "band": _banded(n),
            }
        )
    for i, n in enumerate(others):
        r, g, b, _ = pal(hues[i % len(hues)])
        out.append(
            {
                "name": n,
                "label": scorer_label(n),
                "role": "",
                "default": False,
                "colour": f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}",
                "band": _banded(n),
            }
        )
    return out


def _legend_text(st: dict[str, Any]) -> str:
    return st["label"] + (f" ({st['role']})" if st["role"] else "")


def _bon_panel(
    ax: Any, rep: dict[str, Any], title: str, series: list[dict[str, Any]], panel: int, gids: bool
) -> None:
    """One panel; ``gids``: tag every line and band ``bon-s{series}-p{panel}`` / ``bon-b...`` and
    the axes ``bon-panel-{panel}`` for results.html's toggles."""
    ks = [int(k) for k in rep["pass_at_k"]]
    if gids:
        ax.patch.set_gid(f"bon-panel-{panel}")
    for i, st in enumerate(series):
        name = st["name"]
        if name == "oracle":
            ys = [rep["pass_at_k"][str(k)] for k in ks]
            (line,) = ax.plot(ks, ys, "--", color=st["colour"], lw=1.2, label=_legend_text(st))
        elif name not in rep["bon"]:
            continue
        else:
            ys = [rep["bon"][name][str(k)] for k in ks]
            strong = st["default"]
            (line,) = ax.plot(
                ks,
                ys,
                color=st["colour"],
                lw=2.2 if strong else 1.0,
                alpha=1 if strong else 0.85,
                marker="o" if st["band"] else None,
                ms=3,
                label=_legend_text(st),
            )
            if st["band"]:
                lo = [rep["bon_ci"][name][str(k)][0] for k in ks]
                hi = [rep["bon_ci"][name][str(k)][1] for k in ks]
                band = ax.fill_between(ks, lo, hi, color=st["colour"], alpha=0.15, lw=0)
                if gids:
                    band.set_gid(f"bon-b{i}-p{panel}")
        if gids:
            line.set_gid(f"bon-s{i}-p{panel}")
    if len(ks) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("N (answers per prompt)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def bon_figure(rep: dict[str, Any], *, all_series: bool = False, html: bool = False) -> Any:
    """Best-of-N curves, one panel for all prompts and one per task family, with the default
    series (``default_series`` and the oracle) or, with ``all_series``, every scorer; 95% CI bands
    for the heads only. The legend sits below the panels, never on one; ``html``: no legend
    (results.html draws its own, with a toggle per series) and every artist tagged for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = series_styles(rep)
    shown = series if all_series or html else [s for s in series if s["default"]]
    panels = [("all", rep)]
    fams = rep.get("per_family", {})
    if len(fams) > 1:
        panels += list(fams.items())
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.6 * len(panels) + 0.4, 3.6), dpi=110, sharey=True, squeeze=False
    )
    for p, (ax, (name, sub)) in enumerate(zip(axes[0], panels)):
        title = (
            f"all: {sub['n_prompts']} held-out prompts"
            if name == "all"
            else f"{name}: {sub['n_prompts']} prompts"
        )
        _bon_panel(ax, sub, title, series if html else shown, p, html)
    axes[0][0].set_ylabel("accuracy of the selected answer")
    fig.suptitle("best-of-N (bands: 95% bootstrap CI over prompts, heads only)", fontsize=9)
    if html:
        fig.tight_layout()
        return fig
    handles, labels = axes[0][0].get_legend_handles_labels()
    ncol = max(1, min(len(labels), int(fig.get_figwidth() // 2.2)))
    rows = -(-len(labels) // ncol)
    legend_h = 0.15 + 0.2 * rows  # inches below the axes, their tick labels and title included
    fig.set_figheight(fig.get_figheight() + legend_h)
    fig.legend(
        handles,
        labels,
        fontsize=7,
        loc="lower center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=ncol,
        frameon=False,
    )
    fig.tight_layout(rect=(0, legend_h / fig.get_figheight(), 1, 1))
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
