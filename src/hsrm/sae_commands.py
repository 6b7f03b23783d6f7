"""One config dataclass and one function per ``hsrm sae`` command:

* ``train_sae(SAETrainConfig)``: a TopK SAE on one layer's activations over offline text, saved in
  SAELens's folder format;
* ``inspect_sae(SAEInspectConfig)``: top-activating tokens of chosen latents, or of a SparseRM
  head's selected latents.

The CLI (``hsrm.cli.sae``) only parses flags into these configs, calls, and prints.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hsrm.config import field
from hsrm.errors import HsrmError
from hsrm.models import ModelConfig


@dataclasses.dataclass
class SAETrainConfig(ModelConfig):
    """``hsrm sae train`` (the model fields are ``ModelConfig``'s: the model whose activations
    the SAE reads)."""

    data: str = field(
        "", "text source: preference JSONL (prompt/chosen/rejected) or TruthfulQA CSV"
    )
    out: str = field("", "output SAE folder (cfg.json + sae_weights.safetensors)")
    layer: int | None = field(
        None,
        "hidden-state index (default: the middle layer; 0 = embeddings, n_layers + 1 = prenorm)",
    )
    latents: int = field(1024, "SAE width d_sae")
    k: int = field(32, "active latents per token (TopK)")
    steps: int = field(1500, "training steps")
    batch_size: int = field(256, "tokens per step")
    lr: float = field(1e-3, "Adam learning rate")
    max_tokens: int = field(200_000, "activation tokens collected at most")
    max_answers: int = field(3, "TruthfulQA: answers of each kind per question")
    seed: int = field(0, "seed")


@dataclasses.dataclass
class SAEInspectConfig(ModelConfig):
    """``hsrm sae inspect`` (the model fields are ``ModelConfig``'s: the model the SAE reads)."""

    sae: str = field("", "SAE folder (SAELens format)")
    data: str = field("", "texts to search: preference JSONL or TruthfulQA CSV")
    latents: str = field("", "comma list of latent indices")
    head: str | None = field(None, "a saved sparserm head: inspect its selected latents instead")
    n_latents: int = field(10, "with --head: this many of each sign")
    layer: int | None = field(None, "hidden-state index (default: the one the SAE's hook names)")
    n_top: int = field(5, "top activations shown per latent")
    max_texts: int = field(300, "texts searched at most")


def _need(cfg: Any, *names: str) -> None:
    for n in names:
        if not getattr(cfg, n):
            raise HsrmError(f"--{n.replace('_', '-')} is required")


def train_sae(cfg: SAETrainConfig, lm: Any = None) -> tuple[Any, dict[str, Any]]:
    """Collect ``cfg.layer``'s token activations over chat-formatted prompt + answer texts of
    ``cfg.data``, train a TopK SAE and save it to ``cfg.out``. Returns (sae, stats); ``stats`` also
    holds ``layer`` and ``n_tokens``."""
    from hsrm.io import check_out
    from hsrm.layer_spec import check_layer_spec, parse_layers
    from hsrm.models import load_model
    from hsrm.prefs.data import load_pairs, pair_texts
    from hsrm.sae import collect_activations, hook_metadata, train_topk_sae

    _need(cfg, "data", "out")
    if cfg.layer is not None:  # -1 would read the last layer and record -1 as the SAE's hook
        check_layer_spec([cfg.layer], "--layer")
    check_out(cfg.out, "sae")  # before any work: refuse an output folder it must not write
    lm = lm or load_model(cfg)
    spec = [cfg.layer] if cfg.layer is not None else "mid"
    (layer,) = parse_layers(spec, lm.fingerprint.n_layers, "--layer")
    texts = pair_texts(
        lm.tokenizer, load_pairs(cfg.data, on_error="warn", max_answers=cfg.max_answers)
    )
    acts = collect_activations(lm, texts, layer, max_tokens=cfg.max_tokens)
    meta = {**hook_metadata(layer, lm.fingerprint.n_layers, cfg.model), "dataset_path": cfg.data}
    sae, stats = train_topk_sae(
        acts,
        d_sae=cfg.latents,
        k=cfg.k,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        meta=meta,
    )
    sae.save(cfg.out)
    return sae, {**stats, "layer": layer, "n_tokens": len(acts)}


def inspect_sae(
    cfg: SAEInspectConfig, lm: Any = None
) -> tuple[list[int], dict[int, float], dict[int, list[dict[str, Any]]]]:
    """(latents, frequency difference of each head-selected latent, top-activating tokens of each
    latent) for ``cfg.latents`` or, with ``cfg.head``, that SparseRM head's selected latents."""
    from hsrm.models import load_model
    from hsrm.prefs.data import load_pairs, pair_texts
    from hsrm.sae import SAE, top_activating_tokens

    _need(cfg, "sae", "data")
    sae = SAE.load(cfg.sae)
    diffs: dict[int, float] = {}
    if cfg.head:
        from hsrm.heads.abilities import LatentSelector
        from hsrm.heads.base import Head

        head = Head.load(cfg.head)
        sel = head.selected_latents() if isinstance(head, LatentSelector) else []
        if not sel:
            raise HsrmError(f"{cfg.head}: not a sparserm head with SAE latents")
        half = len(sel) // 2
        chosen = sel[: cfg.n_latents] + sel[half : half + cfg.n_latents]
        diffs = {int(s["latent"]): s["freq_diff"] for s in chosen}
        latents = list(diffs)
    else:
        try:
            latents = [int(x) for x in cfg.latents.split(",") if x.strip()]
        except ValueError:
            raise HsrmError(
                f"--latents: expected a comma list of integers, got {cfg.latents!r}"
            ) from None
        if not latents:
            raise HsrmError("give --latents 1,2,3 or --head HEAD_DIR")
    bad = [j for j in latents if not 0 <= j < sae.d_sae]
    if bad:
        raise HsrmError(f"latents {bad} out of range 0..{sae.d_sae - 1}")
    lm = lm or load_model(cfg)
    texts = pair_texts(lm.tokenizer, load_pairs(cfg.data, on_error="warn"))[: cfg.max_texts]
    tops = top_activating_tokens(sae, lm, texts, latents, layer=cfg.layer, n_top=cfg.n_top)
    return latents, diffs, tops
