"""The head contract, shared by every method.

A head is a small model over ``TokenFeatures``:

* ``__init__`` stores hyperparameters only; learned state is set by ``fit`` in attributes ending in ``_``;
* ``fit(X, y, groups=None) -> self``: ``y`` is 1 for correct / preferred, 0 otherwise; ``groups``
  names the prompt (or preference pair) of each answer, for validation splits and pairwise losses;
* ``score(X) -> np.ndarray`` of shape (n,), higher is better;
* ``save(dir)`` / ``load(dir)``: ``head.safetensors`` + ``config.json`` with ``architecture``,
  ``format_version``, the hyperparameters, and the fingerprint and layers of the model it was fit on.
  ``load`` followed by ``check_compatible`` refuses features from another model or layer set.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save

from hsrm.errors import HsrmError
from hsrm.features import TokenFeatures
from hsrm.io import atomic_dir, atomic_write_json
from hsrm.models import ModelFingerprint
from hsrm.splits import split_groups  # noqa: F401  (re-exported: the one splitter)

HEAD_FORMAT_VERSION = 1
REGISTRY: dict[str, type[Head]] = {}


def register(name: str):
    """Class decorator: make a head available by ``name`` (CLI ``--head NAME``)."""

    def deco(cls: type[Head]) -> type[Head]:
        cls.architecture = name
        REGISTRY[name] = cls
        return cls

    return deco


def get_head_class(name: str) -> type[Head]:
    import hsrm.heads  # noqa: F401  (registers the built-in heads)

    if name not in REGISTRY:
        raise HsrmError(f"unknown head {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def make_head(name: str, **params: Any) -> Head:
    cls = get_head_class(name)
    valid = cls.param_names()
    bad = [k for k in params if k not in valid]
    if bad:
        raise HsrmError(f"head {name!r} has no parameter(s) {bad}; it takes {sorted(valid)}")
    return cls(**params)


class Head:
    """Base class. Subclasses implement ``_fit``, ``_score``, ``_state`` and ``_set_state``."""

    architecture: ClassVar[str] = "base"
    #: Whether fit needs ``groups`` (pairwise / within-prompt losses).
    needs_groups: ClassVar[bool] = False

    # -- hyperparameters (sklearn style) -------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.param_names()}

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({ps})"

    # -- the contract ---------------------------------------------------------------------------
    def fit(self, X: TokenFeatures, y: np.ndarray, groups: np.ndarray | None = None) -> Head:
        y = np.asarray(y)
        if len(y) != len(X):
            raise HsrmError(f"fit: {len(X)} feature rows but {len(y)} labels")
        if groups is not None and len(groups) != len(X):
            raise HsrmError(f"fit: {len(X)} feature rows but {len(groups)} groups")
        if self.needs_groups and groups is None:
            raise HsrmError(f"{self.architecture} needs groups (prompt or pair ids) to fit")
        if len(np.unique(y)) < 2:
            raise HsrmError(
                "fit: labels hold a single class; need both correct and incorrect answers"
            )
        self.fingerprint_ = X.fingerprint
        self.layers_ = tuple(X.layers)
        self._fit(X, y.astype(np.float32), None if groups is None else np.asarray(groups))
        return self

    def score(self, X: TokenFeatures) -> np.ndarray:
        self._check_fitted()
        self.check_compatible(X.fingerprint, X.layers)
        if len(X) == 0:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(self._score(X), dtype=np.float64)

    def required_layers(self) -> tuple[int, ...]:
        """Layers the fitted head reads (a subset of those it was fit on)."""
        self._check_fitted()
        return self.layers_

    def check_compatible(self, fp: ModelFingerprint, layers: tuple[int, ...] | list[int]) -> None:
        mine = self.fingerprint_
        if not mine.compatible(fp):
            raise HsrmError(
                f"head was trained on {mine.short()} but the features come from {fp.short()}"
            )
        missing = [lay for lay in self.required_layers() if lay not in tuple(layers)]
        if missing:
            raise HsrmError(
                f"head reads layers {list(self.required_layers())} but the features hold layers "
                f"{list(layers)} (missing {missing})"
            )

    def _check_fitted(self) -> None:
        if not hasattr(self, "fingerprint_"):
            raise HsrmError(f"{type(self).__name__} is not fitted; call fit() or load() first")

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        self._check_fitted()
        path = Path(path)
        tensors, extra = self._state()
        with atomic_dir(path) as tmp:
            (tmp / "head.safetensors").write_bytes(
                save({k: v.contiguous() for k, v in tensors.items()})
            )
            atomic_write_json(
                tmp / "config.json",
                {
                    "architecture": self.architecture,
                    "format_version": HEAD_FORMAT_VERSION,
                    "params": _jsonable(self.get_params()),
                    "fingerprint": self.fingerprint_.to_dict(),
                    "layers": list(self.layers_),
                    "state": _jsonable(extra),
                },
            )
        return path

    @staticmethod
    def load(path: str | Path) -> Head:
        path = Path(path)
        cfg_path = path / "config.json"
        if not cfg_path.exists():
            raise HsrmError(f"{path}: not a saved head (no config.json)")
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise HsrmError(f"{cfg_path}:{e.lineno}: malformed JSON ({e.msg})") from None
        for key in ("architecture", "format_version", "params", "fingerprint", "layers"):
            if key not in cfg:
                raise HsrmError(f"{cfg_path}: missing field {key!r}")
        if cfg["format_version"] != HEAD_FORMAT_VERSION:
            raise HsrmError(
                f"{cfg_path}: format_version {cfg['format_version']} is not supported "
                f"(this hsrm reads {HEAD_FORMAT_VERSION})"
            )
        cls = get_head_class(cfg["architecture"])
        head = cls(**cfg["params"])
        head.fingerprint_ = ModelFingerprint.from_dict(cfg["fingerprint"])
        head.layers_ = tuple(cfg["layers"])
        tensors = load_file(str(path / "head.safetensors"))
        head._set_state(tensors, cfg.get("state") or {})
        return head

    # -- for subclasses ------------------------------------------------------------------------
    def _fit(self, X: TokenFeatures, y: np.ndarray, groups: np.ndarray | None) -> None:
        raise NotImplementedError

    def _score(self, X: TokenFeatures) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        raise NotImplementedError

    def _set_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        raise NotImplementedError

    def n_parameters(self) -> int:
        """Trainable parameters, one meaning for every head: those of the fitted torch network
        ``net_`` when the head has one (not its buffers, fixed projections or standardisation
        statistics); other heads override it (``probe``: weights + bias)."""
        self._check_fitted()
        net = getattr(self, "net_", None)
        if isinstance(net, torch.nn.Module):
            return int(sum(p.numel() for p in net.parameters()))
        tensors, _ = self._state()
        return int(sum(t.numel() for t in tensors.values()))


def _jsonable(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, list | tuple):
        return [_jsonable(v) for v in d]
    if isinstance(d, np.generic):
        return d.item()
    return d
