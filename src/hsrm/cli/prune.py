"""``hsrm prune-head``: fit the prefix head that ``hsrm sample --prune head`` stops samples with.

Thin: flags and ``--config`` -> ``hsrm.bon.prefix_head.PrefixHeadConfig`` -> one library call
(``train_prefix_head``) -> print."""

from __future__ import annotations

import argparse

from hsrm.cli._common import add_common, file_values
from hsrm.config import add_arguments, from_sources


def _cmd_prune_head(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hsrm.bon.prefix_head import PrefixHeadConfig, train_prefix_head

    cfg = from_sources(PrefixHeadConfig, file_values(args, "prune_head"), args)
    head = train_prefix_head(cfg)
    con = Console()
    for d in head.diagnostics or []:
        if d["tied"] is None:
            con.print(f"checkpoint {d['checkpoint']}: no prompt has both right and wrong answers")
            continue
        note = ""
        if d["tied"] > 0.5:  # most right/wrong pairs are still the same text: nothing to read
            note = " [yellow](most answers still identical here: a later checkpoint?)[/yellow]"
        auc = "n/a" if d["auroc"] is None else f"{d['auroc']:.3f}"
        con.print(
            f"checkpoint {d['checkpoint']}: out-of-fold within-prompt AUROC {auc}, "
            f"ceiling {d['auroc_ceiling']:.3f} ({d['tied']:.0%} of right/wrong pairs identical)"
            + note
        )
    con.print(
        f"prefix head on layers {head.layers}, checkpoints {head.checkpoints} -> {cfg.out} "
        f"(use: hsrm sample --prune head --prune-head {cfg.out} "
        f"--prune-checkpoints {','.join(map(str, head.checkpoints))})"
    )
    return 0


def register(sub, groups) -> None:
    from hsrm.bon.prefix_head import PrefixHeadConfig

    p = sub.add_parser(
        "prune-head",
        help="fit a prefix head for early pruning (hsrm sample --prune head)",
        description="Fit one logistic regression per checkpoint on each sample's hidden states "
        "averaged over its first t answer tokens, labelled with the final answer's correctness, "
        "from a fully sampled store of the task; save it for `hsrm sample --prune head`. It also "
        "reports, per checkpoint, the head's out-of-fold within-prompt AUROC and the ceiling left "
        "by answers whose first t tokens are still identical (--diagnose false skips this).",
    )
    add_common(p, "prune_head")
    add_arguments(p, PrefixHeadConfig)
    p.set_defaults(func=_cmd_prune_head)
