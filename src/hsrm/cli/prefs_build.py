"""``hsrm prefs build`` (DPO pairs from a policy's samples) and ``hsrm prefs loop`` (iterative DPO)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from hsrm.config import add_arguments, field, from_sources, load_yaml
from hsrm.models import DEFAULT_MODEL


@dataclasses.dataclass
class BuildConfig:
    """``hsrm prefs build``."""

    model: str = field(DEFAULT_MODEL, "policy model to sample from (and the head's model)")
    head: str | None = field(None, "saved head folder; without it pairs come from the verifier")
    task: str = field("synthetic", "task: synthetic, gsm8k:PATH, bbh:PATH, jsonl:PATH")
    families: str = field("arith,compare", "synthetic task families")
    n_prompts: int = field(64, "prompts to build pairs on (first N of the task)")
    task_seed: int = field(
        1, "synthetic task seed (hsrm sample's default is 0: heads trained there saw other prompts)"
    )
    seed: int = field(0, "sampling and pair-choice seed")
    k: int = field(8, "answers sampled per prompt")
    temperature: float = field(0.8, "sampling temperature")
    max_new_tokens: int = field(6, "answer length limit")
    select: str | None = field(
        None, "head, verifier or random (default: head if --head else verifier)"
    )
    margin: float = field(0.0, "minimum head-score gap between chosen and rejected")
    drop_disagreements: bool = field(True, "drop head pairs the task's checker ranks the other way")
    use_verifier: bool = field(
        True, "label answers with the task's checker (disagreement filter, stats)"
    )
    out: str = field("pairs.jsonl", "output JSONL (TRL preference format)")
    threads: int = field(0, "torch CPU threads (0 = torch's default)")


def _threads(n: int) -> None:
    if n > 0:
        import torch

        torch.set_num_threads(n)


def _cmd_build(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hsrm.capture import SampleConfig
    from hsrm.heads.base import Head
    from hsrm.models import load_model
    from hsrm.prefs.build import build_pairs
    from hsrm.tasks import get_task

    cfg = from_sources(BuildConfig, load_yaml(args.config, "prefs_build"), args)
    _threads(cfg.threads)
    task = get_task(cfg.task, n=cfg.n_prompts, families=cfg.families, seed=cfg.task_seed)
    prompts = task.prompts()[: cfg.n_prompts]
    head = Head.load(cfg.head) if cfg.head else None
    lm = load_model(cfg.model)
    pairs, stats = build_pairs(
        lm,
        prompts,
        head=head,
        task=task if cfg.use_verifier else None,
        sample=SampleConfig(
            n=cfg.k, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed
        ),
        select=cfg.select,
        margin=cfg.margin,
        drop_disagreements=cfg.drop_disagreements,
        out=cfg.out,
        seed=cfg.seed,
    )
    con = Console()
    con.print(f"{len(pairs)} pairs from {len(prompts)} prompts -> {cfg.out}")
    con.print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items()})
    return 0


def _cmd_loop(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hsrm.prefs.loop import LoopConfig, run_loop

    cfg = from_sources(LoopConfig, load_yaml(args.config, "prefs_loop"), args)
    _threads(cfg.threads)
    res = run_loop(cfg)
    con = Console()
    for m in res["rounds"]:
        lo, hi = m["accuracy_ci"]
        extra = f", {m['pairs']['pairs']} pairs" if "pairs" in m else " (base)"
        con.print(
            f"round {m['round']}: accuracy {m['accuracy']:.3f} [{lo:.3f}, {hi:.3f}], greedy {m['greedy_accuracy']:.3f}{extra}"
        )
    con.print(f"adapters and metrics under {Path(cfg.out)}")
    return 0


def register(sub, groups) -> None:
    from hsrm.prefs.loop import LoopConfig

    prefs = groups["prefs"]
    p = prefs.add_parser(
        "build",
        help="sample K answers per prompt, score them, write DPO pairs (JSONL for trl.DPOTrainer)",
        description="Sample K answers per prompt, score them with a head and/or the task's checker, and "
        "write best-vs-worst (prompt, chosen, rejected) pairs that trl.DPOTrainer reads as they are.",
    )
    p.add_argument("--config", help="YAML file (section prefs_build) with the same fields")
    add_arguments(p, BuildConfig)
    p.set_defaults(func=_cmd_build)
    q = prefs.add_parser(
        "loop",
        help="iterative DPO: generate, filter, DPO with LoRA, evaluate; R rounds, resumable",
        description="generate -> filter -> DPO (TRL, LoRA via PEFT) -> evaluate on held-out prompts, for R "
        "rounds; each round's adapter and metrics are saved under --out and a killed run resumes.",
    )
    q.add_argument("--config", help="YAML file (section prefs_loop) with the same fields")
    add_arguments(q, LoopConfig)
    q.set_defaults(func=_cmd_loop)
