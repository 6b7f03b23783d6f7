"""Flags every model- or head-running command shares: ``--config`` and ``--threads``."""

from __future__ import annotations

import argparse
from typing import Any

from hsrm.config import load_yaml


def add_common(p: argparse.ArgumentParser, section: str) -> None:
    p.add_argument(
        "--config", default=None, help=f"YAML file (section '{section}'; flags override it)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's own)"
    )


def file_values(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The ``--config`` section as a dict; its ``threads`` (a process setting, not part of the
    command's config) is applied unless ``--threads`` was given."""
    values = load_yaml(args.config, section)  # keeps the file name and lines for messages
    threads = values.pop("threads", None)
    set_threads(args.threads if args.threads is not None else threads)
    return values


def set_threads(n: Any) -> None:
    if n:
        import torch

        torch.set_num_threads(int(n))
