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
from hsrm.capture import PromptResult, SampleConfig, parse_layers, sample_prompts
from hsrm.config import field, validate
from hsrm.errors import HsrmError
from hsrm.evaluate import bon_report
from hsrm.heads.base import Head, make_head
from hsrm.io import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    check_out,
    exclusive,
    mark_output,
    read_json,
)
from hsrm.models import DEFAULT_MODEL, ModelFingerprint, load_model
from hsrm.projection import Projection
from hsrm.shardwriter import BackgroundWriter
from hsrm.store import Store, StoreWriter
from hsrm.tasks import Task, get_task
from hsrm.tasks.base import Prompt

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# sample
@dataclass
class SampleRunConfig:
    out: str = field("runs/sample", "output folder of the sample store (resumes if it exists)")
    model: str = field(DEFAULT_MODEL, "embedded name, hub id, local folder or .gguf file")
    task: str = field("synthetic", "synthetic[:FAMILIES] | gsm8k:PATH | bbh:PATH | jsonl:PATH")
    n_prompts: int = field(
        320, "prompts to sample (synthetic: generated; files: the first N)", min=1
    )
    families: str = field(
        "arith,compare", "synthetic task families (comma list of arith, compare, count)"
    )
    task_seed: int = field(0, "seed of the synthetic task generator")
    fewshot: str = field(
        "fixed", "synthetic few-shot examples: fixed (one set per family) | per_prompt (own stream)"
    )
    n: int = field(16, "samples per prompt", min=1)
    temperature: float = field(0.8, "sampling temperature", min=0.0)
    top_p: float = field(1.0, "nucleus sampling threshold", min=0.0, max=1.0)
    top_k: int = field(0, "keep only the k most likely tokens (0 = off)", min=0)
    min_p: float = field(
        0.0, "drop tokens below min_p x the top token's probability (0 = off)", min=0.0, max=1.0
    )
    stop: list[str] = field([], "stop strings: an answer ends where one appears")
    max_new_tokens: int = field(6, "maximum answer tokens", min=1)
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
    shard_prompts: int = field(16, "prompts per shard (the unit of resumption)", min=1)
    threads: int = field(0, "torch CPU threads (0 = torch's default)", min=0)
    api_log: str = field("", "also write the samples as OpenAI-style chat.completion JSONL here")
    top_logprobs: int = field(
        20, "top-k log-probs per token in the API log (k <= 20)", min=0, max=20
    )
    engine: str = field("local", "local (this process) | ray (Ray workers; docs/scale.md)")
    workers: int = field(
        1, "engine=ray: model replicas (Ray actors), each sampling whole shards", min=1
    )
    cpus_per_worker: float = field(1.0, "engine=ray: CPUs per worker (also its torch threads)")
    gpus_per_worker: float = field(0.0, "engine=ray: GPUs per worker (0.5 = two workers a GPU)")
    ray_address: str = field("", "engine=ray: cluster to join (default $RAY_ADDRESS, else local)")
    # early pruning while sampling (hsrm.prune_online; docs/quality.md)
    prune: str = field("none", "stop samples early: none | head | deepconf | random")
    prune_head: str = field("", "prune=head: prefix-head folder (prune_online.fit_prefix_head)")
    prune_checkpoints: str = field(
        "4,8", "prune=head|random: answer-token counts at which samples are stopped"
    )
    prune_frac: float = field(
        0.5, "prune=head|random: share of each prompt's running samples stopped per checkpoint"
    )
    prune_eta: float = field(90.0, "prune=deepconf: percent of warm-up confidence kept (90 | 10)")
    prune_warmup: int = field(4, "prune=deepconf: samples per prompt that set the threshold")
    prune_window: int = field(8, "prune=deepconf: sliding window of the group confidence")
    prune_seed: int = field(0, "prune=random: seed of the random choice")

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
        return get_task(
            "synthetic", n=cfg.n_prompts, families=fams, seed=cfg.task_seed, fewshot=cfg.fewshot
        )
    return get_task(cfg.task, limit=cfg.n_prompts)


@dataclass
class SamplePlan:
    """What every engine shares: checked settings, prompts cut into shards, the open store and the
    shards still to do. Shard k always holds prompts [k*S, (k+1)*S), whichever engine samples it."""

    scfg: SampleConfig
    task: Task
    prompts: list[Prompt]
    layers: tuple[int, ...]
    writer: StoreWriter
    shards: list[list[Prompt]]
    todo: list[int]


def sample_inputs(cfg: SampleRunConfig) -> tuple[SampleConfig, Task, list[Prompt]]:
    """The checks that need no model: every setting, the output folder, the task (file) and its
    prompts. Everything is checked before anything is written; StoreWriter then locks the store."""
    validate(cfg, "sample")
    check_out(cfg.out, "store")
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
    from hsrm.prune_online import check_prune_config

    check_prune_config(cfg)
    task = make_task(cfg)
    prompts = task.prompts()
    if not prompts:
        raise HsrmError(f"task {cfg.task!r} has no prompts")
    return scfg, task, prompts


def plan_sample(
    cfg: SampleRunConfig,
    fp: ModelFingerprint,
    scfg: SampleConfig,
    task: Task,
    prompts: list[Prompt],
) -> SamplePlan:
    """Open (or resume) the store for a model with fingerprint ``fp``; refuses a folder that holds
    a different run. Shards already written are left out of ``todo``."""
    layers = parse_layers(cfg.layers, fp.n_layers)
    sampling = asdict(scfg)
    sampling.pop("check_every")  # changes when the host looks, never what is sampled
    # Per-prompt uniforms + inverse CDF (docs/engine.md); stores drawn the older way (multinomial)
    # are refused on resume instead of being mixed with this one.
    sampling["draw"] = "inverse-cdf"
    if getattr(cfg, "prune", "none") != "none":  # a pruned store is never resumed unpruned
        from hsrm.prune_online import prune_settings

        sampling["prune"] = prune_settings(cfg)
    writer = StoreWriter(
        cfg.out,
        {
            "fingerprint": fp.to_dict(),
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
    return SamplePlan(scfg, task, prompts, layers, writer, shards, todo)


def save_shard(plan: SamplePlan, k: int, results: list, lm: Any, api_log: str) -> None:
    """Write shard k (atomically) and, with an API log, its part of the log."""
    plan.writer.write_shard(k, results, plan.task)
    if api_log:
        _write_api_shard(plan.writer.path / f"apilog-{k:05d}.jsonl", results, plan.task, lm)


def finish_sample(
    cfg: SampleRunConfig,
    plan: SamplePlan,
    n_done: int,
    seconds: float,
    extra: dict[str, Any] | None = None,
) -> Store:
    """Join the API log parts, mark the store complete, and open it."""
    if cfg.api_log:
        parts = sorted(Path(cfg.out).glob("apilog-*.jsonl"))
        atomic_write_text(cfg.api_log, "".join(p.read_text() for p in parts))
        log.info("API log of %d prompts -> %s", len(plan.prompts), cfg.api_log)
    plan.writer.finish({"last_run": {"samples": n_done, "seconds": seconds, **(extra or {})}})
    store = Store(cfg.out)
    log.info(
        "store %s: %d samples over %d prompts, %.1f MB (%.0f samples/s this run)",
        cfg.out,
        len(store),
        len(plan.prompts),
        store.bytes_on_disk() / 1e6,
        n_done / seconds if seconds > 0 else 0,
    )
    return store


def check_prompt_lengths(lm: Any, prompts: list, max_new_tokens: int, task: str) -> None:
    """Refuse a prompt that, with its answer, would not fit the model's context (before sampling:
    a 10 MB prompt line otherwise tries to allocate gigabytes)."""
    from hsrm.capture import prompt_text

    ctx = getattr(getattr(lm.model, "config", None), "max_position_embeddings", None)
    if not isinstance(ctx, int) or ctx <= 0:
        return
    for p in prompts:
        text = prompt_text(lm.tokenizer, p)
        # Characters bound tokens from above only loosely; tokenise unless clearly short.
        n = len(text) if len(text) > 20 * ctx else len(lm.tokenizer(text)["input_ids"])
        unit = "characters" if len(text) > 20 * ctx else "tokens"
        if n + max_new_tokens > ctx:
            where = p.meta.get("source", task) if isinstance(p.meta, dict) else task
            raise HsrmError(
                f"{where}: prompt {p.id!r} is {n} {unit}; with max_new_tokens={max_new_tokens} it "
                f"exceeds the model's context of {ctx} tokens"
            )


def sample(cfg: SampleRunConfig, lm: Any = None, progress: bool = True) -> Store:
    """Sample ``cfg.n`` answers per prompt with capture into ``cfg.out``; resumes a killed run.

    ``cfg.engine="ray"`` spreads the shards over Ray workers (``hsrm.scale``, docs/scale.md); the
    store it writes is the same."""
    if cfg.engine == "ray":
        if lm is not None:
            raise HsrmError(
                "engine='ray' loads the model in each worker from cfg.model; pass no lm"
            )
        from hsrm.scale import sample_ray

        return sample_ray(cfg, progress=progress)
    if cfg.engine != "local":
        raise HsrmError(f"engine: unknown engine {cfg.engine!r}; use local or ray")
    scfg, task, prompts = sample_inputs(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    lm = lm or load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    check_prompt_lengths(lm, prompts, cfg.max_new_tokens, cfg.task)
    plan = plan_sample(cfg, lm.fingerprint, scfg, task, prompts)
    from hsrm.prune_online import hook_from_config

    prune = hook_from_config(cfg, plan.layers)
    t0, n_done = time.perf_counter(), 0
    bar = tqdm(
        total=sum(len(plan.shards[k]) for k in plan.todo) * cfg.n,
        desc="sampling",
        unit="sample",
        disable=not progress,
    )
    S, B, n_prompts = cfg.shard_prompts, cfg.batch_prompts, len(prompts)
    # Batches are aligned to absolute prompt positions ([c*B, (c+1)*B)), so a prompt always shares
    # its batch with the same neighbours (whichever engine samples it) and a resumed run writes
    # byte-identical shards; on resume a batch that straddles a finished shard re-samples (and
    # drops) at most B-1 prompts.
    need = {i for k in plan.todo for i in range(k * S, min((k + 1) * S, n_prompts))}
    chunks = [c for c in range(0, n_prompts, B) if need & set(range(c, c + B))]
    got: dict[int, Any] = {}
    pending = list(plan.todo)
    bg = BackgroundWriter(
        lambda k, results: save_shard(plan, k, results, lm, cfg.api_log), depth=cfg.writer_queue
    )
    try:
        for c in chunks:
            for i, r in zip(
                range(c, c + B),
                sample_prompts(lm, prompts[c : c + B], scfg, plan.layers, prune=prune),
            ):
                if i in need:
                    got[i] = r
            n_new = sum(1 for i in range(c, min(c + B, n_prompts)) if i in need) * cfg.n
            bar.update(n_new)
            n_done += n_new
            while pending:  # hand every shard whose prompts are all sampled to the writer
                k = pending[0]
                idx = range(k * S, min((k + 1) * S, n_prompts))
                if not all(i in got for i in idx):
                    break
                bg.submit(k, [got.pop(i) for i in idx])
                pending.pop(0)
    finally:
        bg.close()
        bar.close()
    log.info("writer: sampling waited %.2f s for the disk", bg.idle_s)
    return finish_sample(cfg, plan, n_done, time.perf_counter() - t0, {"writer_wait_s": bg.idle_s})


def batch_window(k: int, shard_prompts: int, batch_prompts: int, n_prompts: int) -> tuple[int, int]:
    """Prompt positions [a, b) of the aligned batches (``sample``'s) that cover shard k."""
    lo, hi = k * shard_prompts, min((k + 1) * shard_prompts, n_prompts)
    B = batch_prompts
    return (lo // B) * B, min(-(-hi // B) * B, n_prompts)


def sample_window(
    lm: Any,
    window: list[Prompt],
    start: int,
    lo: int,
    hi: int,
    B: int,
    scfg: SampleConfig,
    layers: tuple[int, ...],
) -> list[PromptResult]:
    """Results of prompts at positions [lo, hi), sampled in the same aligned batches of B as the
    local engine (``window`` = the prompts at positions [start, start + len(window))), so another
    engine sampling one shard at a time writes byte-identical shards."""
    out = []
    for c in range(0, len(window), B):
        for j, r in enumerate(sample_prompts(lm, window[c : c + B], scfg, layers)):
            if lo <= start + c + j < hi:
                out.append(r)
    return out


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
    test_frac: float = field(
        0.3, "share of prompts held out for evaluation (by prompt id hash)", min=0.0, max=1.0
    )
    split_seed: int = field(0, "seed of the train/test prompt split")
    params: dict = field({}, "extra head hyperparameters (YAML mapping / JSON object)")
    overwrite: bool = field(
        False, "write into a non-empty folder hsrm did not make (only hsrm's own files replaced)"
    )


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
    """Fit a head on the training prompts of a store and save it (with the prompt ids it saw).

    The head folder appears complete, ``training.json`` included, in one rename; it is locked
    for the whole run (a second writer is refused)."""
    validate(cfg, "train")
    check_out(cfg.out, "head", overwrite=cfg.overwrite, inputs=[cfg.run])
    store = store or Store(cfg.run)
    layers = parse_layers(cfg.layers, store.fingerprint.n_layers)
    pids = store.prompt_ids
    train_idx = np.flatnonzero([not is_test_prompt(p, cfg.test_frac, cfg.split_seed) for p in pids])
    if len(train_idx) == 0:
        raise HsrmError(f"{cfg.run}: no training prompts (test_frac={cfg.test_frac})")
    head = make_head(cfg.head, **_head_params(cfg.head, layers, cfg.params))
    with exclusive(cfg.out):
        X = store.features(train_idx)
        t0 = time.perf_counter()
        head.fit(X, store.labels[train_idx], pids[train_idx])
        dt = time.perf_counter() - t0
        record = {
            "run": str(cfg.run),
            "task": store.meta.get("task"),
            "train_prompts": sorted(set(pids[train_idx].tolist())),
            "n_samples": int(len(train_idx)),
            "seconds": dt,
            "config": asdict(cfg),
        }
        head.save(
            cfg.out,
            overwrite=cfg.overwrite,
            inputs=(cfg.run,),
            records={"training.json": record},
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
    n_boot: int = field(1000, "bootstrap resamples over prompts", min=1)
    protocol: str = field(
        "random", "BoN@k over random k-subsets (exact) or 'first' k samples (SWIFT)"
    )
    allow_unknown_training: bool = field(
        False,
        "score heads with no training.json (RISK: their training prompts are unknown, so the "
        "report may score them on prompts they were trained on)",
    )
    overwrite: bool = field(
        False, "write into a non-empty folder hsrm did not make (only hsrm's own files replaced)"
    )


def baseline_scores(
    store: Store,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    train_store: Store | None = None,
) -> dict[str, np.ndarray]:
    """The scorers every report carries: random, majority, mean log-prob, the training-free
    selectors of ``hsrm.scorers`` (self-certainty, DeepConf, entropy, confidence-weighted vote),
    and the two controls (text-only, answer prior) fitted on ``train_idx`` of ``train_store``
    (default: ``store`` itself)."""
    from hsrm.scorers import store_scores

    recs = store.records
    out = {
        "random": np.zeros(len(test_idx)),
        "majority": np.zeros(len(test_idx)),
        "mean_logprob": np.array([recs[i]["mean_logprob"] for i in test_idx]),
    }
    out.update(store_scores(store, test_idx))
    out.update(control_scores(train_store or store, train_idx, store, test_idx))
    return out


def _control_inputs(store: Store, idx: np.ndarray) -> tuple[list[str], list[tuple]]:
    recs = store.records
    texts = [_prompt_question(store, recs[i]) + " || " + recs[i]["text"] for i in idx]
    keys = [(recs[i].get("qtype"), recs[i]["extracted"]) for i in idx]
    return texts, keys


def control_scores(
    train_store: Store, train_idx: np.ndarray, test_store: Store, test_idx: np.ndarray
) -> dict[str, np.ndarray]:
    """Text-only and answer-prior controls fitted on ``train_store``'s records ``train_idx``,
    scored on ``test_store``'s records ``test_idx`` (the two stores may differ)."""
    if len(train_idx) == 0:
        return {}
    y = train_store.labels[train_idx]
    tr_texts, tr_keys = _control_inputs(train_store, train_idx)
    te_texts, te_keys = _control_inputs(test_store, test_idx)
    out: dict[str, np.ndarray] = {}
    if len(np.unique(y)) == 2:
        out["text_only"] = TextOnlyScorer().fit(tr_texts, y).score(te_texts)
    out["answer_prior"] = AnswerPriorScorer().fit(tr_keys, y).score(te_keys)
    return out


def _prompt_question(store: Store, rec: dict[str, Any]) -> str:
    return rec.get("question") or rec.get("prompt_id", "")


def evaluate(cfg: EvaluateConfig, store: Store | None = None) -> dict[str, Any]:
    """Evaluate saved heads on a store's prompts that none of them trained on."""
    validate(cfg, "evaluate")
    if not cfg.heads:
        raise HsrmError("evaluate: give at least one head folder (--heads HEAD/)")
    out = Path(cfg.out or Path(cfg.run) / "eval")
    check_out(
        out, "eval", overwrite=cfg.overwrite, inputs=[cfg.run, *cfg.heads], inside_inputs_ok=True
    )
    store = store or Store(cfg.run)
    heads, seen = {}, set()
    ctrl_from: tuple[str, list[str]] | None = None  # (training store, its training prompts)
    for hp in cfg.heads:
        h = Head.load(hp)
        h.check_compatible(store.fingerprint, store.layers)
        train_prompts = _training_prompts(Path(hp), cfg.allow_unknown_training)
        tj = Path(hp) / "training.json"
        tinfo = read_json(tj, "training record") if tj.exists() else {}
        # prompt ids ("arith-00003") repeat across task seeds: they name the same prompts only
        # when the head's training store holds the same task (its size aside)
        if _same_task(tinfo.get("task") or _store_task(tinfo.get("run", "")), store.meta["task"]):
            seen |= train_prompts
        if tinfo.get("run"):
            ctrl_from = ctrl_from or (tinfo["run"], sorted(train_prompts))
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
    elif ctrl_from and Path(ctrl_from[0], "meta.json").exists():
        # a store no head saw: controls are fitted on the first head's training store and prompts
        tstore = Store(ctrl_from[0])
        keep = set(ctrl_from[1])
        t_idx = np.flatnonzero([p in keep for p in tstore.prompt_ids])
        scores.update(baseline_scores(store, t_idx, test_idx, train_store=tstore))
    else:
        log.info("no training store found for the controls; reporting the unfitted baselines")
        scores.update(baseline_scores(store, np.zeros(0, int), test_idx, train_store=store))
    rep = _report(store, test_idx, scores, cfg.n_boot, protocol=cfg.protocol)
    elhsr = next((n for n, h in heads.items() if hasattr(h, "token_contributions")), None)
    data = html_data(
        store,
        test_idx,
        scores,
        (lambda i: heads[elhsr]) if elhsr else None,
        key=elhsr or "elhsr",
    )
    with atomic_dir(
        out,
        "eval",
        overwrite=cfg.overwrite,
        inputs=[cfg.run, *cfg.heads],
        inside_inputs_ok=True,  # the default RUN/eval sits inside the store it reports on
    ) as tmp:
        _write_outputs(tmp, rep, data, title=f"hsrm evaluate: {cfg.run}")
    return rep


def _training_prompts(head_dir: Path, allow_unknown: bool) -> set[str]:
    """The prompt ids a head was trained on, from its ``training.json``. A head without one may
    have seen any prompt, so it is refused unless the caller accepts that risk."""
    tj = head_dir / "training.json"
    if not tj.exists():
        if allow_unknown:
            log.warning(
                "%s has no training.json: its training prompts are unknown and may be scored", tj
            )
            return set()
        raise HsrmError(
            f"{head_dir}: no training.json, so which prompts it was trained on is unknown and "
            "evaluate could score it on its own training prompts (a killed or foreign train?); "
            "retrain it, or pass --allow-unknown-training to accept that risk"
        )
    rec = read_json(tj, "training record")
    tp = rec.get("train_prompts") if isinstance(rec, dict) else None
    if not isinstance(tp, list) or not all(isinstance(p, str) for p in tp):
        raise HsrmError(f"{tj}: field 'train_prompts' must be a list of prompt ids")
    return set(tp)


def _store_task(run: str) -> dict[str, Any] | None:
    mp = Path(run) / "meta.json"
    return json.loads(mp.read_text()).get("task") if mp.exists() else None


def _same_task(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """Whether two stores' tasks generate the same prompts under the same ids (None: assume so)."""
    if a is None:
        return True
    return {k: v for k, v in a.items() if k not in ("n", "limit")} == {
        k: v for k, v in b.items() if k not in ("n", "limit")
    }


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


def _write_outputs(out: Path, rep: dict[str, Any], data: Any = None, title: str = "") -> None:
    from hsrm.report import bon_markdown, plot_bon
    from hsrm.report_html import write_bon_html

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", rep)
    atomic_write_text(out / "results.md", bon_markdown(rep))
    plot_bon(rep, out / "bon.png")
    write_bon_html(out / "results.html", rep, data, title=title)


def store_tokenizer(store: Store) -> Any:
    """The tokenizer of the store's model, for showing tokens (None where it cannot be loaded)."""
    name = store.fingerprint.name
    try:
        if name.startswith("tiny-llama-"):
            from hsrm.tokenizers import byte_tokenizer

            return byte_tokenizer()
        from transformers import AutoTokenizer

        from hsrm.models import resolve

        folder, gguf, _ = resolve(name)
        return AutoTokenizer.from_pretrained(folder, **({"gguf_file": gguf} if gguf else {}))
    except Exception as e:  # the token view falls back to token ids; the report still gets written
        log.warning("token view: no tokenizer for %s (%s); showing token ids", name, e)
        return None


def html_data(
    store: Store,
    idx: np.ndarray,
    scores: dict[str, np.ndarray],
    elhsr_for: Any = None,
    key: str = "elhsr",
) -> Any:
    """Per-sample scores and labels of samples ``idx`` for the HTML report, plus token-view examples
    picked by ``scores[key]`` and explained by ``elhsr_for(i)`` (the ELHSR head that scored store
    sample i out of sample), when given."""
    from hsrm.report_html import CALIBRATED, ScoreData, TokenExample, pick_examples, token_strings

    y = store.labels[idx]
    if "majority" in scores:  # bon_report's votes, not the placeholder zeros
        from hsrm.evaluate import vote_counts

        ext = [store.records[int(i)]["extracted"] for i in idx]
        scores = {**scores, "majority": vote_counts(ext, store.prompt_ids[idx])}
    cal = tuple(n for n in scores if n.split(":")[0] in CALIBRATED)
    data = ScoreData({k: np.asarray(v) for k, v in scores.items()}, y, cal)
    if elhsr_for is None or key not in scores:
        return data
    tok = store_tokenizer(store)
    recs = store.records
    for title, j in pick_examples(scores[key], y, store.prompt_ids[idx]):
        i = int(idx[j])
        head = elhsr_for(i)
        if head is None:
            continue
        ((g, r),) = head.token_contributions(store.features([i]))
        data.examples.append(
            TokenExample(
                title=title,
                prompt=_prompt_question(store, recs[i]),
                tokens=token_strings(tok, store.token_ids(i)),
                gate=[float(v) for v in g],
                reward=[float(v) for v in r],
                score=float(scores[key][j]),
                label=int(y[j]),
            )
        )
    return data


# ----------------------------------------------------------------------------------------------
# demo
@dataclass
class DemoConfig:
    out: str = field("runs/demo", "output folder")
    model: str = field(DEFAULT_MODEL, "model (default: the embedded SmolLM2-135M-Instruct)")
    n_prompts: int = field(320, "synthetic prompts", min=1)
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
    rep = _report(store, idx, scores, cfg.n_boot, cfg.seed)
    # per-split numbers, to show the spread across splits
    fold = prompt_folds(store.prompt_ids, cfg.folds, cfg.seed)
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
        rep["fresh"] = _demo_fresh(cfg, scfg, store, specs)
        t_sample += rep["fresh"].pop("sampling_s")
    rep["timing"] = {"sampling_s": t_sample, "total_s": time.perf_counter() - t_start}
    _write_outputs(out, rep, data, title="hsrm demo: best-of-N with hidden-state heads")
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
) -> dict[str, Any]:
    """Heads and controls fitted on every prompt of ``store``, scored on a store sampled from
    another task seed (other questions, other few-shot contexts) that nothing was fitted on."""
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
    scores.update(baseline_scores(fresh, tr, te, train_store=store))
    rep = _report(fresh, te, scores, cfg.n_boot, cfg.seed)
    rep["task"] = fresh.meta["task"]
    _write_outputs(Path(cfg.out) / "fresh", rep)
    rep["sampling_s"] = t_sample
    return rep
