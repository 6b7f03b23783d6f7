"""The head contract, shared by every method.

A head is a small model over ``TokenFeatures``:

* ``__init__`` stores hyperparameters only; learned state is set by ``fit`` in attributes ending in ``_``;
* ``fit(X, y, groups=None) -> self``: ``y`` is 1 for correct / preferred, 0 otherwise; ``groups``
  names the prompt (or preference pair) of each answer, for validation splits and pairwise losses;
* ``score(X) -> np.ndarray`` of shape (n,), higher is better;
* ``save(dir)`` / ``load(dir)``: ``config.json`` with ``architecture``, ``format_version``, the
  hyperparameters, and the fingerprint and layers of the model it was fit on, ``model.safetensors``
  (older folders: ``head.safetensors``) and a ``README.md`` model card: a Hugging Face Hub model
  folder (``hsrm.heads.hub``; ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``).
  ``load`` followed by ``check_compatible`` refuses features from another model or layer set.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save

from hsrm.errors import HsrmError
from hsrm.features import LOGITS_LAYER, TOPK_LAYER, TokenFeatures
from hsrm.heads.hub import (
    EVALUATION_FILE,
    TRAINING_FILE,
    WEIGHTS_FILE,
    push_folder,
    resolve,
    weights_path,
    write_model_card,
)
from hsrm.heads.registry import REGISTRY
from hsrm.io import atomic_dir, atomic_write_bytes, atomic_write_json, read_json
from hsrm.models import ModelFingerprint
from hsrm.splits import split_groups  # noqa: F401  (re-exported: the one splitter)

HEAD_FORMAT_VERSION = 1


def register(name: str):
    """Class decorator: make a head available by ``name`` (``hsrm train --head-type NAME``), after
    checking what the class declares about itself (``Head``'s capability attributes). A name is
    registered once: a second class under it is refused (``unregister`` first to replace it)."""

    def deco(cls: type[Head]) -> type[Head]:
        if not (isinstance(name, str) and name.isidentifier()):
            raise HsrmError(f"head name {name!r}: must be an identifier (letters, digits, _)")
        old = REGISTRY.get(name)
        # the same class, or its module run again (importlib.reload, a notebook's autoreload)
        same = old is not None and (old.__module__, old.__qualname__) == (
            cls.__module__,
            cls.__qualname__,
        )
        if old is not None and not same:
            raise HsrmError(
                f"head name {name!r} is already registered by {old.__module__}.{old.__qualname__}; "
                f"cannot register {cls.__module__}.{cls.__qualname__} under it"
            )
        cls.architecture = name
        _check_capabilities(cls)
        REGISTRY[name] = cls
        return cls

    return deco


def unregister(name: str) -> None:
    """Remove a registered head (tests that register a toy head undo it with this)."""
    REGISTRY.pop(name, None)


def _check_capabilities(cls: type[Head]) -> None:
    """Refuse a head class whose capability attributes have the wrong type or form, naming the
    class and attribute: checked once, when it registers, so no command meets a broken one."""
    from hsrm.layer_spec import check_layer_spec

    where = f"head {cls.architecture!r} ({cls.__qualname__})"
    for attr, tp in (("needs_groups", bool), ("calibrated", bool), ("token_view", bool)):
        if not isinstance(getattr(cls, attr), tp):
            raise HsrmError(f"{where}: {attr} must be True or False, got {getattr(cls, attr)!r}")
    order = cls.display_order
    if not isinstance(order, int) or isinstance(order, bool):
        raise HsrmError(f"{where}: display_order must be an integer, got {order!r}")
    if not isinstance(cls.label, str):
        raise HsrmError(f"{where}: label must be a string, got {cls.label!r}")
    if cls.default_layers is not None:
        if not isinstance(cls.default_layers, str):
            raise HsrmError(
                f"{where}: default_layers must be a layer spec string or None, "
                f"got {cls.default_layers!r}"
            )
        check_layer_spec(cls.default_layers, f"{where}: default_layers")
        if not {"layers", "layer"} & set(cls.param_names()):
            raise HsrmError(
                f"{where}: default_layers is set but the head takes no 'layers' or 'layer' "
                "parameter to receive them"
            )
    if cls.token_view and not callable(getattr(cls, "token_contributions", None)):
        raise HsrmError(f"{where}: token_view needs a token_contributions(X) method")


def get_head_class(name: str) -> type[Head]:
    # No import of hsrm.heads here: this module is only ever loaded through that package, which
    # registers every built-in head first (heads/registry.py).
    if name not in REGISTRY:
        raise HsrmError(f"unknown head {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def make_head(head_type: str | type[Head], **params: Any) -> Head:
    """A head of ``head_type`` (a registered name, or the class ``get_head_class`` gave) with
    ``params``: the one place a head type is looked up and its parameters checked (names and
    types) before any data is read."""
    cls = head_type if isinstance(head_type, type) else get_head_class(head_type)
    cls.check_params(params, f"head {cls.architecture!r}")
    return cls(**params)


class Head:
    """Base class. Subclasses implement ``_fit``, ``_score``, ``_state`` and ``_set_state``."""

    architecture: ClassVar[str] = "base"
    # -- capabilities: what commands and reports need to know about a head type, declared here
    # once (checked by ``register``) instead of special-cased by name in each of them.
    #: Whether fit needs ``groups`` (pairwise / within-prompt losses).
    needs_groups: ClassVar[bool] = False
    #: The layers ``hsrm train`` fits the head on when ``--layers`` is not given (a spec of
    #: ``hsrm.layer_spec``), passed as its ``layers`` (or, for one layer, ``layer``) parameter;
    #: None: the head reads the layers the features hold and picks among them itself.
    default_layers: ClassVar[str | None] = None
    #: Whether sigmoid(score) is meant as P(correct) (a logistic loss): reports draw its
    #: reliability diagram.
    calibrated: ClassVar[bool] = False
    #: Whether the head explains a score per token (``token_contributions``): the report's token
    #: view shows it.
    token_view: ClassVar[bool] = False
    #: Where the head sorts among heads in reports' tables and plots (lower first), and its name
    #: in plot legends (the architecture when empty).
    display_order: ClassVar[int] = 100
    label: ClassVar[str] = ""
    #: The folder ``from_pretrained`` read (its training.json / evaluation.json travel on).
    _source_dir: Path | None = None
    #: The folder ``load`` read: messages about a loaded head name it.
    _loaded_from: Path | None = None

    # -- hyperparameters (sklearn style) -------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    @classmethod
    def check_params(cls, params: dict[str, Any], where: str | Path) -> None:
        """Refuse unknown hyperparameter names and values whose type does not fit, naming
        ``where`` (a head, a file)."""
        valid = cls.param_names()
        bad = sorted(k for k in params if k not in valid)
        if bad:
            raise HsrmError(f"{where} has no parameter(s) {bad}; it takes {sorted(valid)}")
        _check_param_types(cls, params, where)

    @classmethod
    def layer_params(cls, layers: tuple[int, ...]) -> dict[str, Any]:
        """The hyperparameters that make the head read ``layers``: ``layers`` for heads that
        take several, ``layer`` for one-layer heads when one is given; nothing otherwise."""
        names = cls.param_names()
        if "layers" in names:
            return {"layers": list(layers)}
        if "layer" in names and len(layers) == 1:
            return {"layer": layers[0]}
        return {}

    @classmethod
    def model_params(cls, params: dict[str, Any], fingerprint: ModelFingerprint) -> dict[str, Any]:
        """``params`` completed with what the head needs from the model before it fits (HARP: the
        unembedding SVD's file), computed once and cached; most heads need nothing."""
        return params

    @classmethod
    def display_label(cls) -> str:
        return cls.label or cls.architecture

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
        # a loaded head names its folder: with several heads, which one does not fit
        where = f"{self._loaded_from}: " if self._loaded_from is not None else ""
        if not mine.compatible(fp):
            raise HsrmError(
                f"{where}head was trained on {mine.short()} but the features come from {fp.short()}"
            )
        missing = [lay for lay in self.required_layers() if lay not in tuple(layers)]
        if missing:
            raise HsrmError(
                f"{where}head reads layers {list(self.required_layers())} but the features hold "
                f"layers {list(layers)} (missing {missing})"
            )

    def _check_fitted(self) -> None:
        if not hasattr(self, "fingerprint_"):
            raise HsrmError(f"{type(self).__name__} is not fitted; call fit() or load() first")

    # -- persistence ---------------------------------------------------------------------------
    def save(
        self,
        path: str | Path,
        *,
        overwrite: bool = False,
        inputs: tuple[str | Path, ...] = (),
        records: dict[str, Any] | None = None,
    ) -> Path:
        """Write the head folder; it appears complete, in one rename (``hsrm.io.atomic_dir``).

        ``records``: extra JSON files written inside it before it appears (``training.json``).
        ``overwrite``/``inputs``: see ``hsrm.io.check_out``."""
        self._check_fitted()
        path = Path(path)
        tensors, extra = self._state()
        # A diverged fit (NaN/inf weights) would score every answer NaN wherever it is used.
        nan = _non_finite(tensors)
        if nan:
            raise HsrmError(
                f"{path}: not saved: the fitted {self.architecture} head's weights are not finite "
                f"({nan}); the fit diverged (lower the learning rate, or standardise the features)"
            )
        try:
            self._write(path, tensors, extra, overwrite, inputs, records)
        except OSError as e:
            # The temporary folder it was built in is gone; name the head the user asked for.
            raise OSError(e.errno, e.strerror, str(path)) from e
        return path

    def _write(
        self,
        path: Path,
        tensors: dict[str, torch.Tensor],
        extra: dict[str, Any],
        overwrite: bool,
        inputs: tuple[str | Path, ...],
        records: dict[str, Any] | None,
    ) -> None:
        with atomic_dir(path, "head", overwrite=overwrite, inputs=inputs) as tmp:
            for name, obj in (records or {}).items():
                atomic_write_json(tmp / name, obj)
            (tmp / WEIGHTS_FILE).write_bytes(save({k: v.contiguous() for k, v in tensors.items()}))
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
            write_model_card(tmp)  # after training.json / evaluation.json, when written here

    @staticmethod
    def load(path: str | Path) -> Head:
        """Load a head folder; anything missing, damaged or mistyped -> HsrmError naming the file
        and field."""
        path = Path(path)
        cfg_path = path / "config.json"
        if not cfg_path.exists():
            raise HsrmError(f"{path}: not a saved head (no config.json)")
        cfg = read_json(cfg_path, "head config")
        if not isinstance(cfg, dict):
            raise HsrmError(f"{cfg_path}: expected a JSON object")
        for key in ("architecture", "format_version", "params", "fingerprint", "layers"):
            if key not in cfg:
                raise HsrmError(f"{cfg_path}: missing field {key!r}")
        if cfg["format_version"] != HEAD_FORMAT_VERSION:
            raise HsrmError(
                f"{cfg_path}: format_version {cfg['format_version']!r} is not supported "
                f"(this hsrm reads {HEAD_FORMAT_VERSION!r})"
            )
        if not isinstance(cfg["architecture"], str):
            raise HsrmError(f"{cfg_path}: field 'architecture' must be a string")
        cls = get_head_class(cfg["architecture"])
        params = cfg["params"]
        if not isinstance(params, dict):
            raise HsrmError(
                f"{cfg_path}: field 'params' must be an object, got {type(params).__name__}"
            )
        bad = sorted(set(params) - set(cls.param_names()))
        if bad:
            raise HsrmError(
                f"{cfg_path}: field 'params' has unknown key(s) {bad}; {cfg['architecture']} "
                f"takes {sorted(cls.param_names())}"
            )
        _check_param_types(cls, params, cfg_path)
        layers = cfg["layers"]
        if not isinstance(layers, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in layers
        ):
            raise HsrmError(
                f"{cfg_path}: field 'layers' must be a list of integers, got {layers!r}"
            )
        try:
            fp = ModelFingerprint.from_dict(cfg["fingerprint"])
        except (TypeError, KeyError, AttributeError, ValueError) as e:
            raise HsrmError(f"{cfg_path}: field 'fingerprint' is malformed ({e})") from None
        try:
            head = cls(**params)
        except (TypeError, ValueError, HsrmError) as e:
            raise HsrmError(f"{cfg_path}: field 'params' is invalid ({e})") from None
        # hidden-state indices run 0 (embeddings) .. n_layers, n_layers + 1 being prenorm; out of
        # range, the weights would be blamed for a size mismatch instead; the log-prob heads read
        # the pseudo layers LOGITS_LAYER / TOPK_LAYER (features.py), no hidden state
        top = fp.n_layers + 1
        out = [v for v in layers if not 0 <= v <= top and v not in (LOGITS_LAYER, TOPK_LAYER)]
        if out:
            raise HsrmError(
                f"{cfg_path}: field 'layers' holds {out}, out of range for {fp.short()} (hidden "
                f"states 0..{top})"
            )
        head.fingerprint_ = fp
        head.layers_ = tuple(layers)
        head._loaded_from = path
        st = weights_path(path)
        if not st.exists():
            raise HsrmError(f"{st}: missing (the head folder is incomplete)")
        try:
            tensors = load_file(str(st))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise HsrmError(f"{st}: damaged or truncated safetensors file ({e})") from None
        nan = _non_finite(tensors)
        if nan:
            raise HsrmError(f"{st}: weights are not finite ({nan}); retrain the head")
        try:
            head._set_state(tensors, cfg.get("state") or {})
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise HsrmError(
                f"{st}: does not match {cfg_path} (state {type(e).__name__}: {e})"
            ) from None
        return head

    # -- Hugging Face Hub ----------------------------------------------------------------------
    def save_pretrained(
        self, path: str | Path, evaluation: dict[str, Any] | str | Path | None = None
    ) -> Path:
        """``save`` (config.json + model.safetensors + README.md model card); ``evaluation``: an
        hsrm results.json (path or dict), saved beside as evaluation.json and tabled in the card."""
        path = self.save(path)
        src = getattr(self, "_source_dir", None)  # loaded from a folder: keep its records
        if src is not None and Path(src).resolve() != path.resolve():
            for name in (TRAINING_FILE, EVALUATION_FILE):
                if (Path(src) / name).is_file() and not (path / name).exists():
                    atomic_write_bytes(path / name, (Path(src) / name).read_bytes())
        write_model_card(path, evaluation)
        return path

    @staticmethod
    def from_pretrained(
        folder_or_repo_id: str | Path, revision: str | None = None, **download: Any
    ) -> Head:
        """Load a head folder, or a Hub repository (``huggingface_hub.snapshot_download``;
        ``download``: its keyword arguments, e.g. ``cache_dir``, ``token``)."""
        folder = resolve(folder_or_repo_id, revision, **download)
        head = Head.load(folder)
        head._source_dir = folder
        return head

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload hsrm head",
        evaluation: dict[str, Any] | str | Path | None = None,
    ) -> str:
        """Upload the head as a Hub model repository (created if missing): config.json,
        model.safetensors, README.md, and training.json / evaluation.json when known. Returns the
        commit URL."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="hsrm-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "head", evaluation)
            return push_folder(
                folder, repo_id, private=private, token=token, commit_message=commit_message
            )

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


def _non_finite(tensors: dict[str, torch.Tensor]) -> str:
    """ "tensor 'w': 12 of 64 values NaN or infinite" for the first such float tensor, else ""."""
    for name, t in sorted(tensors.items()):
        if t.is_floating_point():
            n_bad = int((~torch.isfinite(t)).sum())
            if n_bad:
                return f"tensor {name!r}: {n_bad} of {t.numel()} values NaN or infinite"
    return ""


def _check_param_types(cls: type[Head], params: dict[str, Any], where: str | Path) -> None:
    """Refuse a saved hyperparameter whose JSON type does not fit the constructor's annotation
    (e.g. ``"layers": "0,4"`` or a string for a number), naming the file and field."""
    from hsrm.config import conforms, type_name

    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that cannot be resolved: check nothing rather than guess
        return
    for k, v in params.items():
        tp = hints.get(k)
        if tp is None or v is None:
            continue
        # JSON has no tuples; lists stand for them.
        if not conforms(v, tp):
            raise HsrmError(f"{where}: field 'params.{k}' must be {type_name(tp)}, got {v!r}")


def _jsonable(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, list | tuple):
        return [_jsonable(v) for v in d]
    if isinstance(d, np.generic):
        return d.item()
    return d
