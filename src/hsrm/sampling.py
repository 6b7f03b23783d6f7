"""``hsrm sample``: sample answers with capture into a store (the capture -> store floor).

A task's prompts are sampled with capture (``hsrm.capture``), graded by the task
(``Task.grade``) and written shard by shard (``hsrm.store``). The heads of every use are fit on
such stores (best-of-N: ``hsrm.bon``; ``hsrm score --store``). ``sample_local`` is the local
engine; ``hsrm.scale`` (``engine="ray"``) reuses ``sample_inputs`` / ``plan_sample`` / ``save_shard`` /
``finish_sample`` and the aligned batch windows here, so both engines write byte-identical shards. Which engine runs is chosen above both, in ``hsrm.engines.sample``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hsrm.capture import SampleConfig, parse_layers
from hsrm.capture.prune import check_prune_config, hook_from_config, prune_settings
from hsrm.capture.windows import sample_batch, window_prompts
from hsrm.config import field, validate
from hsrm.errors import HsrmError
from hsrm.io import atomic_write_text, check_out, read_json
from hsrm.models import ModelConfig, ModelFingerprint, load_model, loaded_config
from hsrm.projection import Projection
from hsrm.shardwriter import BackgroundWriter
from hsrm.store import DTYPES, POOLS, Store, StoreWriter, differing
from hsrm.tasks import Task, get_task
from hsrm.tasks.base import Prompt

log = logging.getLogger(__name__)


#: Task defaults ``hsrm sample`` and ``hsrm demo`` share (one source, so that a store sampled by
#: either with defaults asks the same prompts the same way).
TASK_DEFAULTS: dict[str, Any] = {
    "n_prompts": 320,
    "families": "arith,compare",
    "n": 16,
    # every prompt its own seeded few-shot draw: a head cannot learn one fixed context
    "fewshot": "per_prompt",
}
FEWSHOT_HELP = (
    "few-shot examples: per_prompt (every prompt its own seeded draw) | fixed (one set per "
    "family; from a file, those rows are not asked)"
)


@dataclass
class SampleRunConfig(ModelConfig):
    """``hsrm sample``; the model fields (``--model --dtype --device --threads``) are
    ``ModelConfig``'s."""

    out: str = field("runs/sample", "output folder of the sample store (resumes if it exists)")
    task: str = field(
        "synthetic",
        "synthetic[:FAMILIES] | gsm8k:PATH | bbh:PATH | jsonl:PATH | rg:NAME[(key=value,...)]"
        "[,NAME...] (reasoning-gym generators, e.g. 'rg:lcm(max_value=20),count_bits'; quote "
        "the parentheses in a shell; needs hsrm[rg]; docs/tasks.md)",
    )
    n_prompts: int = field(
        TASK_DEFAULTS["n_prompts"],
        "prompts to sample (synthetic: generated; files: the first N)",
        min=1,
    )
    families: str = field(
        TASK_DEFAULTS["families"], "synthetic task families (comma list of arith, compare, count)"
    )
    task_seed: int = field(0, "seed of the synthetic task generator and of few-shot draws")
    skip_prompts: int = field(
        0,
        "leave out the task's first K prompts (more prompts of the same task after another "
        "store's, never the same questions: the demo's training-only prompts)",
        min=0,
    )
    avoid_questions: str = field(
        "",
        "synthetic: never ask a question that the first N prompts of task seed S (same "
        "families and range) asked, S:N (a test store of questions no head trained on; the "
        "demo's fresh store)",
    )
    task_range: str = field(
        "1,20", "synthetic operands LO,HI (cot caps HI at 9; 1,5: an easier cot)"
    )
    shots: int = field(
        3,
        "few-shot examples per prompt (synthetic: generated; gsm8k, bbh: drawn from the same "
        "file, never the question itself; 0 = zero-shot, files only)",
        min=0,
    )
    fewshot: str = field(TASK_DEFAULTS["fewshot"], FEWSHOT_HELP)
    n: int = field(TASK_DEFAULTS["n"], "samples per prompt", min=1)
    temperature: float = field(0.8, "sampling temperature", min=0.0)
    top_p: float = field(1.0, "nucleus sampling threshold", min=0.0, max=1.0)
    top_k: int = field(0, "keep only the k most likely tokens (0 = off)", min=0)
    min_p: float = field(
        0.0, "drop tokens below min_p x the top token's probability (0 = off)", min=0.0, max=1.0
    )
    stop: list[str] = field([], "stop strings: an answer ends where one appears")
    max_new_tokens: int = field(6, "maximum answer tokens", min=1)
    seed: int = field(0, "sampling seed (each prompt draws from its own stream)")
    layers: str = field("all", "hidden states to capture: all | every:K | top:K | A-B | 0,4,8")
    store_dtype: str = field(
        "float16",
        "storage dtype: float16 | bfloat16 | int8 | fp8",
        choices=DTYPES,
    )
    project: int = field(
        0, "compact store: keep a seeded random projection of each layer to k dims (0 = full)"
    )
    project_seed: int = field(0, "seed of the per-layer projection matrices (with --project)")
    batch_prompts: int = field(8, "prompts decoded together (x n samples each = rows per step)")
    refill_window: int = field(
        0,
        "refill: sample prompts in aligned windows of this many; at most batch_prompts decode at "
        "once and a finished prompt's slot goes to the window's next prompt (0 = off; with "
        "prune=consensus: batch_prompts x ceil(n / prune_warmup))",
        min=0,
    )
    writer_queue: int = field(
        2, "shards that may wait for the background writer (0 = write synchronously)"
    )
    pool: str = field(
        "none", "none (per token) | mean | last (one vector per answer)", choices=POOLS
    )
    shard_prompts: int = field(16, "prompts per shard (the unit of resumption)", min=1)
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
    # early pruning while sampling (hsrm.capture.prune; docs/quality.md)
    prune: str = field("none", "stop samples early: none | head | deepconf | random | consensus")
    prune_head: str = field("", "prune=head: prefix-head folder (hsrm prune-head)")
    # 12 and 0.75: the setting measured on the CoT family (docs/quality.md: at tokens 4 and 8 most
    # right and wrong answers are still the same text, so no prefix reader can tell them apart)
    prune_checkpoints: str = field(
        "12", "prune=head|random: answer-token counts at which samples are stopped"
    )
    prune_frac: float = field(
        0.75, "prune=head|random: share of each prompt's running samples stopped per checkpoint"
    )
    prune_eta: float = field(90.0, "prune=deepconf: percent of warm-up confidence kept (90 | 10)")
    prune_warmup: int = field(
        4, "prune=deepconf|consensus: samples per prompt that set the threshold or vote first"
    )
    prune_tau: float = field(
        0.5, "prune=consensus: share of the warm-up answers that must agree to draw no more"
    )
    prune_window: int = field(8, "prune=deepconf: sliding window of the group confidence")
    prune_seed: int = field(0, "prune=random: seed of the random choice")

    def __post_init__(self) -> None:
        if self.batch_prompts < 1:
            raise HsrmError(f"batch_prompts must be >= 1, got {self.batch_prompts}")
        if self.project < 0:
            raise HsrmError(f"project must be >= 0 (0 = full states), got {self.project}")
        if self.writer_queue < 0:
            raise HsrmError(f"writer_queue must be >= 0, got {self.writer_queue}")


def _task_range(spec: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in spec.split(","))
    except ValueError:
        raise HsrmError(f"task_range: {spec!r} is not LO,HI (two integers)") from None
    if not 0 <= lo < hi:
        raise HsrmError(f"task_range: {spec!r} needs 0 <= LO < HI")
    return lo, hi


def _avoid_questions(spec: str) -> tuple[int, int] | None:
    if not spec:
        return None
    try:
        seed, n = (int(x) for x in spec.split(":"))
    except ValueError:
        raise HsrmError(
            f"avoid_questions: {spec!r} is not S:N (a task seed and a prompt count)"
        ) from None
    if n < 1:
        raise HsrmError(f"avoid_questions: {spec!r} needs N >= 1 prompts")
    return seed, n


def make_task(cfg: SampleRunConfig) -> Task:
    if cfg.task.split(":", 1)[0] == "synthetic":
        fams = cfg.task.split(":", 1)[1] if ":" in cfg.task else cfg.families
        lo, hi = _task_range(cfg.task_range)
        return get_task(
            "synthetic",
            n=cfg.n_prompts + cfg.skip_prompts,
            families=fams,
            seed=cfg.task_seed,
            fewshot=cfg.fewshot,
            lo=lo,
            hi=hi,
            shots=cfg.shots,
            avoid=_avoid_questions(cfg.avoid_questions),
        )
    if cfg.avoid_questions:
        raise HsrmError("avoid_questions: only the synthetic task draws its own questions")
    return get_task(
        cfg.task,
        limit=cfg.n_prompts + cfg.skip_prompts,
        shots=cfg.shots,
        fewshot=cfg.fewshot,
        seed=cfg.task_seed,
    )


def task_description(task: Task, cfg: SampleRunConfig) -> dict[str, Any]:
    """The store's ``task`` meta: the task's own description, and ``skip_prompts`` where the
    store leaves out the task's first prompts (the prompt ids then start after them)."""
    d = task.describe()
    if cfg.skip_prompts:
        d["skip_prompts"] = cfg.skip_prompts
    return d


def check_task_resumes(cfg: SampleRunConfig, task: Task | None = None) -> None:
    """Before any model is loaded: where ``cfg.out`` already holds a store, its prompts must be
    the ones ``cfg`` asks for (``StoreWriter`` checks every other setting once the model is up).
    So a run of several stores names the one that cannot resume before sampling the others.
    ``task``: ``make_task(cfg)``, where the caller has built it."""
    mp = Path(cfg.out) / "meta.json"
    if not mp.exists():
        return
    old = read_json(mp, "store meta.json")
    want = task_description(task or make_task(cfg), cfg)
    if isinstance(old, dict) and json.dumps(old.get("task"), sort_keys=True) != json.dumps(
        want, sort_keys=True
    ):
        was, now = differing(old.get("task"), want)
        raise HsrmError(
            f"{mp}: existing run has task={was!r}, this run asks for task={now!r}; "
            f"use another --out, or delete {cfg.out} to sample it again"
        )


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


def sample_inputs(
    cfg: SampleRunConfig, task: Task | None = None
) -> tuple[SampleConfig, Task, list[Prompt]]:
    """The checks that need no model: every setting, the output folder, the task (file) and its
    prompts. Everything is checked before anything is written; StoreWriter then locks the store.
    ``task``: a task the caller built with options ``cfg`` does not spell (``hsrm detect
    capture``'s TruthfulQA labelling rule); else ``make_task(cfg)``."""
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
    check_prune_config(cfg)
    task = task if task is not None else make_task(cfg)
    check_task_resumes(cfg, task)  # before the prompts are built and the model is loaded
    prompts = task.prompts()[cfg.skip_prompts :]
    if not prompts:
        raise HsrmError(
            f"task {cfg.task!r} has no prompts"
            + (f" after the first {cfg.skip_prompts}" if cfg.skip_prompts else "")
        )
    return scfg, task, prompts


def resolve_model(cfg: SampleRunConfig, lm: Any = None) -> ModelConfig:
    """The model ``cfg`` samples with, ``auto`` settled once (``ModelConfig.resolve``), before any
    weights are read: what the store records and what every Ray worker loads. ``lm``: a model the
    caller loaded; then its own dtype and device, and ``cfg.dtype`` / ``cfg.device`` other than
    ``auto`` must be them. Ray: ``ModelConfig.resolve_workers``."""
    if lm is not None:
        got = loaded_config(lm)
        if cfg.dtype not in ("auto", got.dtype):
            raise HsrmError(
                f"sample: dtype {cfg.dtype!r} asked for, but the model passed in is {got.dtype}; "
                "load it in that dtype, or leave dtype auto"
            )
        if cfg.device not in ("auto", None) and cfg.device.split(":", 1)[0] != got.device:
            raise HsrmError(
                f"sample: device {cfg.device!r} asked for, but the model passed in is on "
                f"{got.device}; move it there, or leave device auto"
            )
        return replace(got, model=cfg.model, threads=cfg.threads)
    if cfg.engine == "ray":
        return cfg.resolve_workers(cfg.gpus_per_worker)
    return cfg.resolve()


def check_model_resumes(out: str | Path, mc: ModelConfig) -> str:
    """Before any model is loaded: a store already in ``out`` is resumed only in the dtype and on
    the kind of device it was sampled in (float32 and bf16, CPU and GPU kernels, draw different
    samples; one store never mixes them, whichever engine resumes it). Returns the
    ``model_dtype`` the store goes on recording: ``mc.dtype``, or ``auto`` for a store written when
    hsrm recorded that unresolved (it then meant float32 on CPUs and bfloat16 elsewhere, and is
    resumed only in that). Stores from before hsrm recorded a field are not compared on it."""
    mp = Path(out) / "meta.json"
    kind = mc.device.split(":", 1)[0]
    if not mp.exists():
        return mc.dtype
    old = read_json(mp, "store meta.json")
    if not isinstance(old, dict):
        return mc.dtype  # StoreWriter names a damaged meta.json
    if "model_device" in old and old["model_device"] != kind:
        raise HsrmError(
            f"{mp}: the store was sampled with model_device={old['model_device']!r}, this run "
            f"resolves model_device={kind!r}; resume it with --device {old['model_device']}, or "
            "use another --out"
        )
    if "model_dtype" not in old:
        return mc.dtype
    had = old["model_dtype"]
    meant = ("float32" if kind == "cpu" else "bfloat16") if had == "auto" else had
    if meant != mc.dtype:
        was = f"{had!r} ({meant} on {kind} then)" if had == "auto" else repr(had)
        raise HsrmError(
            f"{mp}: the store was sampled with model_dtype={was}, this run resolves "
            f"model_dtype={mc.dtype!r}; resume it with --dtype {meant}, or use another --out"
        )
    return str(had)


def plan_sample(
    cfg: SampleRunConfig,
    fp: ModelFingerprint,
    scfg: SampleConfig,
    task: Task,
    prompts: list[Prompt],
    mc: ModelConfig,
) -> SamplePlan:
    """Open (or resume) the store for a model with fingerprint ``fp`` run as ``mc`` (resolved:
    ``resolve_model``); refuses a folder that holds a different run. Shards already written are
    left out of ``todo``."""
    model_dtype = check_model_resumes(cfg.out, mc)
    layers = parse_layers(cfg.layers, fp.n_layers)
    sampling = asdict(scfg)
    sampling.pop("check_every")  # changes when the host looks, never what is sampled
    sampling.pop("project")  # where a compact store's projection runs; the store records which
    # Per-prompt uniforms + inverse CDF (docs/engine.md); stores drawn the older way (multinomial)
    # are refused on resume instead of being mixed with this one.
    sampling["draw"] = "inverse-cdf"
    if getattr(cfg, "prune", "none") != "none":  # a pruned store is never resumed unpruned
        sampling["prune"] = prune_settings(cfg)
    writer = StoreWriter(
        cfg.out,
        {
            "fingerprint": fp.to_dict(),
            "layers": list(layers),
            "task": task_description(task, cfg),
            "sampling": sampling,
            "dtype": cfg.store_dtype,
            # the model dtype and device kind resolved (never `auto`): float32 and bf16, CPU and
            # GPU, draw different samples, so a store is not resumed in another
            "model_dtype": model_dtype,
            "model_device": mc.device.split(":", 1)[0],
            "pool": cfg.pool,
            "shard_prompts": cfg.shard_prompts,
            **(
                {"projection": Projection(cfg.project, cfg.project_seed).to_dict()}
                if cfg.project
                else {}
            ),
            "batch_prompts": cfg.batch_prompts,  # states differ across B within fp tolerance
            **({"refill_window": rw} if (rw := refill_window(cfg)) else {}),
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
    if writer.projection is not None and getattr(cfg, "prune", "none") == "none":
        # A compact store's projection runs on the device inside the loop (either engine): only
        # (T, L, k) per row reaches the host. A prune head reads raw states, so with one the
        # store projects them instead.
        scfg = replace(scfg, project=writer.projection)
    return SamplePlan(scfg, task, prompts, layers, writer, shards, todo)


def save_shard(plan: SamplePlan, k: int, results: list, lm: Any, api_log: str) -> None:
    """Write shard k (atomically) and, with an API log, its part of the log."""
    grades = plan.task.grade(results)
    plan.writer.write_shard(k, results, grades)
    if api_log:
        labels = [[int(label) for _, label in g] for g in grades]
        from hsrm.apilog import write_api_shard

        write_api_shard(plan.writer.path / f"apilog-{k:05d}.jsonl", results, labels, lm)


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


def sample_local(
    cfg: SampleRunConfig, lm: Any = None, progress: bool = True, task: Task | None = None
) -> Store:
    """The local engine of ``hsrm.engines.sample``: sample ``cfg.n`` answers per prompt with
    capture into ``cfg.out`` in this process (``lm``, else ``cfg.model`` loaded); resumes a killed
    run. The Ray engine (``hsrm.scale``) shares every step but the loop. ``task``: see
    ``sample_inputs``."""
    scfg, task, prompts = sample_inputs(cfg, task)
    mc = resolve_model(cfg, lm)
    check_model_resumes(cfg.out, mc)  # before the model loads
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if lm is None:
        lm = load_model(mc)
    check_prompt_lengths(lm, prompts, cfg.max_new_tokens, cfg.task)
    plan = plan_sample(cfg, lm.fingerprint, scfg, task, prompts, mc)
    prune = hook_from_config(cfg, plan.layers, task)
    t0, n_done = time.perf_counter(), 0
    bar = tqdm(
        total=sum(len(plan.shards[k]) for k in plan.todo) * cfg.n,
        desc="sampling",
        unit="sample",
        disable=not progress,
    )
    S, B, n_prompts = cfg.shard_prompts, cfg.batch_prompts, len(prompts)
    W = window_prompts(cfg.batch_prompts, int(plan.writer.meta.get("refill_window", 0)))
    # Batches (refill windows) are aligned to absolute prompt positions ([c*W, (c+1)*W)), so a
    # prompt always shares its batch with the same neighbours (whichever engine samples it) and a
    # resumed run writes byte-identical shards; on resume a window that straddles a finished
    # shard re-samples (and drops) at most W-1 prompts.
    need = {i for k in plan.todo for i in range(k * S, min((k + 1) * S, n_prompts))}
    chunks = [c for c in range(0, n_prompts, W) if need & set(range(c, c + W))]
    got: dict[int, Any] = {}
    pending = list(plan.todo)
    bg = BackgroundWriter(
        lambda k, results: save_shard(plan, k, results, lm, cfg.api_log), depth=cfg.writer_queue
    )
    try:
        for c in chunks:
            res = sample_batch(lm, prompts[c : c + W], plan.scfg, plan.layers, B, prune)
            for i, r in zip(range(c, c + W), res):
                if i in need:
                    got[i] = r
            n_new = sum(1 for i in range(c, min(c + W, n_prompts)) if i in need) * cfg.n
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


def refill_window(cfg: SampleRunConfig) -> int:
    """``cfg.refill_window``, or for ``prune=consensus`` without one, batch_prompts x ceil(n /
    warmup) prompts: its first wave draws ``prune_warmup`` samples a prompt, so it needs that many
    prompts to decode batch_prompts x n rows at once (on seed 14 of the CoT family, with a window
    of 32 it took 361 s against the unpruned run's 566 s, and without 659 s against 617 s)."""
    if cfg.refill_window or getattr(cfg, "prune", "none") != "consensus":
        return cfg.refill_window
    return cfg.batch_prompts * -(-cfg.n // cfg.prune_warmup)
