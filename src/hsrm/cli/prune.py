"""``hsrm prune-head``: fit the prefix head that ``hsrm sample --prune head`` stops samples with.

Thin: flags and ``--config`` -> ``hsrm.bon.prune_online.PrefixHeadConfig`` -> one library call
(``train_prefix_head``) -> print."""

from __future__ import annotations

import argparse

from hsrm.cli._common import add_common, file_values
from hsrm.config import add_arguments, from_sources


def _cmd_prune_head(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hsrm.bon.prune_online import PrefixHeadConfig, train_prefix_head

    cfg = from_sources(PrefixHeadConfig, file_values(args, "prune_head"), args)
    head = train_prefix_head(cfg)
    Console().print(
        f"prefix head on layers {head.layers}, checkpoints {head.checkpoints} -> {cfg.out} "
        f"(use: hsrm sample --prune head --prune-head {cfg.out} "
        f"--prune-checkpoints {','.join(map(str, head.checkpoints))})"
    )
    return 0


def register(sub, groups) -> None:
    from hsrm.bon.prune_online import PrefixHeadConfig

    p = sub.add_parser(
        "prune-head",
        help="fit a prefix head for early pruning (hsrm sample --prune head)",
        description="Fit one logistic regression per checkpoint on each sample's hidden states "
        "averaged over its first t answer tokens, labelled with the final answer's correctness, "
        "from a fully sampled store of the task; save it for `hsrm sample --prune head`.",
    )
    add_common(p, "prune_head")
    add_arguments(p, PrefixHeadConfig)
    p.set_defaults(func=_cmd_prune_head)
