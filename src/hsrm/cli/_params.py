"""``--params``: head hyperparameters as one JSON object or as ``key=value`` items, one parser for
every command that builds a head (``hsrm train``, ``hsrm detect train``, ``hsrm prefs train``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from hsrm.errors import HsrmError

HELP = (
    "head hyperparameters: a JSON object ('{\"lr\": 1e-3}') or key=value items (lr=1e-3 epochs=5); "
    "checked against the head's parameters"
)


def add_params_argument(p: argparse.ArgumentParser) -> None:
    """``--params`` into ``args.params``."""
    p.add_argument("--params", nargs="+", default=None, metavar="KEY=VALUE", help=HELP)


def parse_params(value: str | Sequence[str] | dict[str, Any] | None) -> dict[str, Any]:
    """A dict from a JSON object string, ``key=value`` strings (each value read as JSON when it
    parses: numbers, true/false, lists; else kept as a string), or a dict (a YAML mapping)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k).replace("-", "_"): v for k, v in value.items()}
    items = [value] if isinstance(value, str) else list(value)
    if len(items) == 1 and items[0].lstrip().startswith("{"):
        try:
            obj = json.loads(items[0])
        except json.JSONDecodeError as e:
            raise HsrmError(
                f"--params: not valid JSON ({e.msg} at column {e.colno}) in {items[0]!r}; "
                "write '{\"lr\": 0.001}' (quoted keys) or lr=0.001"
            ) from None
        if not isinstance(obj, dict):
            raise HsrmError(f"--params: expected a JSON object, got {type(obj).__name__}")
        return parse_params(obj)
    out: dict[str, Any] = {}
    for it in items:
        key, sep, val = it.partition("=")
        if not sep or not key.strip():
            raise HsrmError(f"--params expects a JSON object or key=value items, got {it!r}")
        try:
            out[key.strip().replace("-", "_")] = json.loads(val)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = val
    return out


def file_params(values: dict[str, Any]) -> dict[str, Any]:
    """Pop ``params`` from a ``--config`` section (``hsrm.config.load_yaml``'s mapping, which knows
    its file and lines): it must be a mapping there, and the message names the file and line."""
    v = values.pop("params", None)
    if v is None:
        return {}
    if not isinstance(v, dict):
        src = getattr(values, "source", "config")
        line = getattr(values, "lines", {}).get("params")
        at = f"{src}:{line}" if line else src
        raise HsrmError(f"{at}: field 'params' must be a mapping (key: value lines), got {v!r}")
    return parse_params(v)


def head_config(cls: type, args: argparse.Namespace, values: dict[str, Any]) -> Any:
    """The config of a command that builds a head (``train``, ``detect train``, ``prefs train``):
    the ``--config`` section and the flags, with ``params`` merged from both (flags win per key).
    The command checks them against its ``head_type`` (``Head.check_params``) before any read."""
    from hsrm.config import from_sources

    params = {**file_params(values), **parse_params(args.params)}
    args.params = None
    return from_sources(cls, values, args, params=params or None)
