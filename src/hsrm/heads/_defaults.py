"""``with_defaults``: a head variant that differs from its parent only in default values."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T", bound=type)


def with_defaults(fixed: dict[str, Any] | None = None, **defaults: Any) -> Callable[[T], T]:
    """Class decorator: the class's constructor becomes its parent's with other ``defaults``, and
    the ``fixed`` parameters removed from it (always passed with these values). A variant head
    then states only what differs instead of copying the whole constructor, and
    ``Head.param_names`` (read from the signature) lists exactly what it takes."""
    fixed = dict(fixed or {})

    def deco(cls: T) -> T:
        parent_init = cls.__mro__[1].__init__  # type: ignore[misc]
        sig = inspect.signature(parent_init)
        unknown = (set(defaults) | set(fixed)) - set(sig.parameters)
        if unknown:
            raise TypeError(f"{cls.__name__}: parent takes no parameter(s) {sorted(unknown)}")
        params = [
            p.replace(default=defaults[p.name]) if p.name in defaults else p
            for p in sig.parameters.values()
            if p.name not in fixed
        ]
        new_sig = sig.replace(parameters=params)

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            bound = new_sig.bind(self, *args, **kwargs)
            bound.apply_defaults()
            values = {k: v for k, v in bound.arguments.items() if k != "self"}
            parent_init(self, **values, **fixed)

        __init__.__signature__ = new_sig  # type: ignore[attr-defined]
        __init__.__doc__ = parent_init.__doc__
        cls.__init__ = __init__  # type: ignore[misc]
        return cls

    return deco
