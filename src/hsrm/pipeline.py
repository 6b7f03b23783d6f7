"""The best-of-N pipeline: sample with capture into a store, train heads, evaluate on held-out prompts.

The CLI's ``sample``, ``train``, ``evaluate`` and ``demo`` call ``sample``, ``train``, ``evaluate``
and ``demo`` here, with the same dataclass configs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hsrm.baselines.controls import AnswerPriorScorer, TextOnlyScorer
from hsrm.capture import SampleConfig, parse_layers, sample_prompts
from hsrm.config import field
from hsrm.errors import HsrmError
from hsrm.evaluate import bon_report
from hsrm.heads.base import Head, make_head
from hsrm.io import atomic_write_json, atomic_write_text
from hsrm.models import DEFAULT_MODEL, load_model
from hsrm.projection import Projection
from hsrm.shardwriter import BackgroundWriter
from hsrm.store import Store, StoreWriter
from hsrm.tasks import Task, get_task

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# sample
@dataclass
class SampleRunConfig:
    out: str = field("runs/sample", "output folder of the sample store (resumes if it exists)")
    model: str = field(DEFAULT_MODEL, "embedded name, hub id, local folder or .gguf file")
    task: str = field("synthetic", "synthetic[:FAMILIES] | gsm8k:PATH | bbh:PATH | jsonl:PATH")
    n_prompts: int = field(320, "prompts to sample (synthetic: generated; files: the first N)")
    families: str = field(
        "arith,compare", "synthetic task families (comma list of arith, compare, count)"
    )
    task_seed: int = field(0, "seed of the synthetic task generator")
    n: int = field(16, "samples per prompt")
    temperature: float = field(0.8, "sampling temperature")
    top_p: float = field(1.0, "nucleus sampling threshold")
    top_k: int = field(0, "keep only the k most likely tokens (0 = off)")
    min_p: float = field(0.0, "drop tokens below min_p x the top token's probability (0 = off)")
    stop: list[str] = field([], "stop strings: an answer ends where one appears")
    max_new_tokens: int = field(6, "maximum answer tokens")
    seed: int = field(0, "sampling seed (each prompt draws from its own stream)")
    layers: str = field("all", "hidden states to capture: all | every:K | mid | last | 0,4,8")
    store_dtype: str = field("float16", "storage dtype: float16 | bfloat16 | int8 | fp8")
    project: int = field(
        0, "compact store: keep a seeded random projection of each layer to k dims (0 = full)"
    )
    project_seed: int = field(0, "seed of the per-layer projection matrices (with --project)")
    dtype: str = field(
        "auto",
        "model dtype: auto (float32 on cpu, bfloat16 on gpus) | float32 | bfloat16 | float16",
    )
    device: str = field("auto", "device: auto | cpu | cuda | cuda:N | mps")
    batch_prompts: int = field(8, "prompts decoded together (x n samples each = rows per step)")
    writer_queue: int = field(
        2, "shards that may wait for the background writer (0 = write synchronously)"
    )
    pool: str = field("none", "none (per token) | mean | last (one vector per answer)")
    shard_prompts: int = field(16, "prompts per shard (the unit of resumption)")
    threads: int = field(0, "torch CPU threads (0 = torch's default)")
    api_log: str = field("", "also write the samples as OpenAI-style chat.completion JSONL here")
    top_logprobs: int = field(20, "top-k log-probs per token in the API log (k <= 20)")

    def __post_init__(self) -> None:
        # Before the model dtype existed, `dtype` was the storage dtype: old configs saying
        # int8/fp8 there mean the store (float16/bfloat16 are read as the model dtype now).
        if self.dtype in ("int8", "fp8"):
            self.store_dtype, self.dtype = self.dtype, "auto"
        if self.batch_prompts < 1:
            raise HsrmError(f"batch_prompts must be >= 1, got {self.batch_prompts}")
        if self.project < 0:
            raise HsrmError(f"project must be >= 0 (0 = full states), got {self.project}")
        if self.writer_queue < 0:
            raise HsrmError(f"writer_queue must be >= 0, got {self.writer_queue}")


def make_task(cfg: SampleRunConfig) -> Task:
    if cfg.task.split(":", 1)[0] == "synthetic":
        fams = cfg.task.split(":", 1)[1] if ":" in cfg.task else cfg.families
        return get_task("synthetic", n=cfg.n_prompts, families=fams, seed=cfg.task_seed)
    return get_task(cfg.task, limit=cfg.n_prompts)


def sample(cfg: SampleRunConfig, lm: Any = None, progress: bool = True) -> Store:
    """Sample ``cfg.n`` answers per prompt with capture into ``cfg.out``; resumes a killed run."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    scfg = SampleConfig(
        n=cfg.n,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        min_p=cfg.min_p,
        stop=tuple(cfg.stop),
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
        layers=cfg.layers,
        top_logprobs=cfg.top_logprobs if cfg.api_log else 0,
    )
    scfg.validate()
    task = make_task(cfg)
    prompts = task.prompts()
    if not prompts:
        raise HsrmError(f"task {cfg.task!r} has no prompts")
    lm = lm or load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    layers = parse_layers(cfg.layers, lm.fingerprint.n_layers)
    sampling = asdict(scfg)
    sampling.pop("check_every")  # changes when the host looks, never what is sampled
    # Per-prompt uniforms + inverse CDF (docs/engine.md); stores drawn the older way (multinomial)
    # are refused on resume instead of being mixed with this one.
    sampling["draw"] = "inverse-cdf"
    writer = StoreWriter(
        cfg.out,
        {
            "fingerprint": lm.fingerprint.to_dict(),
            "layers": list(layers),
            "task": task.describe(),
            "sampling": sampling,
            "dtype": cfg.store_dtype,
            "pool": cfg.pool,
            "shard_prompts": cfg.shard_prompts,
            **(
                {"projection": Projection(cfg.project, cfg.project_seed).to_dict()}
                if cfg.project
                else {}
            ),
            "batch_prompts": cfg.batch_prompts,  # states differ across B within fp tolerance
        },
    )
    S = cfg.shard_prompts
    shards = [prompts[i : i + S] for i in range(0, len(prompts), S)]
    todo = [k for k, sh in enumerate(shards) if not writer.shard_done(k, [p.id for p in sh])]
    if len(todo) < len(shards):
        log.info(
            "resuming %s: %d of %d shards already done",
            cfg.out,
            len(shards) - len(todo),
            len(shards),
        )
    t0, n_done = time.perf_counter(), 0
    bar = tqdm(
        total=sum(len(shards[k]) for k in todo) * cfg.n,
        desc="sampling",
        unit="sample",
        disable=not progress,
    )

    def write(k: int, results: list) -> None:
        writer.write_shard(k, results, task)
        if cfg.api_log:
            _write_api_shard(Path(cfg.out) / f"apilog-{k:05d}.jsonl", results, task, lm)

    # Batches are aligned to absolute prompt positions ([c*B, (c+1)*B)), so a prompt always shares
    # its batch with the same neighbours and a resumed run writes byte-identical shards; on resume
    # a batch that straddles a finished shard re-samples (and drops) at most B-1 prompts.
    B = cfg.batch_prompts
    need = {i for k in todo for i in range(k * S, min((k + 1) * S, len(prompts)))}
    chunks = [c for c in range(0, len(prompts), B) if need & set(range(c, c + B))]
    got: dict[int, Any] = {}
    pending = list(todo)
    bg = BackgroundWriter(write, depth=cfg.writer_queue)
    try:
        for c in chunks:
            for i, r in zip(range(c, c + B), sample_prompts(lm, prompts[c : c + B], scfg, layers)):
                if i in need:
                    got[i] = r
            n_new = sum(1 for i in range(c, min(c + B, len(prompts))) if i in need) * cfg.n
            bar.update(n_new)
            n_done += n_new
            while pending:  # hand every shard whose prompts are all sampled to the writer
                k = pending[0]
                idx = range(k * S, min((k + 1) * S, len(prompts)))
                if not all(i in got for i in idx):
                    break
                bg.submit(k, [got.pop(i) for i in idx])
                pending.pop(0)
    finally:
        bg.close()
    log.info("writer: sampling waited %.2f s for the disk", bg.idle_s)
    bar.close()
    if cfg.api_log:
        parts = sorted(Path(cfg.out).glob("apilog-*.jsonl"))
        atomic_write_text(cfg.api_log, "".join(p.read_text() for p in parts))
        log.info("API log of %d prompts -> %s", len(prompts), cfg.api_log)
    dt = time.perf_counter() - t0
    writer.finish({"last_run": {"samples": n_done, "seconds": dt, "writer_wait_s": bg.idle_s}})
    store = Store(cfg.out)
    log.info(
        "store %s: %d samples over %d prompts, %.1f MB (%.0f samples/s this run)",
        cfg.out,
        len(store),
        len(prompts),
        store.bytes_on_disk() / 1e6,
        n_done / dt if dt > 0 else 0,
    )
    return store


def _write_api_shard(path: Path, results: list, task: Task, lm: Any) -> None:
    from hsrm.apilog import api_log_records

    labels = [
        [int(task.check(task.extract(a.text, r.prompt), r.prompt)) for a in r.answers]
        for r in results
    ]
    fp = lm.fingerprint
    recs = api_log_records(results, lm.tokenizer, fp.name, fp.revision, labels)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in recs))


# ----------------------------------------------------------------------------------------------
# splits
def prompt_folds(prompt_ids: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) of each sample, assigned per *prompt* (never per sample)."""
    uniq = np.unique(prompt_ids)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(uniq))
    fold_of = {uniq[j]: i % k for i, j in enumerate(perm)}
    return np.array([fold_of[p] for p in prompt_ids])


def is_test_prompt(prompt_id: str, test_frac: float, seed: int) -> bool:
    h = int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:8], "little")
    return (h / 2**64) < test_frac


# ----------------------------------------------------------------------------------------------
# train
@dataclass
class TrainConfig:
    run: str = field("runs/sample", "sample store to train on")
    out: str = field("runs/head", "output folder of the head")
    head: str = field("elhsr", "head architecture (elhsr, probe, ...)")
    layers: str = field("every:4", "layers the head reads (subset of the captured ones)")
    test_frac: float = field(0.3, "share of prompts held out for evaluation (by prompt id hash)")
    split_seed: int = field(0, "seed of the train/test prompt split")
    params: dict = field({}, "extra head hyperparameters (YAML mapping / JSON object)")


def _head_params(name: str, layers: tuple[int, ...], params: dict[str, Any]) -> dict[str, Any]:
    from hsrm.heads.base import get_head_class

    p = dict(params)
    names = get_head_class(name).param_names()
    if "layers" in names and "layers" not in p:
        p["layers"] = list(layers)
    if "layer" in names and "layer" not in p and len(layers) == 1:
        p["layer"] = layers[0]
    return p


def train(cfg: TrainConfig, store: Store | None = None) -> Head:
    """Fit a head on the training prompts of a store and save it (with the prompt ids it saw)."""
    store = store or Store(cfg.run)
    layers = parse_layers(cfg.layers, store.fingerprint.n_layers)
    pids = store.prompt_ids
    train_idx = np.flatnonzero([not is_test_prompt(p, cfg.test_frac, cfg.split_seed) for p in pids])
    if len(train_idx) == 0:
        raise HsrmError(f"{cfg.run}: no training prompts (test_frac={cfg.test_frac})")
    head = make_head(cfg.head, **_head_params(cfg.head, layers, cfg.params))
    X = store.features(train_idx)
    t0 = time.perf_counter()
    head.fit(X, store.labels[train_idx], pids[train_idx])
    dt = time.perf_counter() - t0
    head.save(cfg.out)
    atomic_write_json(
        Path(cfg.out) / "training.json",
        {
            "run": str(cfg.run),
            "train_prompts": sorted(set(pids[train_idx].tolist())),
            "n_samples": int(len(train_idx)),
            "seconds": dt,
            "config": asdict(cfg),
        },
    )
    log.info(
        "trained %s on %d samples (%d prompts) in %.1f s -> %s",
        cfg.head,
        len(train_idx),
        len(set(pids[train_idx])),
        dt,
        cfg.out,
    )
    return head


# ----------------------------------------------------------------------------------------------
# evaluate
@dataclass
class EvaluateConfig:
    run: str = field("runs/sample", "sample store to evaluate on")
    heads: list[str] = field([], "saved head folders to evaluate")
    out: str = field("", "folder for results.json, results.md and bon.png (default: RUN/eval)")
    n_boot: int = field(1000, "bootstrap resamples over prompts")
    protocol: str = field(
        "random", "BoN@k over random k-subsets (exact) or 'first' k samples (SWIFT)"
    )


def baseline_scores(
    store: Store, train_idx: np.ndarray, test_idx: np.ndarray
) -> dict[str, np.ndarray]:
    """The scorers every report carries: random, majority, mean log-prob, and the two controls."""
    recs = store.records
    y = store.labels
    texts = [_prompt_question(store, recs[i]) + " || " + recs[i]["text"] for i in range(len(recs))]
    keys = [(recs[i].get("qtype"), recs[i]["extracted"]) for i in range(len(recs))]
    out = {
        "random": np.zeros(len(test_idx)),
        "majority": np.zeros(len(test_idx)),
        "mean_logprob": np.array([recs[i]["mean_logprob"] for i in test_idx]),
    }
    if len(np.unique(y[train_idx])) == 2:
        txt = TextOnlyScorer().fit([texts[i] for i in train_idx], y[train_idx])
        out["text_only"] = txt.score([texts[i] for i in test_idx])
    prior = AnswerPriorScorer().fit([keys[i] for i in train_idx], y[train_idx])
    out["answer_prior"] = prior.score([keys[i] for i in test_idx])
    return out


def _prompt_question(store: Store, rec: dict[str, Any]) -> str:
    return rec.get("question") or rec.get("prompt_id", "")


def evaluate(cfg: EvaluateConfig, store: Store | None = None) -> dict[str, Any]:
    """Evaluate saved heads on a store's prompts that none of them trained on."""
    store = store or Store(cfg.run)
    if not cfg.heads:
        raise HsrmError("evaluate: give at least one head folder (--heads HEAD/)")
    heads, seen = {}, set()
    for hp in cfg.heads:
        h = Head.load(hp)
        h.check_compatible(store.fingerprint, store.layers)
        tj = Path(hp) / "training.json"
        if tj.exists():
            seen |= set(json.loads(tj.read_text())["train_prompts"])
        name = (
            h.architecture if h.architecture not in heads else f"{h.architecture}:{Path(hp).name}"
        )
        heads[name] = h
    pids = store.prompt_ids
    test_idx = np.flatnonzero([p not in seen for p in pids])
    train_idx = np.flatnonzero([p in seen for p in pids])
    if len(test_idx) == 0:
        raise HsrmError(f"{cfg.run}: every prompt was used to train these heads; nothing held out")
    scores = {n: h.score(store.features(test_idx)) for n, h in heads.items()}
    if len(train_idx):
        scores.update(baseline_scores(store, train_idx, test_idx))
    else:
        scores.update({"random": np.zeros(len(test_idx)), "majority": np.zeros(len(test_idx))})
    rep = _report(store, test_idx, scores, cfg.n_boot, protocol=cfg.protocol)
    out = Path(cfg.out or Path(cfg.run) / "eval")
    _write_outputs(out, rep)
    return rep


def _report(
    store: Store,
    idx: np.ndarray,
    scores: dict[str, np.ndarray],
    n_boot: int,
    seed: int = 0,
    protocol: str = "random",
) -> dict[str, Any]:
    recs = store.records
    return bon_report(
        scores,
        store.labels[idx],
        store.prompt_ids[idx],
        extracted=[recs[i]["extracted"] for i in idx],
        families=np.array([recs[i]["family"] for i in idx]),
        n_boot=n_boot,
        seed=seed,
        protocol=protocol,
    )


def _write_outputs(out: Path, rep: dict[str, Any]) -> None:
    from hsrm.report import bon_markdown, plot_bon

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", rep)
    (out / "results.md").write_text(bon_markdown(rep))
    plot_bon(rep, out / "bon.png")


# ----------------------------------------------------------------------------------------------
# demo
@dataclass
class DemoConfig:
    out: str = field("runs/demo", "output folder")
    model: str = field(DEFAULT_MODEL, "model (default: the embedded SmolLM2-135M-Instruct)")
    n_prompts: int = field(320, "synthetic prompts")
    families: str = field("arith,compare", "shortcut-controlled synthetic families")
    n: int = field(16, "samples per prompt")
    folds: int = field(3, "prompt splits (k-fold by prompt: every prompt is tested exactly once)")
    head_layers: str = field(
        "all", "layers ELHSR reads (all beat every:4 in benchmarks/results/ablations.md)"
    )
    seed: int = field(0, "seed for sampling and splits")
    n_boot: int = field(1000, "bootstrap resamples over prompts")
    threads: int = field(0, "torch CPU threads (0 = torch's default)")


# The demo's ELHSR settings: SWIFT's, plus two changes measured in benchmarks/results/ablations.md
# (standardised inputs; early stopping on the validation prompts' within-prompt AUROC).
DEMO_ELHSR: dict[str, Any] = {"standardize": True, "early_stop": "within_auroc", "patience": 5}


def cross_fit(
    store: Store,
    folds: int,
    seed: int,
    head_specs: dict[str, tuple[str, dict[str, Any]]],
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Out-of-fold scores for every sample: heads and baselines trained on the other folds' prompts.

    ``head_specs``: scorer name -> (head architecture, params). Returns scores and per-fold info.
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
            s = head.score(store.features(te))
            scores.setdefault(name, np.zeros(len(store)))[te] = s
            steps.update(1)
        for name, s in baseline_scores(store, tr, te).items():
            scores.setdefault(name, np.zeros(len(store)))[te] = s
        steps.update(1)
        info.append(finfo)
    steps.close()
    return scores, info


def demo(cfg: DemoConfig, console: Any = None) -> dict[str, Any]:
    """Sample on the embedded synthetic task, cross-fit ELHSR and the probe by prompt, report."""
    out = Path(cfg.out)
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
    )
    store = sample(scfg)
    t_sample = time.perf_counter() - t_start
    layers = parse_layers(cfg.head_layers, store.fingerprint.n_layers)
    specs = {
        "elhsr": ("elhsr", {"layers": list(layers), **DEMO_ELHSR}),
        "probe": ("probe", {}),
    }
    scores, folds = cross_fit(store, cfg.folds, cfg.seed, specs)
    idx = np.arange(len(store))
    rep = _report(store, idx, scores, cfg.n_boot, cfg.seed)
    # per-split numbers, to show the spread across splits
    fold = prompt_folds(store.prompt_ids, cfg.folds, cfg.seed)
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
            "timing": {"sampling_s": t_sample, "total_s": time.perf_counter() - t_start},
        }
    )
    _write_outputs(out, rep)
    return rep
