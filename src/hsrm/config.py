"""Typed dataclass configs: the single source for the Python API and the CLI.

``add_arguments(parser, Cls)`` turns each field into a ``--flag`` (help from the field's
``metadata["help"]``); ``from_sources(Cls, yaml_dict, args)`` builds the config from defaults, then
``--config run.yaml``, then flags given on the command line (flags win).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hsrm.errors import HsrmError

T = TypeVar("T")
#: The command line of this process when it is the ``hsrm`` CLI (set by ``hsrm.cli.main``), so
#: that outputs can say how to resume or redo them.
COMMAND: list[str] | None = None


def field(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with CLI help text; ``min=``/``max=`` bound a number, ``choices=`` lists
    the values a string may take (checked with the type by ``validate``, before any model loads;
    floats must also be finite)."""
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
        elif tp is bool:  # --flag alone means true; --flag false also works
            parser.add_argument(
                flag, type=conv, nargs="?", const=True, default=None, help=help_, metavar="BOOL"
            )
        else:
            parser.add_argument(
                flag, type=conv, default=None, help=help_, metavar=tp.__name__.upper()
            )


def conforms(v: Any, tp: Any) -> bool:
    """Whether a parsed YAML/JSON value ``v`` fits the annotation ``tp`` (bool is not a number)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(v, a) for a in typing.get_args(tp))
    if tp is type(None):
        return v is None
    if tp is Any:
        return True
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, int | float) and not isinstance(v, bool)
    if tp is str:
        return isinstance(v, str)
    if origin in (list, tuple, typing.get_origin(typing.Sequence[int])) or tp in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(v, list | tuple) and (not args or all(conforms(x, args[0]) for x in v))
    if origin is dict or tp is dict:
        return isinstance(v, dict)
    return True


def type_name(tp: Any, plural: bool = False) -> str:
    """``int | None`` -> "an integer or null", ``list[int]`` -> "a list of integers"."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a, plural) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is dict or tp is dict:
        return "mappings" if plural else "a mapping"
    if origin in (list, tuple, typing.get_origin(typing.Sequence[int])) or tp in (list, tuple):
        args = typing.get_args(tp)
        return "a list" + (f" of {type_name(args[0], True)}" if args else "")
    names = {int: "integer", float: "number", str: "string", bool: "true or false"}
    if tp in names:
        n = names[tp]
        if tp is bool:
            return n
        return n + "s" if plural else ("an " if n[0] in "aeiou" else "a ") + n
    return getattr(tp, "__name__", str(tp))


def validate(
    cfg: Any,
    where: str = "config",
    lines: dict[str, int] | None = None,
    flags: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Check every field of a config dataclass against its type and its ``min``/``max``; raise
    HsrmError naming the flag (fields in ``flags``) or ``where`` (file, and line when known)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in flags:
            at = "--" + f.name.replace("_", "-")
        elif lines and f.name in lines:
            at = f"{where}:{lines[f.name]}: field {f.name!r}"
        else:
            at = f"{where}: field {f.name!r}"
        if not conforms(v, hints[f.name]):
            raise HsrmError(f"{at} must be {type_name(hints[f.name])}, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise HsrmError(f"{at} must be a finite number, got {v!r}")
        choices = f.metadata.get("choices")
        if choices is not None and v not in choices:
            raise HsrmError(f"{at} must be one of {', '.join(map(str, choices))}, got {v!r}")
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if isinstance(v, int | float) and not isinstance(v, bool):
            if lo is not None and v < lo:
                raise HsrmError(f"{at} must be >= {lo}, got {v!r}")
            if hi is not None and v > hi:
                raise HsrmError(f"{at} must be <= {hi}, got {v!r}")


def from_sources(
    cls: type[T], file_values: dict[str, Any] | None = None, args: Any = None, **over: Any
) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    source = getattr(file_values, "source", "config")
    file_lines: dict[str, int] = getattr(file_values, "lines", {})
    lines: dict[str, int] = {}
    values: dict[str, Any] = {}
    for k, v in (file_values or {}).items():
        key = str(k).replace("-", "_")
        at = f"{source}:{file_lines[k]}" if k in file_lines else source
        if key not in names:
            raise HsrmError(f"{at}: unknown field {k!r} for {cls.__name__}; known: {sorted(names)}")
        values[key] = v
        if k in file_lines:
            lines[key] = file_lines[k]
    flags: set[str] = set()
    if args is not None:
        for k in names:
            v = getattr(args, k, None)
            if v is not None:
                values[k] = v
                flags.add(k)
    for k, v in over.items():
        if v is not None:
            values[k] = v
            flags.add(k)
    try:
        cfg = cls(**values)
    except TypeError as e:
        raise HsrmError(f"{source}: {e}") from None
    validate(cfg, source, lines, flags)
    return cfg


class _FileValues(dict):
    """A config file's mapping, remembering the file (``source``) and each key's line."""

    source: str = "config"
    lines: dict[str, int]


def load_yaml(path: str | Path | None, section: str | None = None) -> dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    if not p.exists():
        raise HsrmError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise HsrmError(f"{p}: not UTF-8 text (byte {e.start})") from None
    try:
        data = yaml.safe_load(text) or {}
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise HsrmError(f"{p}{where}: malformed YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise HsrmError(f"{p}: expected a mapping at the top level")
    # YAML keeps the last of a key given twice without a word; the first was meant too, or not.
    dup = _duplicate_key(node)
    if dup is not None:
        key, first, again = dup
        raise HsrmError(
            f"{p}:{again}: key {key!r} given twice (first on line {first}); keep one of them"
        )
    out = _FileValues()
    out.source = str(p)
    if section and isinstance(data.get(section), dict):
        out.update(data[section])
        node = _child(node, section)
    else:
        out.update(data)
    out.lines = {}
    if isinstance(node, yaml.MappingNode):
        for k, _v in node.value:
            out.lines[str(k.value)] = k.start_mark.line + 1
    return out


def _child(node: Any, key: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return v
    return None


def _duplicate_key(node: Any) -> tuple[str, int, int] | None:
    """(key, first line, repeated line) of the first key given twice in any mapping of ``node``."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            name, line = str(k.value), k.start_mark.line + 1
            if name in seen:
                return name, seen[name], line
            seen[name] = line
            if (dup := _duplicate_key(v)) is not None:
                return dup
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            if (dup := _duplicate_key(v)) is not None:
                return dup
    return None
