"""``hsrm prefs build`` (DPO pairs from a policy's samples) and ``hsrm prefs loop`` (iterative DPO).

Thin: flags and ``--config`` -> config dataclass -> one library call -> print."""

from __future__ import annotations

import argparse
from pathlib import Path

from hsrm.cli._common import add_common, file_values
from hsrm.config import add_arguments, from_sources


def _cmd_build(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hsrm.prefs.commands import BuildConfig, build

    cfg = from_sources(BuildConfig, file_values(args, "prefs_build"), args)
    pairs, stats, n_prompts = build(cfg)
    con = Console()
    con.print(f"{len(pairs)} pairs from {n_prompts} prompts -> {cfg.out}")
    con.print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items()})
    return 0


def _cmd_loop(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hsrm.prefs.loop import LoopConfig, run_loop

    values = file_values(args, "prefs_loop")
    cfg = from_sources(LoopConfig, values, args)
    res = run_loop(cfg)
    con = Console()
    for m in res["rounds"]:
        lo, hi = m["accuracy_ci"]
        extra = f", {m['pairs']['pairs']} pairs" if "pairs" in m else " (base)"
        con.print(
            f"round {m['round']}: accuracy {m['accuracy']:.3f} [{lo:.3f}, {hi:.3f}], "
            f"greedy {m['greedy_accuracy']:.3f}{extra}"
        )
    con.print(f"adapters and metrics under {Path(cfg.out)}")
    return 0


def register(sub, groups) -> None:
    from hsrm.prefs.commands import BuildConfig
    from hsrm.prefs.loop import LoopConfig

    prefs = groups["prefs"]
    p = prefs.add_parser(
        "build",
        help="sample N answers per prompt, score them, write DPO pairs (JSONL for trl.DPOTrainer)",
        description="Sample N answers per prompt, score them with a head and/or the task's "
        "checker, and write best-vs-worst (prompt, chosen, rejected) pairs that trl.DPOTrainer "
        "reads as they are.",
    )
    add_common(p, "prefs_build", BuildConfig)
    add_arguments(p, BuildConfig)
    p.set_defaults(func=_cmd_build)
    q = prefs.add_parser(
        "loop",
        help="iterative DPO: generate, filter, DPO with LoRA, evaluate; R rounds, resumable",
        description="generate -> filter -> DPO (TRL, LoRA via PEFT) -> evaluate on held-out "
        "prompts, for R rounds; each round's adapter and metrics are saved under --out and a "
        "killed run resumes.",
    )
    q.add_argument("--config", help="YAML file (section prefs_loop) with the same fields")
    add_arguments(q, LoopConfig)
    q.add_argument("--n", dest="k", type=int, help="answers sampled per training prompt (= --k)")
    q.set_defaults(func=_cmd_loop)
