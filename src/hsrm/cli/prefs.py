"""``hsrm prefs train`` (a pairwise reward head, e.g. SparseRM, on preference pairs) and
``hsrm prefs evaluate`` (pairwise accuracy of a saved head on pairs, with a CI over questions)."""

from __future__ import annotations

import argparse
import dataclasses
import json

from hsrm.config import add_arguments, field, from_sources, load_yaml
from hsrm.io import check_out
from hsrm.models import DEFAULT_MODEL


@dataclasses.dataclass
class PrefsTrainConfig:
    """``hsrm prefs train``."""

    pairs: str = field(
        "", "preference JSONL (prompt/chosen/rejected, optional id/group) or TruthfulQA CSV"
    )
    out: str = field("", "output head folder")
    head: str = field("sparserm", "head: sparserm, denserm, elhsr, probe, ...")
    sae: str | None = field(
        None, "SAE folder (SAELens format) for sparserm (default: the head trains a small one)"
    )
    layer: int | None = field(
        None, "hidden-state index (default: the SAE's hook layer, else the middle layer)"
    )
    params: str = field(
        "{}", 'extra head parameters as JSON, e.g. \'{"pool": "last", "loss": "bt"}\''
    )
    model: str = field(DEFAULT_MODEL, "model whose hidden states the head reads")
    split: str = field(
        "all", "train on: all pairs, or 'train' (the train side of a split by question)"
    )
    test_frac: float = field(0.2, "with --split train: share of questions held out")
    seed: int = field(0, "split seed")
    max_answers: int = field(3, "TruthfulQA: answers of each kind per question")
    cache: str | None = field(None, "feature cache file (.safetensors): written once, reused after")
    on_error: str = field("error", "bad JSONL lines: error, or warn (drop and count)")
    threads: int = field(
        0, "torch CPU threads (0 = torch's default; 1 is fastest on a busy machine)"
    )


@dataclasses.dataclass
class PrefsEvalConfig:
    """``hsrm prefs evaluate``."""

    head: str = field("", "saved head folder")
    pairs: str = field("", "preference JSONL or TruthfulQA CSV")
    model: str = field(DEFAULT_MODEL, "model (must match the head's fingerprint)")
    split: str = field(
        "all", "evaluate on: all pairs, or 'test' (the held-out side of a split by question)"
    )
    test_frac: float = field(
        0.2, "with --split test: share of questions held out (same as in training)"
    )
    seed: int = field(0, "split seed (same as in training)")
    max_answers: int = field(3, "TruthfulQA: answers of each kind per question")
    cache: str | None = field(None, "feature cache file (.safetensors)")
    n_boot: int = field(1000, "bootstrap resamples (over questions)")
    out: str | None = field(None, "write the result as JSON here")
    on_error: str = field("error", "bad JSONL lines: error, or warn (drop and count)")
    threads: int = field(0, "torch CPU threads (0 = torch's default)")


def _threads(n: int) -> None:
    if n > 0:
        import torch

        torch.set_num_threads(n)


def _pairs(cfg, side: str):
    from hsrm.errors import HsrmError
    from hsrm.prefs.data import load_pairs, split_by_group

    pairs = load_pairs(cfg.pairs, on_error=cfg.on_error, max_answers=cfg.max_answers, seed=cfg.seed)
    if cfg.split == "all":
        return pairs
    if cfg.split != side:
        raise HsrmError(f"--split must be 'all' or '{side}', got {cfg.split!r}")
    train, test = split_by_group(pairs, cfg.test_frac, cfg.seed)
    return train if side == "train" else test


def _cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hsrm.errors import HsrmError
    from hsrm.heads import make_head
    from hsrm.models import load_model
    from hsrm.prefs.evaluate import encode_pairs, fit_head_on_pairs

    cfg = from_sources(PrefsTrainConfig, load_yaml(args.config, "prefs_train"), args)
    for n in ("pairs", "out"):
        if not getattr(cfg, n):
            raise HsrmError(f"--{n} is required")
    check_out(cfg.out, "head", inputs=[cfg.pairs])  # before any work
    try:
        params = json.loads(cfg.params)
    except json.JSONDecodeError as e:
        raise HsrmError(f"--params: malformed JSON ({e.msg})") from None
    if cfg.head in ("sparserm", "denserm"):
        params.setdefault("sae", cfg.sae)
        params.setdefault("layer", cfg.layer)
    elif cfg.layer is not None:
        params.setdefault(
            "layers" if cfg.head == "elhsr" else "layer",
            [cfg.layer] if cfg.head == "elhsr" else cfg.layer,
        )
    head = make_head(cfg.head, **params)
    _threads(cfg.threads)
    pairs = _pairs(cfg, "train")  # bad input fails before the model loads
    lm = load_model(cfg.model)
    layers: str | list[int] = "all"
    if cfg.layer is not None:
        layers = [cfg.layer]
    elif cfg.sae:
        from hsrm.sae import SAE

        hl = SAE.load(cfg.sae).hidden_state_index(lm.fingerprint.n_layers)
        if hl is None:
            raise HsrmError(
                f"--sae {cfg.sae}: its cfg.json names no hook (metadata.hook_name); pass --layer"
            )
        layers = [hl]
    else:
        layers = "mid"
    ps = encode_pairs(lm, pairs, layers, cache=cfg.cache)
    fit_head_on_pairs(head, ps)
    head.save(cfg.out)
    Console().print(
        f"{cfg.head}: fit on {len(ps)} pairs ({len(set(ps.pair_groups))} questions), {head.n_parameters()} parameters -> {cfg.out}"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hsrm.errors import HsrmError
    from hsrm.heads.base import Head
    from hsrm.io import atomic_write_json
    from hsrm.models import load_model
    from hsrm.prefs.evaluate import encode_pairs, pairwise_result

    cfg = from_sources(PrefsEvalConfig, load_yaml(args.config, "prefs_evaluate"), args)
    for n in ("pairs", "head"):
        if not getattr(cfg, n):
            raise HsrmError(f"--{n} is required")
    _threads(cfg.threads)
    head = Head.load(cfg.head)
    pairs = _pairs(cfg, "test")
    lm = load_model(cfg.model)
    head.check_compatible(lm.fingerprint, head.required_layers())
    ps = encode_pairs(lm, pairs, list(head.required_layers()), cache=cfg.cache)
    res = {
        "head": pairwise_result(head.score(ps.feats), ps, n_boot=cfg.n_boot, seed=cfg.seed),
        "log-prob": pairwise_result(ps.mean_logprob(), ps, n_boot=cfg.n_boot, seed=cfg.seed),
    }
    con = Console()
    for k, r in res.items():
        con.print(
            f"{k:>9}: pairwise accuracy {r['acc']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] on {r['n_pairs']} pairs, {r['n_questions']} questions"
        )
    if cfg.out:
        from pathlib import Path

        from hsrm.report_html import pairs_score_data, write_pairs_html

        atomic_write_json(cfg.out, res)
        scores = {"head": head.score(ps.feats), "log-prob": ps.mean_logprob()}
        page = write_pairs_html(
            Path(cfg.out).with_suffix(".html"),
            res,
            pairs_score_data(ps, scores, head, lm.tokenizer),
            title=f"hsrm prefs evaluate: {head.architecture} on {cfg.pairs}",
        )
        con.print(f"wrote {cfg.out} and {page}")
    return 0


def register(sub, groups) -> None:
    prefs = groups["prefs"]
    p = prefs.add_parser(
        "train",
        help="train a pairwise reward head (sparserm, denserm, ...) on preference pairs",
        description="Teacher-force every pair's answers once, then fit a head with y=1 chosen / 0 rejected, "
        "grouped by pair. Pairs: TRL/RewardBench JSONL (prompt, chosen, rejected) or the TruthfulQA CSV.",
    )
    p.add_argument("--config", help="YAML config (section prefs_train)")
    add_arguments(p, PrefsTrainConfig)
    p.set_defaults(func=_cmd_train)
    p = prefs.add_parser(
        "evaluate",
        help="pairwise accuracy of a saved head on preference pairs (bootstrap CI over questions)",
        description="Score chosen and rejected answers with a saved head; report pairwise accuracy with a "
        "bootstrap CI resampling questions, next to the length-normalised log-prob baseline.",
    )
    p.add_argument("--config", help="YAML config (section prefs_evaluate)")
    add_arguments(p, PrefsEvalConfig)
    p.set_defaults(func=_cmd_evaluate)
