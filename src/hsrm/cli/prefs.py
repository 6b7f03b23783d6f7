"""``hsrm prefs train`` (a pairwise reward head, e.g. SparseRM, on preference pairs) and
``hsrm prefs evaluate`` (pairwise accuracy of a saved head on pairs, with a CI over questions).

Thin: flags and ``--config`` -> ``hsrm.prefs.commands`` config -> one library call -> print."""

from __future__ import annotations

import argparse

from hsrm.cli._common import add_common, file_values
from hsrm.cli._params import (
    add_params_argument,
    head_config,
)
from hsrm.config import add_arguments, from_sources


def _cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hsrm.prefs.commands import PrefsTrainConfig, train_prefs

    values = file_values(args, "prefs_train")
    cfg = head_config(PrefsTrainConfig, args, values)
    head, ps = train_prefs(cfg)
    Console().print(
        f"{cfg.head_type}: fit on {len(ps)} pairs ({len(set(ps.pair_groups))} questions), "
        f"{head.n_parameters()} parameters -> {cfg.out}"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hsrm.prefs.commands import PrefsEvalConfig, evaluate_prefs

    cfg = from_sources(PrefsEvalConfig, file_values(args, "prefs_evaluate"), args)
    res = evaluate_prefs(cfg)
    con = Console()
    for k, r in res.items():
        con.print(
            f"{k:>9}: pairwise accuracy {r['acc']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] "
            f"on {r['n_pairs']} pairs, {r['n_questions']} questions"
        )
    return 0


def register(sub, groups) -> None:
    from hsrm.prefs.commands import PrefsEvalConfig, PrefsTrainConfig

    prefs = groups["prefs"]
    p = prefs.add_parser(
        "train",
        help="train a pairwise reward head (sparserm, denserm, ...) on preference pairs",
        description="Teacher-force every pair's answers once, then fit a head with y=1 chosen / "
        "0 rejected, grouped by pair. Pairs: TRL/RewardBench JSONL (prompt, chosen, rejected) or "
        "the TruthfulQA CSV.",
    )
    add_common(p, "prefs_train", PrefsTrainConfig)
    add_arguments(p, PrefsTrainConfig, skip=("params",))
    add_params_argument(p)
    p.set_defaults(func=_cmd_train)
    p = prefs.add_parser(
        "evaluate",
        help="pairwise accuracy of a saved head on preference pairs (bootstrap CI over questions)",
        description="Score chosen and rejected answers with a saved head; report pairwise accuracy "
        "with a bootstrap CI resampling questions, next to the length-normalised log-prob baseline.",
    )
    add_common(p, "prefs_evaluate", PrefsEvalConfig)
    add_arguments(p, PrefsEvalConfig)
    p.set_defaults(func=_cmd_evaluate)
