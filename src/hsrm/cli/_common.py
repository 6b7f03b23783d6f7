"""Flags every model- or head-running command shares: ``--config`` and ``--threads``. A command
that runs a model takes ``--model --dtype --device --threads`` from its config's
``hsrm.models.ModelConfig`` fields (one declaration of their help and defaults)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from hsrm.config import load_yaml


def add_common(p: argparse.ArgumentParser, section: str, cls: type | None = None) -> None:
    """``--config``, and ``--threads`` unless ``cls`` (the command's config) declares it: a
    ``ModelConfig`` does, with the model flags."""
    from hsrm.models import ModelConfig

    p.add_argument(
        "--config", default=None, help=f"YAML file (section '{section}'; flags override it)"
    )
    if cls is None or not issubclass(cls, ModelConfig):
        th = next(f for f in dataclasses.fields(ModelConfig) if f.name == "threads")
        p.add_argument(
            "--threads", type=int, default=None, help=f"{th.metadata['help']} (default: 0)"
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
