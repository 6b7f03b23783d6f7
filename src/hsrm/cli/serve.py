"""``hsrm serve``: the OpenAI-compatible best-of-N server (docs/serve.md)."""

from __future__ import annotations

import argparse

from hsrm.config import add_arguments, from_sources, load_yaml


def _cmd_serve(args: argparse.Namespace) -> int:
    from hsrm.serve import ServeConfig, serve

    cfg = from_sources(ServeConfig, load_yaml(args.config, "serve"), args)
    serve(cfg)
    return 0


def register(sub, groups) -> None:
    from hsrm.serve.config import ServeConfig

    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible best-of-N server ranking samples with a head, plus reward endpoints",
    )
    p.add_argument("--config", help="YAML file with the same fields (flags override it)")
    add_arguments(p, ServeConfig)
    p.set_defaults(func=_cmd_serve)
