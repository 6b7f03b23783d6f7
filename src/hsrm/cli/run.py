"""``hsrm demo``, ``hsrm sample``, ``hsrm train``, ``hsrm evaluate``: sampling (``hsrm.sampling``) and
best-of-N selection (``hsrm.bon``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hsrm.config import add_arguments, from_sources, load_yaml
from hsrm.errors import HsrmError


def _console():
    from rich.console import Console

    return Console()


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with the same fields (flags override it)")


def _cmd_demo(args: argparse.Namespace) -> int:
    from hsrm.bon.demo import DemoConfig, demo, resolve_demo
    from hsrm.report.bon import rich_table

    cfg = resolve_demo(from_sources(DemoConfig, load_yaml(args.config, "demo"), args))
    con = _console()
    extra = (
        f" (+ {cfg.train_prompts} training-only prompts x {cfg.train_n})"
        if cfg.train_prompts
        else ""
    )
    con.print(
        f"[bold]hsrm demo[/]: {cfg.n_prompts} prompts x {cfg.n} samples{extra} from {cfg.model} "
        f"({cfg.dtype}), {cfg.folds} prompt splits"
    )
    rep = demo(cfg)
    con.print(
        rich_table(
            rep, f"best-of-N on held-out prompts (out-of-fold over {cfg.folds} prompt splits)"
        )
    )
    for fam, sub in rep.get("per_family", {}).items():
        con.print(rich_table(sub, f"family {fam}: {sub['n_prompts']} prompts"))
    N = str(cfg.n)
    con.print(
        f"mean accuracy {rep['mean_accuracy']:.3f}, pass@{N} {rep['pass_at_k'][N]:.3f}; "
        f"picked (per family, the head or head-weighted vote with the best out-of-fold BoN@{N} "
        f"on the other splits) closes {100 * rep['gap_closed']['picked'][N]:.0f}% of the gap at N={N}. "
        f"Took {rep['timing']['total_s']:.0f} s."
    )
    _print_default_head(con, rep, N)
    _print_vs_majority(con, rep, N)
    _print_seen(con, rep, N, "held-out")
    if "fresh" in rep:
        fr = rep["fresh"]
        unseen = "" if fr.get("questions", {}).get("seen_prompts") else ", none a training question"
        con.print(
            rich_table(
                fr,
                f"fresh task seed: {fr['n_prompts']} prompts no head or control was fitted "
                f"on{unseen}",
            )
        )
        for fam, sub in fr.get("per_family", {}).items():
            con.print(rich_table(sub, f"fresh, family {fam}: {sub['n_prompts']} prompts"))
        picks = ", ".join(f"{f}: {h}" for f, h in fr["picked"].items())
        con.print(
            f"fresh prompts: mean accuracy {fr['mean_accuracy']:.3f}, pass@{N} "
            f"{fr['pass_at_k'][N]:.3f}; picked ({picks}; chosen on the first store) closes "
            f"{100 * fr['gap_closed']['picked'][N]:.0f}% of the gap at N={N} "
            f"(tables in {Path(cfg.out) / 'fresh'})."
        )
        _print_default_head(con, fr, N)
        _print_vs_majority(con, fr, N)
        _print_seen(con, fr, N, "fresh")
    out = Path(cfg.out)
    con.print(
        f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'bon.png'}, "
        f"{out / 'results.html'} (samples in {out / 'samples'})"
    )
    return 0


def _print_default_head(con: Any, rep: dict[str, Any], N: str) -> None:
    """One line: the head ``hsrm train`` fits by default on a store of hidden states
    (``DEFAULT_HEAD``), one of the demo's heads, beside the demo's per-family pick."""
    from hsrm.bon.train import DEFAULT_HEAD as head

    if head in rep.get("bon", {}):
        con.print(
            f"{head} (what hsrm train fits by default) BoN@{N} {rep['bon'][head][N]:.3f} closes "
            f"{100 * rep['gap_closed'][head][N]:.0f}% of the gap; majority "
            f"{rep['bon']['majority'][N]:.3f}."
        )


def _print_vs_majority(con: Any, rep: dict[str, Any], N: str, key: str = "picked") -> None:
    """One line: ``key``'s BoN@N minus majority vote's per family, paired over the family's prompts
    (``vs_majority``): whether it beats majority vote, asked on the same prompts."""
    from hsrm.report.bon import paired_text

    parts = [
        f"{fam} {paired_text(d)}"
        for fam, sub in rep.get("per_family", {}).items()
        if (d := sub.get("vs_majority", {}).get(key)) and str(sub["vs_majority"]["k"]) == N
    ]
    if parts:
        con.print(
            f"{key} minus majority vote at N={N}, paired over prompts [95% CI]: " + ", ".join(parts)
        )


def _print_seen(con: Any, rep: dict[str, Any], N: str, which: str, key: str = "picked") -> None:
    """One line when test prompts repeat a training question: what ``key`` does without them."""
    qs = rep.get("questions", {})
    if not qs.get("seen_prompts"):
        return
    line = (
        f"[yellow]{qs['seen_prompts']} of {qs['prompts']} {which} prompts ask a question the heads "
        "trained on (in another context)[/]"
    )
    if "unseen" in qs:
        u = qs["unseen"]
        line += (
            f"; on the other {u['n_prompts']}, {key} BoN@{N} {u['bon'][key][N]:.3f} closes "
            f"{100 * u['gap_closed'][key][N]:.0f}% of the gap (majority "
            f"{u['bon']['majority'][N]:.3f})"
        )
    con.print(line + ".")


def _cmd_sample(args: argparse.Namespace) -> int:
    from hsrm.engines import sample
    from hsrm.sampling import SampleRunConfig

    cfg = from_sources(SampleRunConfig, load_yaml(args.config, "sample"), args)
    store = sample(cfg)
    labels = store.labels
    _console().print(
        f"{len(store)} samples in {cfg.out}; accuracy {labels.mean():.3f}; "
        f"{store.bytes_on_disk() / max(1, len(store)) / 1e3:.1f} KB per answer"
    )
    return 0


def _require_run(args: argparse.Namespace, values: dict, command: str) -> None:
    """No silent fallback to runs/sample: the store is named on the command line or in the file."""
    if args.run is None and "run" not in values:
        raise HsrmError(
            f"{command}: name the sample store: hsrm {command} RUN/ (or run: in --config)"
        )


def _cmd_train(args: argparse.Namespace) -> int:
    from hsrm.bon.train import TrainConfig, train
    from hsrm.cli._common import file_values
    from hsrm.cli._params import head_config

    values = file_values(args, "train")
    _require_run(args, values, "train")
    cfg = head_config(TrainConfig, args, values)
    head = train(cfg)
    _console().print(
        f"saved {head.architecture} head ({head.n_parameters():,} parameters) to {cfg.out}"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from hsrm.bon.evaluate import EvaluateConfig, evaluate
    from hsrm.cli._common import file_values
    from hsrm.report.bon import rich_table

    values = file_values(args, "evaluate")
    _require_run(args, values, "evaluate")
    cfg = from_sources(EvaluateConfig, values, args)
    if not cfg.heads:
        raise HsrmError("evaluate: give at least one saved head folder (--head HEAD/)")
    rep = evaluate(cfg)
    con = _console()
    con.print(rich_table(rep))
    first = next(iter(rep["bon"]))  # the first head given
    N = max(rep["bon"][first], key=int)
    _print_vs_majority(con, rep, N, key=first)
    _print_seen(con, rep, N, "test", key=first)
    if rep.get("n_stopped_early"):
        con.print(
            f"{rep['n_stopped_early']} samples were stopped early (--prune): they count as no "
            "answer; AUROCs are over the finished samples"
        )
    out = Path(cfg.out or Path(cfg.run) / "eval")
    con.print(
        f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'bon.png'}, "
        f"{out / 'results.html'}"
    )
    return 0


def register(sub, groups) -> None:
    from hsrm.bon.demo import DemoConfig
    from hsrm.bon.evaluate import EvaluateConfig
    from hsrm.bon.train import TrainConfig
    from hsrm.cli._common import add_common
    from hsrm.cli._params import add_params_argument
    from hsrm.sampling import SampleRunConfig

    p = sub.add_parser("demo", help="the whole best-of-N pipeline on the embedded model and task")
    _common(p)
    add_arguments(p, DemoConfig)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "sample", help="sample N answers per prompt, capturing hidden states into a store"
    )
    _common(p)
    add_arguments(p, SampleRunConfig)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("train", help="train a head on a store's training prompts")
    p.add_argument("run", nargs="?", default=None, help="sample store (RUN/)")
    add_common(p, "train")
    add_arguments(p, TrainConfig, skip=("run", "params"))
    add_params_argument(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "evaluate", help="best-of-N report of saved heads on a store's held-out prompts"
    )
    p.add_argument("run", nargs="?", default=None, help="sample store (RUN/)")
    add_common(p, "evaluate")
    add_arguments(p, EvaluateConfig, skip=("run", "heads"))
    p.add_argument(
        "--head", dest="heads", action="append", default=None, help="saved head folder (repeatable)"
    )
    p.set_defaults(func=_cmd_evaluate)
