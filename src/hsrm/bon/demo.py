"""``hsrm demo``: sample the embedded synthetic task, cross-fit ELHSR and the probe by prompt
(k folds, every prompt tested once), score a fresh store nothing was fitted on, report."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hsrm.bon.baselines import baseline_scores
from hsrm.bon.outputs import html_data, store_report, write_outputs
from hsrm.bon.report import bon_report
from hsrm.capture import parse_layers
from hsrm.config import field, validate
from hsrm.errors import HsrmError
from hsrm.heads.base import Head, make_head
from hsrm.io import check_out, exclusive, mark_output
from hsrm.metrics import within_prompt_auroc
from hsrm.models import DEFAULT_MODEL
from hsrm.sampling import SampleRunConfig, sample
from hsrm.splits import prompt_folds
from hsrm.store import Store


@dataclass
class DemoConfig:
    out: str = field("runs/demo", "output folder")
    model: str = field(DEFAULT_MODEL, "model (default: the embedded SmolLM2-135M-Instruct)")
    n_prompts: int = field(512, "synthetic prompts", min=1)
    families: str = field("arith,compare", "shortcut-controlled synthetic families")
    n: int = field(16, "samples per prompt", min=1)
    folds: int = field(
        3, "prompt splits (k-fold by prompt: every prompt is tested exactly once)", min=2
    )
    head_layers: str = field(
        "top:11",
        "layers ELHSR reads: top:K (the last K hidden states; top:11 = 20-30 of the embedded "
        "model, chosen on another task seed's store: benchmarks/results/quality_levers_elhsr.md, "
        "quality_levers_more.md) | all | every:K | 0,4,8",
    )
    seed: int = field(0, "seed for sampling and splits")
    n_boot: int = field(1000, "bootstrap resamples over prompts", min=1)
    threads: int = field(0, "torch CPU threads (0 = torch's default)", min=0)
    overwrite: bool = field(
        False, "write into a non-empty folder hsrm did not make (only hsrm's own files replaced)"
    )
    fewshot: str = field(
        "per_prompt", "few-shot examples: per_prompt (every prompt its own context) | fixed"
    )
    fresh_prompts: int = field(
        128,
        "prompts of a second store from another task seed that nothing is fitted on (0: skip)",
        min=0,
    )


# The demo's ELHSR settings: SWIFT's, plus two changes measured in benchmarks/results/ablations.md
# (standardised inputs; early stopping on the validation prompts' within-prompt AUROC).
#: scorer name of the per-family pick among the demo's heads
PICKED = "picked"

DEMO_ELHSR: dict[str, Any] = {"standardize": True, "early_stop": "within_auroc", "patience": 5}


def demo_head_layers(spec: str, n_layers: int) -> tuple[int, ...]:
    """``top:K``: the last K of the n_layers + 1 hidden states; anything else: ``parse_layers``."""
    if spec.startswith("top:"):
        try:
            k = int(spec[4:])
        except ValueError:
            raise HsrmError(f"head_layers: {spec!r}: top:K needs an integer K") from None
        if not 1 <= k <= n_layers + 1:
            raise HsrmError(f"head_layers: {spec!r}: K must be in 1..{n_layers + 1}")
        return tuple(range(n_layers + 1 - k, n_layers + 1))
    return tuple(parse_layers(spec, n_layers))


def cross_fit(
    store: Store,
    folds: int,
    seed: int,
    head_specs: dict[str, tuple[str, dict[str, Any]]],
    progress: bool = True,
    keep_heads: dict[tuple[str, int], Head] | None = None,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Out-of-fold scores for every sample: heads and baselines trained on the other folds' prompts.

    ``head_specs``: scorer name -> (head architecture, params). Returns scores and per-fold info;
    ``keep_heads``, if given, receives every fitted head under (scorer name, fold).
    """
    pids = store.prompt_ids
    fold = prompt_folds(pids, folds, seed)
    scores: dict[str, np.ndarray] = {}
    info = []
    steps = tqdm(
        total=folds * (len(head_specs) + 1), desc="training", unit="fit", disable=not progress
    )
    for f in range(folds):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        finfo: dict[str, Any] = {
            "fold": f,
            "train_prompts": int(len(set(pids[tr]))),
            "test_prompts": int(len(set(pids[te]))),
            "seconds": {},
            "n_parameters": {},
        }
        for name, (arch, params) in head_specs.items():
            t0 = time.perf_counter()
            head = make_head(arch, **params).fit(store.features(tr), store.labels[tr], pids[tr])
            finfo["seconds"][name] = time.perf_counter() - t0
            finfo["n_parameters"][name] = head.n_parameters()
            if keep_heads is not None:
                keep_heads[(name, f)] = head
            s = head.score(store.features(te))
            scores.setdefault(name, np.zeros(len(store)))[te] = s
            steps.update(1)
        for name, s in baseline_scores(store, tr, te).items():
            scores.setdefault(name, np.zeros(len(store)))[te] = s
        steps.update(1)
        info.append(finfo)
    steps.close()
    return scores, info


def pick_by_family(
    scores: dict[str, np.ndarray],
    labels: np.ndarray,
    groups: np.ndarray,
    families: np.ndarray,
    candidates: list[str],
) -> dict[str, str]:
    """Per task family, the candidate scorer with the best within-prompt AUROC (what best-of-N
    needs) on the given samples' scores, which must be out of fold. A family is known when a prompt
    arrives, so choosing its head this way uses nothing of the prompts it is then applied to."""
    out = {}
    for fam in sorted(set(families.tolist())):
        m = families == fam
        wp = {c: within_prompt_auroc(scores[c][m], labels[m], groups[m]) for c in candidates}
        out[str(fam)] = max(
            candidates, key=lambda c: (np.nan_to_num(wp[c], nan=-1.0), -candidates.index(c))
        )
    return out


def picked_scores(
    scores: dict[str, np.ndarray], families: np.ndarray, pick: dict[str, str]
) -> np.ndarray:
    """Each sample gets the score of the head picked for its family (BoN and within-prompt AUROC
    compare samples of one prompt, so heads' different scales do not mix within a ranking)."""
    out = np.zeros(len(families))
    for fam, name in pick.items():
        m = families == fam
        out[m] = scores[name][m]
    return out


def demo(cfg: DemoConfig, console: Any = None) -> dict[str, Any]:
    """Sample on the embedded synthetic task, cross-fit ELHSR and the probe by prompt, report."""
    validate(cfg, "demo")
    # the layer spec's form, before minutes of sampling (its range is checked on the store)
    demo_head_layers(cfg.head_layers, 1 << 20 if cfg.head_layers.startswith("top:") else 10**3)
    out = Path(cfg.out)
    check_out(out, "demo", overwrite=cfg.overwrite)
    with exclusive(out):
        out.mkdir(parents=True, exist_ok=True)
        mark_output(out, "demo", ["samples"])
        return _demo(cfg, out)


def _demo(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    t_start = time.perf_counter()
    scfg = SampleRunConfig(
        out=str(out / "samples"),
        model=cfg.model,
        n_prompts=cfg.n_prompts,
        families=cfg.families,
        n=cfg.n,
        seed=cfg.seed,
        layers="all",
        threads=cfg.threads,
        fewshot=cfg.fewshot,
    )
    store = sample(scfg)
    t_sample = time.perf_counter() - t_start
    layers = demo_head_layers(cfg.head_layers, store.fingerprint.n_layers)
    specs = {
        "elhsr": ("elhsr", {"layers": list(layers), **DEMO_ELHSR}),
        "probe": ("probe", {}),
        # within-prompt ranker (last 8 layers, pairwise loss), settings chosen on another task
        # seed's store: benchmarks/results/quality_levers.md
        "rank": ("rank", {}),
    }
    fitted: dict[tuple[str, int], Head] = {}
    scores, folds = cross_fit(store, cfg.folds, cfg.seed, specs, keep_heads=fitted)
    idx = np.arange(len(store))
    fams = np.array([r["family"] for r in store.records])
    fold = prompt_folds(store.prompt_ids, cfg.folds, cfg.seed)
    # "picked": per family, the head with the best out-of-fold within-prompt AUROC; for each split
    # chosen on the other splits' prompts only, so no prompt helps pick the head that scores it
    heads_ = list(specs)
    y, pids = store.labels, store.prompt_ids
    scores[PICKED] = np.zeros(len(store))
    for f in range(cfg.folds):
        tr, te = fold != f, fold == f
        pick = pick_by_family({h: scores[h][tr] for h in heads_}, y[tr], pids[tr], fams[tr], heads_)
        folds[f]["picked"] = pick
        scores[PICKED][te] = picked_scores({h: scores[h][te] for h in heads_}, fams[te], pick)
    pick_all = pick_by_family(scores, y, pids, fams, heads_)
    rep = store_report(store, idx, scores, cfg.n_boot, cfg.seed)
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
        )
        finfo["bon_at_n"] = {k: v[N] for k, v in r["bon"].items()}
        finfo["within_prompt_auroc"] = r["within_prompt_auroc"]
    rep.update(
        {
            "model": store.fingerprint.to_dict(),
            "task": store.meta["task"],
            "seed": cfg.seed,
            "N": cfg.n,
            "sizes": {
                "prompts": int(len(set(store.prompt_ids))),
                "samples": len(store),
                "folds": cfg.folds,
                "store_bytes": store.bytes_on_disk(),
                "layers_captured": len(store.layers),
                "head_layers": list(layers),
            },
            "splits": folds,
        }
    )
    if cfg.fresh_prompts:
        rep["fresh"] = _demo_fresh(cfg, scfg, store, specs, pick_all)
        t_sample += rep["fresh"].pop("sampling_s")
    rep["timing"] = {"sampling_s": t_sample, "total_s": time.perf_counter() - t_start}
    write_outputs(out, rep, data, title="hsrm demo: best-of-N with hidden-state heads")
    mark_output(
        out,
        "demo",
        ["results.json", "results.md", "bon.png", "results.html", "fresh", "fresh_samples"],
    )
    return rep


def _demo_fresh(
    cfg: DemoConfig,
    scfg: SampleRunConfig,
    store: Store,
    specs: dict[str, tuple[str, dict[str, Any]]],
    pick: dict[str, str],
) -> dict[str, Any]:
    """Heads and controls fitted on every prompt of ``store``, scored on a store sampled from
    another task seed (other questions, other few-shot contexts) that nothing was fitted on.
    ``pick``: the head per family chosen on ``store``'s out-of-fold scores."""
    fcfg = SampleRunConfig(
        **{
            **asdict(scfg),
            "out": str(Path(cfg.out) / "fresh_samples"),
            "n_prompts": cfg.fresh_prompts,
            "task_seed": scfg.task_seed + 1,
            "seed": scfg.seed + 1,
        }
    )
    t0 = time.perf_counter()
    fresh = sample(fcfg)
    t_sample = time.perf_counter() - t0
    tr, te = np.arange(len(store)), np.arange(len(fresh))
    pids = store.prompt_ids
    scores = {
        name: make_head(arch, **params)
        .fit(store.features(tr), store.labels, pids)
        .score(fresh.features(te))
        for name, (arch, params) in specs.items()
    }
    fams = np.array([r["family"] for r in fresh.records])
    scores[PICKED] = picked_scores(scores, fams, {f: h for f, h in pick.items() if f in set(fams)})
    scores.update(baseline_scores(fresh, tr, te, train_store=store))
    rep = store_report(fresh, te, scores, cfg.n_boot, cfg.seed)
    rep["task"] = fresh.meta["task"]
    rep["picked"] = pick
    write_outputs(Path(cfg.out) / "fresh", rep)
    rep["sampling_s"] = t_sample
    return rep
