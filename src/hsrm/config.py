"""Typed dataclass configs: the single source for the Python API and the CLI.

``add_arguments(parser, Cls)`` turns each field into a ``--flag`` (help from the field's
``metadata["help"]``); ``from_sources(Cls, yaml_dict, args)`` builds the config from defaults, then
``--config run.yaml``, then flags given on the command line (flags win).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hsrm.errors import HsrmError

T = TypeVar("T")


def field(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with CLI help text."""
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: default, metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(scalar type, is_list) from an annotation like ``int | None`` or ``list[int]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        return typing.get_args(tp)[0], True
    return tp, False


def _parse_bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, is_list = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "") + f" (default: {default})"
        conv = _parse_bool if tp is bool else tp
        if is_list:
            parser.add_argument(flag, type=conv, nargs="+", default=None, help=help_)
        else:
            parser.add_argument(
                flag, type=conv, default=None, help=help_, metavar=tp.__name__.upper()
            )


def from_sources(
    cls: type[T], file_values: dict[str, Any] | None = None, args: Any = None, **over: Any
) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for k, v in (file_values or {}).items():
        key = k.replace("-", "_")
        if key not in names:
            raise HsrmError(
                f"config: unknown field {k!r} for {cls.__name__}; known: {sorted(names)}"
            )
        values[key] = v
    if args is not None:
        for k in names:
            v = getattr(args, k, None)
            if v is not None:
                values[k] = v
    values.update({k: v for k, v in over.items() if v is not None})
    try:
        return cls(**values)
    except TypeError as e:
        raise HsrmError(f"config: {e}") from None


def load_yaml(path: str | Path | None, section: str | None = None) -> dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    if not p.exists():
        raise HsrmError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise HsrmError(f"{p}{where}: malformed YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise HsrmError(f"{p}: expected a mapping at the top level")
    if section and isinstance(data.get(section), dict):
        return data[section]
    return data
