"""``hsrm import`` and ``hsrm select``: any engine's generations into a store, and offline best-of-N
over them (``hsrm.importing``; docs/engines.md)."""

from __future__ import annotations

import argparse

from hsrm.config import add_arguments, from_sources, load_yaml


def _cmd_import(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hsrm.importing import ImportConfig, import_generations

    cfg = from_sources(ImportConfig, load_yaml(args.config, "import"), args)
    store = import_generations(cfg)
    n_req = len(set(store.prompt_ids.tolist()))
    Console().print(
        f"{len(store)} answers of {n_req} requests in {cfg.out} "
        f"({store.meta['import']['features']}); accuracy {store.labels.mean():.3f}"
    )
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hsrm.importing import SelectConfig, select

    cfg = from_sources(SelectConfig, load_yaml(args.config, "select"), args)
    rows = select(cfg)
    msg = f"picked 1 of {sum(r['n'] for r in rows)} choices for each of {len(rows)} requests"
    labelled = [r["label"] for r in rows if "label" in r]
    if labelled:
        msg += f"; {sum(labelled)} of {len(labelled)} labelled picks are right"
    Console().print(f"{msg}; wrote {cfg.out}")
    return 0


def register(sub, groups) -> None:
    from hsrm.importing import ImportConfig, SelectConfig

    p = sub.add_parser(
        "import",
        help="import any engine's generations (OpenAI-format JSONL) into a store",
        description="Read vLLM / SGLang / OpenAI-compatible outputs (chat/completions responses "
        "with n choices, Batch API output, or prompt/completion lines) into a sample store: "
        "teacher-forced hidden states with --model, else the logged top-k log-probs.",
    )
    p.add_argument("--config", help="YAML file with the same fields (flags override it)")
    add_arguments(p, ImportConfig)
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser(
        "select",
        help="offline best-of-N: per request, the choice a saved head scores best",
    )
    p.add_argument("--config", help="YAML file with the same fields (flags override it)")
    add_arguments(p, SelectConfig)
    p.set_defaults(func=_cmd_select)
