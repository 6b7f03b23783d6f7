"""A model's fingerprint without loading its weights, so the Ray driver can check a run against an
existing store before any worker starts (an 8B model's weights never touch the driver's memory)."""

from __future__ import annotations

from typing import Any

import torch

from hsrm.errors import HsrmError
from hsrm.models import ModelFingerprint, fingerprint_of, load_model, resolve


def model_fingerprint(name: str) -> ModelFingerprint:
    """The fingerprint ``load_model(name)`` gives, built on the meta device from the config alone.

    Unknown names fail with the same message as ``load_model``; each worker checks that the model it
    loads has exactly this fingerprint."""
    if name.startswith("tiny:"):  # random tiny test models: building one is cheaper than a config
        return load_model(name).fingerprint
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, gguf, revision = resolve(name)
    kw: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    try:
        config = AutoConfig.from_pretrained(folder, **kw)
    except OSError as e:
        raise HsrmError(f"could not load model {name!r}: {e}") from e
    with torch.device("meta"):  # shapes only: no memory, no weights read
        model = AutoModelForCausalLM.from_config(config)
    if revision == "hub":
        revision = str(getattr(config, "_commit_hash", None) or "hub")
    return fingerprint_of(model, name, revision)
