"""The one layer vocabulary: what ``--layers`` (``hsrm sample``, ``hsrm train``, ``hsrm detect
capture``), ``--head-layers`` (``hsrm demo``), a head's ``default_layers`` and its ``layers``
hyperparameter accept.

Hidden-state indices follow the Hugging Face convention: 0 is the embedding output, ``n_layers``
the last block's output after the final norm, and ``n_layers + 1`` the pseudo-layer ``prenorm``
(the last block's output before the final norm). A spec is one term or a comma list of terms:

* ``all`` (0..n_layers), ``last`` (n_layers), ``mid`` (n_layers // 2);
* ``every:K``: 0, K, 2K, ... and the last;
* ``top:K``: the last K hidden states (``top:11`` on a 30-layer model = 20..30; all of them when
  K exceeds the model's, so a head's default fits a small model too);
* ``A-B``: A to B inclusive; ``7``: one index;
* ``prenorm``.

Negative indices are refused: ``-1`` read as "the last" (Python's meaning) stored layer 30 while
``--layers=-1`` looked like a typo of something else; ``last`` and ``top:K`` say it by name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from hsrm.errors import HsrmError
from hsrm.lm import prenorm_index

VOCABULARY = "all, last, mid, every:K, top:K, A-B, 0,4,8 or prenorm (comma lists mix them)"
_NAMED = ("all", "last", "mid", "prenorm")
_TERM = re.compile(r"^(?:(every|top):(\d+)|(\d+)-(\d+)|(\d+))$")


def _fail(name: str, spec: object, why: str) -> HsrmError:
    return HsrmError(f"{name} {spec!r}: {why}")


def _terms(spec: str, name: str) -> list[str]:
    """The spec's terms, each checked for its form (nothing about the model yet)."""
    terms = [t.strip().lower() for t in spec.split(",")]
    if not spec.strip() or any(not t for t in terms):
        raise _fail(name, spec, f"empty layer term; use {VOCABULARY}")
    for t in terms:
        if t.startswith("-") and t[1:].isdigit():
            raise _fail(
                name,
                spec,
                f"negative layer index {t}; layers are hidden-state indices from 0 (the "
                "embeddings); name the last ones with last or top:K",
            )
        if t in _NAMED:
            continue
        m = _TERM.match(t)
        if m is None:
            raise _fail(name, spec, f"cannot parse {t!r}; use {VOCABULARY}")
        if m.group(1) and int(m.group(2)) < 1:
            raise _fail(name, spec, f"{m.group(1)}:K needs an integer K >= 1, got {t!r}")
        if m.group(3) and int(m.group(3)) > int(m.group(4)):
            raise _fail(name, spec, f"range {t!r} runs backwards (A-B needs A <= B)")
    return terms


def check_layer_spec(spec: str | Sequence[int], name: str = "--layers") -> None:
    """Refuse a spec whose *form* is wrong (before the model or store that resolves it exists)."""
    if isinstance(spec, str):
        _terms(spec, name)
    else:
        _ints(spec, name)


def _ints(spec: Sequence[int], name: str) -> list[int]:
    if isinstance(spec, str | bytes) or not all(
        hasattr(i, "__index__") and not isinstance(i, bool) for i in spec
    ):
        raise _fail(name, spec, "expected a layer spec or a list of integers")
    out = [int(i) for i in spec]
    neg = [i for i in out if i < 0]
    if neg:
        raise _fail(
            name, spec, f"negative layer index {neg[0]}; layers are hidden-state indices from 0"
        )
    return out


def _term_indices(t: str, n_layers: int) -> list[int]:
    total = n_layers + 1
    if t == "all":
        return list(range(total))
    if t == "last":
        return [n_layers]
    if t == "mid":
        return [n_layers // 2]
    if t == "prenorm":
        return [prenorm_index(n_layers)]
    m = _TERM.match(t)
    assert m is not None  # _terms checked the form
    if m.group(1) == "every":
        idx = list(range(0, total, int(m.group(2))))
        return idx if idx[-1] == n_layers else [*idx, n_layers]
    if m.group(1) == "top":
        return list(range(max(0, total - int(m.group(2))), total))
    if m.group(3):
        return list(range(int(m.group(3)), int(m.group(4)) + 1))
    return [int(m.group(5))]


def parse_layers(
    spec: str | Sequence[int], n_layers: int, name: str = "--layers"
) -> tuple[int, ...]:
    """The hidden-state indices ``spec`` names on a model with ``n_layers`` blocks, in the order
    given, each once (``prenorm`` last). ``name``: the flag or field the spec came from, for the
    message of the ``HsrmError`` a bad spec raises."""
    total = n_layers + 1
    pre = prenorm_index(n_layers)
    if isinstance(spec, str):
        idx = [i for t in _terms(spec, name) for i in _term_indices(t, n_layers)]
    else:
        idx = _ints(spec, name)
    out: list[int] = []
    for i in idx:
        if i != pre and i >= total:
            raise _fail(
                name,
                spec,
                f"index {i} out of range for a model with {n_layers} layers (0..{n_layers}, "
                f"{pre} = prenorm)",
            )
        if i not in out:
            out.append(i)
    if pre in out:  # the pseudo-layer goes last, where capture appends it
        out = [i for i in out if i != pre] + [pre]
    if not out:
        raise _fail(name, spec, "selects no layer")
    return tuple(out)


def layer_positions(
    spec: str | Sequence[int], store_layers: Sequence[int], n_layers: int, name: str = "layers"
) -> list[int]:
    """Positions in ``store_layers`` (the captured layers) of the layers ``spec`` names; all of them
    when the spec names none that was captured (a head's default on a store captured sparsely)."""
    want = set(parse_layers(spec, n_layers, name))
    pos = [j for j, lay in enumerate(store_layers) if lay in want]
    return pos or list(range(len(store_layers)))


__all__ = ["VOCABULARY", "check_layer_spec", "layer_positions", "parse_layers", "prenorm_index"]
