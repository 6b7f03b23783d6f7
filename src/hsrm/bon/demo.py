"""``hsrm demo``: sample the embedded synthetic task, cross-fit ELHSR and the probe by prompt
(k folds, every prompt tested once), score a fresh store nothing was fitted on, report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hsrm.bon.baselines import baseline_scores, prompt_question
from hsrm.bon.outputs import html_data, question_split, store_report, write_outputs
from hsrm.bon.report import bon_per_prompt, bon_report
from hsrm.bon.scorers import VOTE_SUFFIX, add_head_votes, vote_keep
from hsrm.config import field, validate
from hsrm.engines import sample
from hsrm.heads.base import Head, make_head
from hsrm.io import check_out, exclusive, mark_output
from hsrm.layer_spec import VOCABULARY, check_layer_spec, parse_layers
from hsrm.metrics import score_vote_weights
from hsrm.models import ModelConfig
from hsrm.placement import resolve_device
from hsrm.sampling import (
    FEWSHOT_HELP,
    TASK_DEFAULTS,
    SampleRunConfig,
    check_model_resumes,
    check_task_resumes,
)
from hsrm.splits import prompt_folds
from hsrm.store import RecordsView, Store, StoreUnion


@dataclass
class DemoConfig(ModelConfig):
    """``hsrm demo``. The model fields are ``ModelConfig``'s (the device also fits ELHSR; the other
    heads and the controls fit on the CPU); the task defaults are ``hsrm sample``'s
    (``TASK_DEFAULTS``)."""

    out: str = field("runs/demo", "output folder")
    n_prompts: int = field(
        TASK_DEFAULTS["n_prompts"], "synthetic prompts, each tested once (out of fold)", min=1
    )
    families: str = field(TASK_DEFAULTS["families"], "shortcut-controlled synthetic families")
    n: int = field(TASK_DEFAULTS["n"], "samples per prompt", min=1)
    folds: int = field(
        3, "prompt splits (k-fold by prompt: every prompt is tested exactly once)", min=2
    )
    head_layers: str = field(
        "top:11",
        "layers ELHSR reads (top:11 = the last 11 hidden states, 20-30 of the embedded model, "
        "chosen on another task seed's store: research/quality/results/quality_levers_elhsr.md, "
        f"quality_levers_more.md): {VOCABULARY}",
    )
    seed: int = field(0, "seed for sampling and splits")
    n_boot: int = field(1000, "bootstrap resamples over prompts", min=1)
    batch_prompts: int = field(
        8, "prompts decoded together (x n samples each = rows per step; raise it on a GPU)", min=1
    )
    overwrite: bool = field(
        False, "write into a non-empty folder hsrm did not make (only hsrm's own files replaced)"
    )
    fewshot: str = field(TASK_DEFAULTS["fewshot"], FEWSHOT_HELP)
    train_prompts: int | None = field(
        None,
        "training-only prompts: the task's next prompts after the store's, sampled --train-n "
        "times each, added to every split's training prompts and to the fresh-seed fit (never "
        "tested; more prompts at fewer samples each train better for the same sampling time). "
        "Default: 896 where the demo samples in bfloat16, 384 in float32 (to keep make demo "
        "within 10 minutes on a 2-core CPU either way)",
        min=0,
    )
    train_n: int | None = field(
        None, "samples per training-only prompt (default: 8 in bfloat16, 4 in float32)", min=1
    )
    fresh_prompts: int = field(
        128,
        "prompts of a second store that nothing is fitted on: another task seed, none of the "
        "training prompts' questions (0: skip)",
        min=0,
    )


#: scorer name of the per-family pick among the demo's heads and their votes
PICKED = "picked"

# The demo's ELHSR settings: SWIFT's, plus changes measured on stores the demo does not report on:
# standardised inputs (benchmarks/results/ablations.md); batch 64 at lr 4e-4 (SWIFT: 16 at 1e-4) for
# 10 epochs on all training prompts, without holding a fifth out for early stopping; chosen on a
# validation store of a third task seed by the mean BoN@16 of three seeds, and about twice as fast
# to fit (research/quality/results/quality_votes.md).
DEMO_ELHSR: dict[str, Any] = {
    "standardize": True,
    "batch_size": 64,
    "lr": 4e-4,
    "val_frac": 0.0,
    "max_epochs": 10,
}


def demo_specs(layers: Sequence[int], device: str = "cpu") -> dict[str, tuple[str, dict[str, Any]]]:
    """The demo's heads: scorer name -> (architecture, params). ELHSR reads ``layers`` with
    ``DEMO_ELHSR`` and fits on ``device`` where that is a CUDA GPU (else on the CPU)."""
    elhsr: dict[str, Any] = {"layers": list(layers), **DEMO_ELHSR}
    if device.startswith("cuda"):
        import torch

        # keep the packed answers on the GPU (a quarter of its memory, at least the CPU's 4 GB):
        # at thousands of prompts they outgrow the default and would stream from disk every batch
        gb = torch.cuda.get_device_properties(torch.device(device)).total_memory / 4e9
        elhsr.update(device=device, memory_gb=max(4.0, gb))
    return {
        "elhsr": ("elhsr", elhsr),
        "probe": ("probe", {}),
        # within-prompt ranker (last 8 layers, pairwise loss), settings chosen on another task
        # seed's store: research/quality/results/quality_levers.md
        "rank": ("rank", {}),
    }


def cross_fit(
    store: Store,
    folds: int,
    seed: int,
    head_specs: dict[str, tuple[str, dict[str, Any]]],
    progress: bool = True,
    keep_heads: dict[tuple[str, int], Head] | None = None,
    extra: Store | None = None,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Out-of-fold scores for every sample: heads and baselines trained on the other folds' prompts.

    ``head_specs``: scorer name -> (head architecture, params). Returns scores and per-fold info;
    ``keep_heads``, if given, receives every fitted head under (scorer name, fold). ``extra``: a
    store of training-only prompts (other prompts of the same task) added to every fold's
    training prompts, heads and controls alike; it is never scored.
    """
    pids = store.prompt_ids
    fold = prompt_folds(pids, folds, seed)
    train = training_view(store, extra)
    t_pids, xi = train.prompt_ids, np.arange(len(store), len(train))
    scores: dict[str, np.ndarray] = {}
    info = []
    steps = tqdm(
        total=folds * (len(head_specs) + 1), desc="training", unit="fit", disable=not progress
    )
    for f in range(folds):
        tr, te = np.concatenate([np.flatnonzero(fold != f), xi]), np.flatnonzero(fold == f)
        finfo: dict[str, Any] = {
            "fold": f,
            "train_prompts": int(len(set(t_pids[tr]))),
            "test_prompts": int(len(set(pids[te]))),
            "seconds": {},
            "n_parameters": {},
        }
        for name, (arch, params) in head_specs.items():
            t0 = time.perf_counter()
            head = make_head(arch, **params).fit(train.features(tr), train.labels[tr], t_pids[tr])
            finfo["seconds"][name] = time.perf_counter() - t0
            finfo["n_parameters"][name] = head.n_parameters()
            if keep_heads is not None:
                keep_heads[(name, f)] = head
            s = head.score(store.features(te))
            scores.setdefault(name, np.zeros(len(store)))[te] = s
            steps.update(1)
        for name, s in baseline_scores(store, tr, te, train_store=train).items():
            scores.setdefault(name, np.zeros(len(store)))[te] = s
        steps.update(1)
        info.append(finfo)
    steps.close()
    return scores, info


def training_view(store: Store, extra: Store | None) -> RecordsView:
    """``store``, or it and ``extra``'s training-only prompts read as one (``extra`` after it)."""
    return store if extra is None else StoreUnion([store, extra])


def pick_by_family(
    scores: dict[str, np.ndarray],
    labels: np.ndarray,
    groups: np.ndarray,
    families: np.ndarray,
    candidates: list[str],
    extracted: Sequence[object],
    k: int,
) -> dict[str, str]:
    """Per task family, the candidate scorer with the best BoN@k (a head, or a head's weighted vote:
    ``hsrm.bon.scorers.vote_keep``) on the given samples' scores, which must be out of fold; ties go
    to the earlier candidate. A family is known when a prompt arrives, so choosing its scorer this
    way uses nothing of the prompts it is then applied to."""
    out = {}
    rng = np.random.default_rng(0)
    ex = np.asarray(extracted, dtype=object)
    for fam in sorted(set(families.tolist())):
        m = families == fam
        bon = {}
        for c in candidates:
            keep = vote_keep(c)
            vote = None if keep is None else (scores[c][m], keep)
            per = bon_per_prompt(c, scores[c][m], labels[m], groups[m], ex[m], k, rng, vote=vote)
            bon[c] = float(np.mean(list(per.values())))
        out[str(fam)] = max(candidates, key=lambda c: (bon[c], -candidates.index(c)))
    return out


def picked_scores(
    scores: dict[str, np.ndarray], families: np.ndarray, pick: dict[str, str], groups: np.ndarray
) -> np.ndarray:
    """The picked selector as one vote scorer's per-trace weights: a family whose pick is a vote
    gets that vote's weights; one whose pick ranks answers gets weights under which the top-scored
    trace of any subset wins (``score_vote_weights(..., temperature=0)``), i.e. its best-of-k."""
    out = np.zeros(len(families))
    for fam, name in pick.items():
        m = families == fam
        w = scores[name][m]
        out[m] = w if vote_keep(name) is not None else score_vote_weights(w, groups[m], 0.0)
    return out


def picked_out_of_fold(
    scores: dict[str, np.ndarray],
    labels: np.ndarray,
    groups: np.ndarray,
    families: np.ndarray,
    extracted: Sequence[object],
    fold: np.ndarray,
    candidates: list[str],
    k: int,
) -> tuple[np.ndarray, list[dict[str, str]]]:
    """``picked`` in a cross-fitted store: each split's samples get the selector (per family, the
    candidate with the best BoN@k) chosen on the *other* splits' out-of-fold scores, so no prompt
    helps pick the scorer that scores it. Returns the weights (``picked_scores``) and each split's
    pick. ``fold``: the split of every sample (``hsrm.splits.prompt_folds``)."""
    out = np.zeros(len(labels))
    ex = np.asarray(extracted, dtype=object)
    picks = []
    for f in range(int(fold.max()) + 1):
        tr, te = fold != f, fold == f
        sub = {c: scores[c][tr] for c in candidates}
        pick = pick_by_family(sub, labels[tr], groups[tr], families[tr], candidates, ex[tr], k)
        picks.append(pick)
        out[te] = picked_scores(
            {c: scores[c][te] for c in candidates}, families[te], pick, groups[te]
        )
    return out, picks


#: training-only (prompts, samples each) when not given, by the dtype the demo samples in. bf16
#: samples the demo's task 1.8-2.1x faster than float32 on this project's 2-core CPU
#: (benchmarks/results/cpu_dtype.md), and that time buys 896 x 8 instead of 384 x 4 (docs/quality.md,
#: tenth session); 320 + 896 prompts stay under the task's 1,560 questions, so none repeats.
TRAIN_ONLY = {"float32": (384, 4), "bf16": (896, 8)}


def resolve_demo(cfg: DemoConfig) -> DemoConfig:
    """``cfg`` with what it leaves to the machine settled: the model's device and dtype
    (``ModelConfig.resolve``, the rule of every command) and, when not given, the training-only
    prompts and samples for that dtype (``TRAIN_ONLY``). Raises HsrmError for a device or dtype
    this machine lacks."""
    mc = cfg.resolve()
    k, n = TRAIN_ONLY["float32" if mc.dtype == "float32" else "bf16"]
    return replace(
        cfg,
        dtype=mc.dtype,
        device=mc.device,
        train_prompts=k if cfg.train_prompts is None else cfg.train_prompts,
        train_n=n if cfg.train_n is None else cfg.train_n,
    )


def demo(cfg: DemoConfig, console: Any = None) -> dict[str, Any]:
    """Sample on the embedded synthetic task, cross-fit ELHSR and the probe by prompt, report."""
    validate(cfg, "demo")
    # the layer spec's form, before minutes of sampling (its range is checked on the store)
    check_layer_spec(cfg.head_layers, "--head-layers")
    # and the engine's device and dtype, before the output folder exists; the stores record the
    # dtype resolved, so a rerun on another CPU is refused instead of mixing float32 and bf16 samples
    cfg = resolve_demo(cfg)
    out = Path(cfg.out)
    check_out(out, "demo", overwrite=cfg.overwrite)
    # the stores inside it too, before any of them is sampled (a foreign folder in their place
    # would otherwise stop the demo after minutes of sampling, a store half-done)
    # and their prompts: a store an older demo sampled with other prompts is named now, not
    # after minutes of sampling the others
    runs = demo_sample_configs(cfg)
    for name, scfg in runs.items():
        check_out(out / name, "store")
        check_task_resumes(scfg)
        check_model_resumes(scfg.out, scfg.resolve())
    with exclusive(out):
        out.mkdir(parents=True, exist_ok=True)
        mark_output(out, "demo", ["samples"])
        return _demo(cfg, out, runs)


def demo_sample_configs(cfg: DemoConfig) -> dict[str, SampleRunConfig]:
    """The demo's stores (folder name -> ``hsrm sample`` settings): ``samples`` (tested out of
    fold), ``train_samples`` (the task's next ``train_prompts``, trained on only; same task
    seed, so other questions until the task's question space runs out) and ``fresh_samples``
    (another task seed and sampling seed, asking none of the other two stores' questions, that
    nothing is fitted on). ``cfg`` resolved (``resolve_demo``)."""
    scfg = SampleRunConfig(
        out=str(Path(cfg.out) / "samples"),
        model=cfg.model,
        n_prompts=cfg.n_prompts,
        families=cfg.families,
        n=cfg.n,
        seed=cfg.seed,
        layers="all",
        threads=cfg.threads,
        fewshot=cfg.fewshot,
        device=cfg.device,
        dtype=cfg.dtype,
        batch_prompts=cfg.batch_prompts,
    )
    runs = {"samples": scfg}
    if cfg.train_prompts:
        assert cfg.train_n is not None, "resolve_demo settles train_n"
        runs["train_samples"] = replace(
            scfg,
            out=str(Path(cfg.out) / "train_samples"),
            n_prompts=cfg.train_prompts,
            skip_prompts=scfg.n_prompts,
            n=cfg.train_n,
            # the store's rows per decode step (batch_prompts x n)
            batch_prompts=max(1, cfg.batch_prompts * cfg.n // cfg.train_n),
        )
    if cfg.fresh_prompts:
        runs["fresh_samples"] = replace(
            scfg,
            out=str(Path(cfg.out) / "fresh_samples"),
            n_prompts=cfg.fresh_prompts,
            task_seed=scfg.task_seed + 1,
            seed=scfg.seed + 1,
            # another seed alone draws from the same small question space, most of which the
            # training prompts asked
            avoid_questions=f"{scfg.task_seed}:{scfg.n_prompts + (cfg.train_prompts or 0)}",
        )
    return runs


def _demo(cfg: DemoConfig, out: Path, runs: dict[str, SampleRunConfig]) -> dict[str, Any]:
    t_start = time.perf_counter()
    store = sample(runs["samples"])
    extra = None
    if "train_samples" in runs:
        mark_output(out, "demo", ["train_samples"])
        extra = sample(runs["train_samples"])
    t_sample = time.perf_counter() - t_start
    layers = parse_layers(cfg.head_layers, store.fingerprint.n_layers, "--head-layers")
    specs = demo_specs(layers, resolve_device(cfg.device))
    fitted: dict[tuple[str, int], Head] = {}
    scores, folds, pick_all = out_of_fold_scores(
        store, cfg.folds, cfg.seed, specs, cfg.n, fitted, extra=extra
    )
    idx = np.arange(len(store))
    fold = prompt_folds(store.prompt_ids, cfg.folds, cfg.seed)
    rep = store_report(store, idx, scores, cfg.n_boot, cfg.seed, votes=(PICKED,))
    # per-split numbers, to show the spread across splits
    # the token view explains each example with the head that had not seen its prompt
    data = html_data(store, idx, scores, lambda i: fitted[("elhsr", int(fold[i]))])
    N = str(cfg.n)
    for f, finfo in enumerate(folds):
        te = np.flatnonzero(fold == f)
        r = bon_report(
            {k: v[te] for k, v in scores.items()},
            store.labels[te],
            store.prompt_ids[te],
            extracted=[store.records[i]["extracted"] for i in te],
            ks=[cfg.n],
            n_boot=200,
            votes=(PICKED,),
        )
        finfo["bon_at_n"] = {k: v[N] for k, v in r["bon"].items()}
        finfo["within_prompt_auroc"] = r["within_prompt_auroc"]
    rep.update(
        {
            "model": store.fingerprint.to_dict(),
            "dtype": cfg.dtype,
            "task": store.meta["task"],
            "seed": cfg.seed,
            "N": cfg.n,
            "sizes": {
                "prompts": int(len(set(store.prompt_ids))),
                "samples": len(store),
                "train_only_prompts": 0 if extra is None else int(len(set(extra.prompt_ids))),
                "train_only_samples": 0 if extra is None else len(extra),
                "folds": cfg.folds,
                "store_bytes": store.bytes_on_disk(),
                "layers_captured": len(store.layers),
                "head_layers": list(layers),
            },
            "splits": folds,
        }
    )
    q = np.array([prompt_question(store, r) for r in store.records])
    qx = [] if extra is None else [prompt_question(extra, r) for r in extra.records]
    seen = np.zeros(len(store), bool)
    for f in range(cfg.folds):
        seen[fold == f] = np.isin(q[fold == f], np.concatenate([q[fold != f], qx]))
    rep["questions"] = question_split(
        store, idx, scores, seen, cfg.n_boot, cfg.seed, votes=(PICKED,)
    )
    if cfg.fresh_prompts:
        rep["fresh"] = _demo_fresh(
            cfg, runs["fresh_samples"], training_view(store, extra), specs, pick_all
        )
        t_sample += rep["fresh"].pop("sampling_s")
    rep["timing"] = {"sampling_s": t_sample, "total_s": time.perf_counter() - t_start}
    write_outputs(out, rep, data, title="hsrm demo: best-of-N with hidden-state heads")
    mark_output(
        out,
        "demo",
        ["results.json", "results.md", "bon.png", "results.html", "fresh", "fresh_samples"],
    )
    return rep


def out_of_fold_scores(
    store: Store,
    folds: int,
    seed: int,
    specs: dict[str, tuple[str, dict[str, Any]]],
    n: int,
    keep_heads: dict[tuple[str, int], Head] | None = None,
    extra: Store | None = None,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], dict[str, str]]:
    """The demo's in-store scores: ``cross_fit``'s heads and baselines, each head's vote, and
    ``picked`` (chosen for each split on the other splits). Returns the scores, the per-split
    info (with each split's pick) and the pick on all splits' out-of-fold scores (for another
    store). ``extra``: training-only prompts (``cross_fit``)."""
    scores, info = cross_fit(store, folds, seed, specs, keep_heads=keep_heads, extra=extra)
    fold = prompt_folds(store.prompt_ids, folds, seed)
    fams = np.array([r["family"] for r in store.records])
    y, pids = store.labels, store.prompt_ids
    scores = add_head_votes(scores, list(specs), pids)
    cands = [*specs, *(h + VOTE_SUFFIX for h in specs)]
    ex = [r["extracted"] for r in store.records]
    scores[PICKED], picks = picked_out_of_fold(scores, y, pids, fams, ex, fold, cands, n)
    for finfo, pick in zip(info, picks, strict=True):
        finfo["picked"] = pick
    return scores, info, pick_by_family(scores, y, pids, fams, cands, ex, n)


def fresh_scores(
    store: RecordsView,
    fresh: Store,
    specs: dict[str, tuple[str, dict[str, Any]]],
    pick: dict[str, str],
) -> dict[str, np.ndarray]:
    """Heads and controls fitted on every sample of ``store``, scored on every sample of
    ``fresh``; ``picked`` applies ``pick`` (family -> scorer, from ``out_of_fold_scores``)."""
    tr, te = np.arange(len(store)), np.arange(len(fresh))
    scores = {
        name: make_head(arch, **params)
        .fit(store.features(tr), store.labels, store.prompt_ids)
        .score(fresh.features(te))
        for name, (arch, params) in specs.items()
    }
    fams = np.array([r["family"] for r in fresh.records])
    scores = add_head_votes(scores, list(specs), fresh.prompt_ids)
    scores[PICKED] = picked_scores(
        scores, fams, {f: h for f, h in pick.items() if f in set(fams)}, fresh.prompt_ids
    )
    scores.update(baseline_scores(fresh, tr, te, train_store=store))
    return scores


def _demo_fresh(
    cfg: DemoConfig,
    fcfg: SampleRunConfig,
    store: RecordsView,
    specs: dict[str, tuple[str, dict[str, Any]]],
    pick: dict[str, str],
) -> dict[str, Any]:
    """Heads and controls fitted on every prompt of ``store``, scored on the fresh store
    (``fcfg``: another task seed, so other few-shot contexts, and none of ``store``'s questions
    while the task's question space lasts) that nothing was fitted on.
    ``pick``: the head per family chosen on ``store``'s out-of-fold scores."""
    t0 = time.perf_counter()
    fresh = sample(fcfg)
    t_sample = time.perf_counter() - t0
    te = np.arange(len(fresh))
    scores = fresh_scores(store, fresh, specs, pick)
    rep = store_report(fresh, te, scores, cfg.n_boot, cfg.seed, votes=(PICKED,))
    fq = np.array([prompt_question(fresh, r) for r in fresh.records])
    trained_on = np.unique([prompt_question(store, r) for r in store.records])
    rep["questions"] = question_split(
        fresh, te, scores, np.isin(fq, trained_on), cfg.n_boot, cfg.seed, votes=(PICKED,)
    )
    rep["task"] = fresh.meta["task"]
    rep["picked"] = pick
    write_outputs(Path(cfg.out) / "fresh", rep)
    rep["sampling_s"] = t_sample
    return rep
