"""``hsrm demo``, ``hsrm sample``, ``hsrm train``, ``hsrm evaluate``: the best-of-N pipeline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hsrm.config import add_arguments, from_sources, load_yaml


def _console():
    from rich.console import Console

    return Console()


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with the same fields (flags override it)")


def _cmd_demo(args: argparse.Namespace) -> int:
    from hsrm.pipeline import DemoConfig, demo
    from hsrm.report import rich_table

    cfg = from_sources(DemoConfig, load_yaml(args.config, "demo"), args)
    con = _console()
    con.print(
        f"[bold]hsrm demo[/]: {cfg.n_prompts} prompts x {cfg.n} samples from {cfg.model}, {cfg.folds} prompt splits"
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
    best = max(("elhsr", "probe"), key=lambda s: rep["bon"][s][N])
    con.print(
        f"mean accuracy {rep['mean_accuracy']:.3f}, pass@{N} {rep['pass_at_k'][N]:.3f}; "
        f"{best} closes {100 * rep['gap_closed'][best][N]:.0f}% of the gap at N={N}. "
        f"Took {rep['timing']['total_s']:.0f} s."
    )
    if "fresh" in rep:
        fr = rep["fresh"]
        con.print(
            rich_table(
                fr,
                f"fresh task seed: {fr['n_prompts']} prompts no head or control was fitted on",
            )
        )
        for fam, sub in fr.get("per_family", {}).items():
            con.print(rich_table(sub, f"fresh, family {fam}: {sub['n_prompts']} prompts"))
        best = max(("elhsr", "probe"), key=lambda s: fr["bon"][s][N])
        con.print(
            f"fresh prompts: mean accuracy {fr['mean_accuracy']:.3f}, pass@{N} "
            f"{fr['pass_at_k'][N]:.3f}; {best} closes {100 * fr['gap_closed'][best][N]:.0f}% "
            f"of the gap at N={N} (tables in {Path(cfg.out) / 'fresh'})."
        )
    out = Path(cfg.out)
    con.print(
        f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'bon.png'} (samples in {out / 'samples'})"
    )
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from hsrm.pipeline import SampleRunConfig, sample

    cfg = from_sources(SampleRunConfig, load_yaml(args.config, "sample"), args)
    store = sample(cfg)
    labels = store.labels
    _console().print(
        f"{len(store)} samples in {cfg.out}; accuracy {labels.mean():.3f}; "
        f"{store.bytes_on_disk() / max(1, len(store)) / 1e3:.1f} KB per answer"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from hsrm.pipeline import TrainConfig, train

    params = json.loads(args.params) if isinstance(args.params, str) else None
    args.params = None
    cfg = from_sources(TrainConfig, load_yaml(args.config, "train"), args, params=params)
    head = train(cfg)
    _console().print(f"saved {cfg.head} head ({head.n_parameters():,} parameters) to {cfg.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from hsrm.pipeline import EvaluateConfig, evaluate
    from hsrm.report import rich_table

    cfg = from_sources(EvaluateConfig, load_yaml(args.config, "evaluate"), args)
    rep = evaluate(cfg)
    con = _console()
    con.print(rich_table(rep))
    out = Path(cfg.out or Path(cfg.run) / "eval")
    con.print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'bon.png'}")
    return 0


def register(sub, groups) -> None:
    from hsrm.pipeline import DemoConfig, EvaluateConfig, SampleRunConfig, TrainConfig

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
    _common(p)
    add_arguments(p, TrainConfig, skip=("run", "params"))
    p.add_argument(
        "--params", default=None, help="extra head hyperparameters as JSON, e.g. '{\"lr\": 1e-3}'"
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "evaluate", help="best-of-N report of saved heads on a store's held-out prompts"
    )
    p.add_argument("run", nargs="?", default=None, help="sample store (RUN/)")
    _common(p)
    add_arguments(p, EvaluateConfig, skip=("run", "heads"))
    p.add_argument(
        "--head", dest="heads", action="append", default=None, help="saved head folder (repeatable)"
    )
    p.set_defaults(func=_cmd_evaluate)
