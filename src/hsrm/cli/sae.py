"""``hsrm sae train`` (a TopK SAE on one layer, saved in SAELens's format) and ``hsrm sae inspect``
(top-activating tokens of chosen latents, or of a SparseRM head's selected latents).

Thin: flags and ``--config`` -> ``hsrm.sae_commands`` config -> one library call -> print."""

from __future__ import annotations

import argparse

from hsrm.cli._common import add_common, file_values
from hsrm.config import add_arguments, from_sources
from hsrm.sae_commands import SAEInspectConfig, SAETrainConfig  # noqa: F401  (old import path)


def _cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hsrm.sae_commands import train_sae

    cfg = from_sources(SAETrainConfig, file_values(args, "sae_train"), args)
    _, stats = train_sae(cfg)
    Console().print(
        f"SAE layer {stats['layer']}, {cfg.latents} latents, k={cfg.k}, {stats['n_tokens']} tokens: "
        f"fraction of variance explained {stats['fve']:.3f}, "
        f"dead latents {100 * stats['dead_share']:.1f} % -> {cfg.out}"
    )
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from hsrm.sae_commands import inspect_sae

    cfg = from_sources(SAEInspectConfig, file_values(args, "sae_inspect"), args)
    latents, diffs, tops = inspect_sae(cfg)
    table = Table("latent", "freq diff", "top-activating tokens (context -> token: activation)")
    for j in latents:
        cells = (
            "\n".join(
                f"...{t['context'][-40:]!r} -> {t['token']!r}: {t['activation']:.2f}"
                for t in tops[j]
            )
            or "(never fires)"
        )
        table.add_row(str(j), f"{diffs[j]:+.3f}" if j in diffs else "", cells)
    Console().print(table)
    return 0


def register(sub, groups) -> None:
    sae = groups["sae"]
    p = sae.add_parser(
        "train",
        help="train a TopK SAE on one layer's activations over offline text (SAELens folder format)",
        description="Collect one layer's token activations of the model over chat-formatted "
        "prompt + answer texts, train a TopK SAE, and save it as cfg.json + "
        "sae_weights.safetensors (SAELens's format).",
    )
    add_common(p, "sae_train", SAETrainConfig)
    add_arguments(p, SAETrainConfig)
    p.set_defaults(func=_cmd_train)
    p = sae.add_parser(
        "inspect",
        help="top-activating tokens of SAE latents (or of a sparserm head's selected latents)",
        description="Show, for each latent, the tokens (with context) where it activates most.",
    )
    add_common(p, "sae_inspect", SAEInspectConfig)
    add_arguments(p, SAEInspectConfig)
    p.set_defaults(func=_cmd_inspect)
