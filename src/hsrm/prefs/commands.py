"""One config dataclass and one function per ``hsrm prefs`` command:

* ``train_prefs(PrefsTrainConfig)``: a pairwise reward head (SparseRM, ...) fit on preference pairs;
* ``evaluate_prefs(PrefsEvalConfig)``: pairwise accuracy of a saved head, CI over questions;
* ``build(BuildConfig)``: DPO pairs from a policy's own samples (``hsrm.prefs.build``);
* ``hsrm prefs loop`` is ``hsrm.prefs.loop.run_loop(LoopConfig)``.

The CLI (``hsrm.cli.prefs``) only parses flags into these configs, calls, and prints.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hsrm.config import field
from hsrm.errors import HsrmError
from hsrm.models import ModelConfig
from hsrm.prefs.data import PrefPair


@dataclasses.dataclass
class PrefsTrainConfig(ModelConfig):
    """``hsrm prefs train`` (the model fields are ``ModelConfig``'s: the model whose hidden states
    the head reads)."""

    pairs: str = field(
        "", "preference JSONL (prompt/chosen/rejected, optional id/group) or TruthfulQA CSV"
    )
    out: str = field("", "output head folder")
    head_type: str = field("sparserm", "head architecture: sparserm, denserm, elhsr, probe, ...")
    sae: str | None = field(
        None, "SAE folder (SAELens format) for sparserm (default: the head trains a small one)"
    )
    layer: int | None = field(
        None, "hidden-state index (default: the SAE's hook layer, else the middle layer)"
    )
    params: dict = field({}, "head hyperparameters (YAML mapping; CLI: JSON or key=value)")
    split: str = field(
        "all", "train on: all pairs, or 'train' (the train side of a split by question)"
    )
    test_frac: float = field(0.2, "with split train: share of questions held out")
    seed: int = field(0, "split seed")
    max_answers: int = field(3, "TruthfulQA: answers of each kind per question")
    cache: str | None = field(None, "feature cache file (.safetensors): written once, reused after")
    on_error: str = field("error", "bad JSONL lines: error, or warn (drop and count)")


@dataclasses.dataclass
class PrefsEvalConfig(ModelConfig):
    """``hsrm prefs evaluate`` (the model fields are ``ModelConfig``'s; the model must match the
    head's fingerprint)."""

    head: str = field("", "saved head folder")
    pairs: str = field("", "preference JSONL or TruthfulQA CSV")
    split: str = field(
        "all", "evaluate on: all pairs, or 'test' (the held-out side of a split by question)"
    )
    test_frac: float = field(0.2, "with split test: share of questions held out (as in training)")
    seed: int = field(0, "split seed (as in training)")
    max_answers: int = field(3, "TruthfulQA: answers of each kind per question")
    cache: str | None = field(None, "feature cache file (.safetensors)")
    n_boot: int = field(1000, "bootstrap resamples (over questions)")
    out: str | None = field(None, "write the result as JSON here")
    on_error: str = field("error", "bad JSONL lines: error, or warn (drop and count)")


def _required(cfg: Any, *names: str) -> None:
    for n in names:
        if not getattr(cfg, n):
            raise HsrmError(f"--{n.replace('_', '-')} is required")


def select_pairs_split(cfg: PrefsTrainConfig | PrefsEvalConfig, side: str) -> list[PrefPair]:
    """The pairs of ``cfg.pairs``: all, or one side of the split by question."""
    from hsrm.prefs.data import load_pairs, split_by_group

    pairs = load_pairs(cfg.pairs, on_error=cfg.on_error, max_answers=cfg.max_answers, seed=cfg.seed)
    if cfg.split == "all":
        return pairs
    if cfg.split != side:
        raise HsrmError(f"--split must be 'all' or '{side}', got {cfg.split!r}")
    train, test = split_by_group(pairs, cfg.test_frac, cfg.seed)
    return train if side == "train" else test


def _head_params(cls: Any, cfg: PrefsTrainConfig) -> dict[str, Any]:
    """``cfg.params`` with ``--sae`` for heads (``cls``) that read one and ``--layer`` in the form
    the head takes it (``Head.layer_params``); what ``--params`` sets wins."""
    params = dict(cfg.params)
    if "sae" in cls.param_names() and cfg.sae is not None:
        params.setdefault("sae", cfg.sae)
    if cfg.layer is not None:
        params = {**cls.layer_params((cfg.layer,)), **params}
    return params


def train_prefs(cfg: PrefsTrainConfig, lm: Any = None) -> tuple[Any, Any]:
    """Teacher-force every pair's answers once, fit ``cfg.head_type`` (y=1 chosen / 0 rejected,
    grouped by question or pair) and save it to ``cfg.out``. Returns (head, PairSet)."""
    from hsrm.heads import get_head_class, make_head
    from hsrm.models import load_model
    from hsrm.prefs.evaluate import encode_pairs, fit_head_on_pairs

    _required(cfg, "pairs", "out")
    from hsrm.io import check_out
    from hsrm.layer_spec import check_layer_spec

    if cfg.layer is not None:  # the one layer vocabulary's refusals (a negative index)
        check_layer_spec([cfg.layer], "--layer")

    check_out(cfg.out, "head", inputs=[cfg.pairs])  # before any work
    cls = get_head_class(cfg.head_type)
    head = make_head(cls, **_head_params(cls, cfg))  # bad parameters fail first
    pairs = select_pairs_split(cfg, "train")  # bad input fails before the model loads
    lm = lm or load_model(cfg)
    layers: str | list[int]
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
    return head, ps


def evaluate_prefs(cfg: PrefsEvalConfig, lm: Any = None) -> dict[str, dict[str, float]]:
    """Pairwise accuracy (CI over questions) of the head in ``cfg.head`` and of the length-
    normalised log-prob baseline; written to ``cfg.out`` as JSON if set."""
    from hsrm.heads.base import Head
    from hsrm.models import load_model
    from hsrm.prefs.evaluate import encode_pairs, pairwise_result

    _required(cfg, "pairs", "head")
    head = Head.load(cfg.head)
    pairs = select_pairs_split(cfg, "test")
    lm = lm or load_model(cfg)
    head.check_compatible(lm.fingerprint, head.required_layers())
    ps = encode_pairs(lm, pairs, list(head.required_layers()), cache=cfg.cache)
    res = {
        "head": pairwise_result(head.score(ps.feats), ps, n_boot=cfg.n_boot, seed=cfg.seed),
        "log-prob": pairwise_result(ps.mean_logprob(), ps, n_boot=cfg.n_boot, seed=cfg.seed),
    }
    if cfg.out:
        from hsrm.io import atomic_write_json
        from hsrm.report.html import pairs_score_data, write_pairs_html

        atomic_write_json(cfg.out, res)
        scores = {"head": head.score(ps.feats), "log-prob": ps.mean_logprob()}
        write_pairs_html(  # results.html beside the JSON: the page people look at
            Path(cfg.out).with_suffix(".html"),
            res,
            pairs_score_data(ps, scores, head, lm.tokenizer),
            title=f"hsrm prefs evaluate: {head.architecture} on {cfg.pairs}",
        )
    return res


@dataclasses.dataclass
class BuildConfig(ModelConfig):
    """``hsrm prefs build`` (the model fields are ``ModelConfig``'s: the policy model to sample
    from, and the head's model)."""

    head: str | None = field(None, "saved head folder; without it pairs come from the verifier")
    task: str = field("synthetic", "task: synthetic, gsm8k:PATH, bbh:PATH, jsonl:PATH")
    families: str = field("arith,compare", "synthetic task families")
    n_prompts: int = field(64, "prompts to build pairs on (first N of the task)")
    task_seed: int = field(
        1, "synthetic task seed (hsrm sample's default is 0: heads trained there saw other prompts)"
    )
    seed: int = field(0, "sampling and pair-choice seed")
    n: int = field(8, "answers sampled per prompt")
    temperature: float = field(0.8, "sampling temperature")
    max_new_tokens: int = field(6, "answer length limit")
    select: str | None = field(
        None, "head, verifier or random (default: head if --head else verifier)"
    )
    margin: float = field(0.0, "minimum head-score gap between chosen and rejected")
    drop_disagreements: bool = field(True, "drop head pairs the task's checker ranks the other way")
    use_verifier: bool = field(
        True, "label answers with the task's checker (disagreement filter, stats)"
    )
    out: str = field("pairs.jsonl", "output JSONL (TRL preference format)")


def build(cfg: BuildConfig, lm: Any = None) -> tuple[list[PrefPair], dict[str, Any], int]:
    """Sample ``cfg.n`` answers per prompt, score / label them, write DPO pairs to ``cfg.out``.
    Returns (pairs, stats, number of prompts)."""
    from hsrm.capture import SampleConfig
    from hsrm.heads.base import Head
    from hsrm.models import load_model
    from hsrm.prefs.build import build_pairs
    from hsrm.tasks import get_task

    task = get_task(cfg.task, n=cfg.n_prompts, families=cfg.families, seed=cfg.task_seed)
    prompts = task.prompts()[: cfg.n_prompts]
    head = Head.load(cfg.head) if cfg.head else None
    lm = lm or load_model(cfg)
    pairs, stats = build_pairs(
        lm,
        prompts,
        head=head,
        task=task if cfg.use_verifier else None,
        sample=SampleConfig(
            n=cfg.n, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed
        ),
        select=cfg.select,
        margin=cfg.margin,
        drop_disagreements=cfg.drop_disagreements,
        out=cfg.out,
        seed=cfg.seed,
    )
    return pairs, stats, len(prompts)
