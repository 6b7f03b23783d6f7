"""``hsrm sae train`` (a TopK SAE on one layer, saved in SAELens's format) and ``hsrm sae inspect``
(top-activating tokens of chosen latents, or of a SparseRM head's selected latents)."""

from __future__ import annotations

import argparse
import dataclasses

from hsrm.config import add_arguments, field, from_sources, load_yaml
from hsrm.models import DEFAULT_MODEL


@dataclasses.dataclass
class SAETrainConfig:
    """``hsrm sae train``."""

    data: str = field(
        "", "text source: preference JSONL (prompt/chosen/rejected) or TruthfulQA CSV"
    )
    out: str = field("", "output SAE folder (cfg.json + sae_weights.safetensors)")
    model: str = field(DEFAULT_MODEL, "model whose activations the SAE reads")
    layer: int | None = field(
        None, "hidden-state index (default: the middle layer; 0 = embeddings)"
    )
    latents: int = field(1024, "SAE width d_sae")
    k: int = field(32, "active latents per token (TopK)")
    steps: int = field(1500, "training steps")
    batch_size: int = field(256, "tokens per step")
    lr: float = field(1e-3, "Adam learning rate")
    max_tokens: int = field(200_000, "activation tokens collected at most")
    max_answers: int = field(3, "TruthfulQA: answers of each kind per question")
    seed: int = field(0, "seed")
    threads: int = field(
        0, "torch CPU threads (0 = torch's default; 1 is fastest on a busy machine)"
    )


@dataclasses.dataclass
class SAEInspectConfig:
    """``hsrm sae inspect``."""

    sae: str = field("", "SAE folder (SAELens format)")
    data: str = field("", "texts to search: preference JSONL or TruthfulQA CSV")
    model: str = field(DEFAULT_MODEL, "model the SAE reads")
    latents: str = field("", "comma list of latent indices")
    head: str | None = field(None, "a saved sparserm head: inspect its selected latents instead")
    n_latents: int = field(10, "with --head: this many of each sign")
    layer: int | None = field(None, "hidden-state index (default: the SAE's hook_layer)")
    n_top: int = field(5, "top activations shown per latent")
    max_texts: int = field(300, "texts searched at most")
    threads: int = field(0, "torch CPU threads (0 = torch's default)")


def _threads(n: int) -> None:
    if n > 0:
        import torch

        torch.set_num_threads(n)


def _need(cfg, *names: str) -> None:
    from hsrm.errors import HsrmError

    for n in names:
        if not getattr(cfg, n):
            raise HsrmError(f"--{n.replace('_', '-')} is required")


def _cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hsrm.models import load_model
    from hsrm.prefs.data import load_pairs, pair_texts
    from hsrm.sae import collect_activations, train_topk_sae

    cfg = from_sources(SAETrainConfig, load_yaml(args.config, "sae_train"), args)
    _need(cfg, "data", "out")
    _threads(cfg.threads)
    lm = load_model(cfg.model)
    layer = cfg.layer if cfg.layer is not None else lm.fingerprint.n_layers // 2
    texts = pair_texts(
        lm.tokenizer, load_pairs(cfg.data, on_error="warn", max_answers=cfg.max_answers)
    )
    acts = collect_activations(lm, texts, layer, max_tokens=cfg.max_tokens)
    meta = {
        "model_name": cfg.model,
        "hook_name": f"hidden_states.{layer}",
        "hook_layer": layer,
        "dataset_path": cfg.data,
    }
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
    Console().print(
        f"SAE layer {layer}, {cfg.latents} latents, k={cfg.k}, {len(acts)} tokens: "
        f"fraction of variance explained {stats['fve']:.3f}, dead latents {100 * stats['dead_share']:.1f} % -> {cfg.out}"
    )
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from hsrm.errors import HsrmError
    from hsrm.models import load_model
    from hsrm.prefs.data import load_pairs, pair_texts
    from hsrm.sae import SAE, top_activating_tokens

    cfg = from_sources(SAEInspectConfig, load_yaml(args.config, "sae_inspect"), args)
    _need(cfg, "sae", "data")
    _threads(cfg.threads)
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
    lm = load_model(cfg.model)
    texts = pair_texts(lm.tokenizer, load_pairs(cfg.data, on_error="warn"))[: cfg.max_texts]
    tops = top_activating_tokens(sae, lm, texts, latents, layer=cfg.layer, n_top=cfg.n_top)
    table = Table("latent", "freq diff", "top-activating tokens (context -> token: activation)")
    for j in latents:
        cells = (
            "\n".join(
                f"...{t['context'][-40:]!r} -> {t['token']!r}: {t['activation']:.2f}"
                for t in tops[j]
            )
            or "(never fires)"
        )
        table.add_row(str(j), f"{diffs[j]:+.3f}" if j in diffs else "", cells)
    Console().print(table)
    return 0


def register(sub, groups) -> None:
    sae = groups["sae"]
    p = sae.add_parser(
        "train",
        help="train a TopK SAE on one layer's activations over offline text (SAELens folder format)",
        description="Collect one layer's token activations of the model over chat-formatted prompt + answer "
        "texts, train a TopK SAE, and save it as cfg.json + sae_weights.safetensors (SAELens's format).",
    )
    p.add_argument("--config", help="YAML config (section sae_train)")
    add_arguments(p, SAETrainConfig)
    p.set_defaults(func=_cmd_train)
    p = sae.add_parser(
        "inspect",
        help="top-activating tokens of SAE latents (or of a sparserm head's selected latents)",
        description="Show, for each latent, the tokens (with context) where it activates most.",
    )
    p.add_argument("--config", help="YAML config (section sae_inspect)")
    add_arguments(p, SAEInspectConfig)
    p.set_defaults(func=_cmd_inspect)
