"""The Ray engine: a pool of actors, each holding one loaded model, pulling whole shards.

Design (docs/scale.md has the long form):

* The driver does every check that needs no weights (settings, task file, model fingerprint from the
  config, an out folder holding a different run) with the local engine's own functions
  (``sampling.sample_inputs`` / ``plan_sample``), so bad input fails with the same message before a
  worker starts.
* Workers write their shard files themselves, into the store folder, which must be on a file
  system every worker sees. Hidden states are the bulk of a store (an 8B model: ~270 KB per token at
  fp16 over all layers), so funnelling them through the driver would make one node's network and
  disk the bound; written where they are computed, throughput grows with the file system instead.
  ``StoreWriter.write_shard`` writes each file to a temporary name and renames it (atomic on POSIX
  and on NFS/Lustre/GPFS within one folder), and shard k's files are named by k alone, so a shard
  written twice (a retried worker) replaces itself: never a duplicate record, never a torn file.
* The driver hands out one shard at a time per worker (dynamic, so slow workers take fewer) and
  only one worker holds a shard at once. A worker that dies (process killed, node lost) is restarted
  by Ray and its shard retried (``max_restarts``/``max_task_retries``); one whose restarts are spent
  is dropped and its shard goes to another. At the end the driver removes temporary files a killed
  worker left behind.
* Resume is the local engine's: finished shards are skipped (``StoreWriter.shard_done``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ray
import torch
from tqdm.auto import tqdm

from hsrm.errors import HsrmError

log = logging.getLogger(__name__)

#: How often Ray restarts a dead worker (and retries the shard it held) before the driver drops it.
MAX_RESTARTS = 3
#: Fault injection for tests: worker 0 dies (``os._exit``, as if killed mid-write, leaving a
#: temporary file) when handed its (k+1)-th shard, once per job (not again after its restart).
FAULT_ENV = "HSRM_SCALE_FAULT_AFTER"


# ----------------------------------------------------------------------------------------------
# cluster
LOOPBACK = "127.0.0.1"


def _connect(address: str, num_cpus: float) -> bool:
    """Join ``address`` (or $RAY_ADDRESS), or start a local cluster; True if this call connected
    (and so must disconnect). A caller that already ran ``ray.init`` keeps its cluster."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS", "")
    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kw)
    else:
        # Enough CPUs for the workers asked for, even on a smaller machine (they then share cores).
        # A cluster this process starts is local: it listens on loopback, never on a network
        # interface (its node is this machine; other machines join a cluster started by `ray start`).
        ray.init(num_cpus=max(1, int(num_cpus + 0.999)), _node_ip_address=LOOPBACK, **kw)
    return True


@contextlib.contextmanager
def _cluster(address: str, workers: int, cpus: float, gpus: float) -> Iterator[None]:
    """Connected to a cluster that can place ``workers`` actors of ``cpus`` CPUs and ``gpus`` GPUs
    each (refused with a message otherwise); disconnects after if this call connected."""
    connected = _connect(address, workers * cpus)
    try:
        _check_resources(workers, cpus, gpus)
        yield
    finally:
        if connected:
            ray.shutdown()


def _check_pool_args(workers: int, cpus: float, gpus: float) -> None:
    if workers < 1:
        raise HsrmError(f"workers must be >= 1, got {workers}")
    if cpus <= 0 or gpus < 0:
        raise HsrmError(
            f"cpus_per_worker must be > 0 and gpus_per_worker >= 0, got {cpus} and {gpus}"
        )


def _check_resources(workers: int, cpus: float, gpus: float) -> None:
    """Refuse a pool the cluster can never place (Ray would wait for it forever)."""
    have = ray.cluster_resources()
    for name, per in (("CPU", cpus), ("GPU", gpus)):
        need = workers * per
        if need > have.get(name, 0) + 1e-9:
            raise HsrmError(
                f"workers: {workers} workers x {per:g} {name} = {need:g} {name}s, but the Ray "
                f"cluster has {have.get(name, 0):g}; lower --workers or --{name.lower()}s-per-worker"
            )


def _actor(cls: Any, cpus: float, gpus: float) -> Any:
    """An actor class placed with ``cpus`` / ``gpus`` each, restarted by Ray when it dies (its
    call retried) up to ``MAX_RESTARTS`` times."""
    return cls.options(
        num_cpus=cpus, num_gpus=gpus, max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS
    )


def _unwrap(e: Exception) -> Exception:
    cause = getattr(e, "cause", None)
    if isinstance(cause, HsrmError):
        return HsrmError(str(cause))
    return e


def _run_pool(
    make_actor: Callable[[int], Any],
    n_workers: int,
    items: Sequence[tuple[Any, ...]],
    method: str,
    on_result: Callable[[Any], None],
) -> None:
    """Run ``actor.<method>(*item)`` for every item over ``n_workers`` actors, one item in flight
    per actor; an item whose actor died for good goes back to the queue for another actor."""
    actors = {i: make_actor(i) for i in range(n_workers)}
    queue = collections.deque(items)
    inflight: dict[Any, tuple[int, tuple[Any, ...]]] = {}
    last_death = ""

    def feed() -> None:
        busy = {i for i, _ in inflight.values()}
        for i in actors:
            if i not in busy and queue:
                item = queue.popleft()
                inflight[getattr(actors[i], method).remote(*item)] = (i, item)

    try:
        feed()
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            i, item = inflight.pop(ready[0])
            try:
                res = ray.get(ready[0])
            except ray.exceptions.RayActorError as e:
                # Restarts spent (or the actor could not be created): drop it, requeue its item.
                last_death = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
                log.warning("worker %d died for good (%s); its work goes to another", i, last_death)
                actors.pop(i)
                queue.appendleft(item)
                if not actors:
                    raise HsrmError(
                        f"every Ray worker died ({last_death}); finished shards are kept, rerun "
                        "the same command to resume"
                    ) from None
            except ray.exceptions.RayTaskError as e:
                raise _unwrap(e) from None
            else:
                on_result(res)
            feed()
    finally:
        for a in actors.values():
            ray.kill(a, no_restart=True)


def _remove_temporaries(folder: Path) -> None:
    """Temporary files of workers killed mid-write; called when no worker is writing any more."""
    for pat in (".shard-*.tmp", ".apilog-*.tmp"):
        for p in folder.glob(pat):
            p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# sampling
@ray.remote
class ShardSampler:
    """One model replica: samples whole shards with capture and writes them into the store."""

    def __init__(self, mc: Any, plan: Any, api_log: str, fault_after: int, cfg: Any = None):
        """``mc``: the ``ModelConfig`` the driver resolved (``sampling.resolve_model``: model,
        dtype, device, threads), the one every worker loads, so the store holds one dtype.
        ``plan``: the driver's ``SamplePlan`` without its prompts (a shard's prompts come with
        each call) and with the writer as (path, meta), so the arguments stay small and travel
        inline, safe for restarts. ``cfg``: the run's ``SampleRunConfig``, for its early-pruning
        settings (the prefix head is loaded from its folder, which workers must see)."""
        from hsrm.models import load_model, loaded_config

        plan = dataclasses.replace(plan, writer=_shard_writer(*plan.writer))
        self.lm = load_model(mc)
        want = plan.writer.meta["fingerprint"]
        if self.lm.fingerprint.to_dict() != want:
            raise HsrmError(
                f"worker loaded {self.lm.fingerprint.short()} but the store expects {want}"
            )
        got = loaded_config(self.lm).dtype
        if got != plan.writer.meta.get("model_dtype", got):  # never samples what it won't record
            raise HsrmError(
                f"worker loaded the model in {got} but the store records "
                f"model_dtype={plan.writer.meta['model_dtype']!r}"
            )
        self.plan, self.api_log = plan, api_log
        from hsrm.capture.windows import window_prompts

        self.batch_prompts = int(plan.writer.meta.get("batch_prompts", 1))
        self.window = window_prompts(
            self.batch_prompts, int(plan.writer.meta.get("refill_window", 0))
        )
        self.fault_after, self.done = fault_after, 0
        from hsrm.capture.prune import hook_from_config

        self.prune = hook_from_config(cfg, plan.layers, plan.task) if cfg is not None else None

    def sample_shard(
        self, k: int, window: list, start: int, lo: int, hi: int
    ) -> tuple[int, int, bool]:
        """Sample and write shard k (prompts at positions [lo, hi); ``window``: the prompts of the
        aligned batches that cover it, from position ``start``); returns (k, samples written,
        whether this actor was restarted after a death)."""
        from hsrm.capture.windows import sample_window
        from hsrm.sampling import save_shard

        plan = self.plan
        if 0 <= self.fault_after <= self.done and not _restarted():
            self._die_mid_write(k)
        results = sample_window(
            self.lm,
            window,
            start,
            lo,
            hi,
            self.window,
            plan.scfg,
            plan.layers,
            self.batch_prompts,
            prune=self.prune,
        )
        save_shard(plan, k, results, self.lm, self.api_log)
        self.done += 1
        return k, sum(len(r.answers) for r in results), _restarted()

    def _die_mid_write(self, k: int) -> None:
        fd, _ = tempfile.mkstemp(
            dir=self.plan.writer.path, prefix=f".shard-{k:05d}.safetensors.", suffix=".tmp"
        )
        os.write(fd, b"half a shard")
        os._exit(1)


def _shard_writer(path: str, meta: dict[str, Any]) -> Any:
    """The driver's store writer as a worker uses it: ``write_shard`` into ``path`` and nothing
    else. Built without ``StoreWriter.__init__``, whose job (checking the run's settings, cleaning
    stale temporaries, holding the store for one writer) is the driver's: it holds the store for
    the whole job, and a worker cleaning temporaries would delete another worker's."""
    from hsrm.projection import Projection
    from hsrm.store import StoreWriter

    w = StoreWriter.__new__(StoreWriter)
    w.path, w.meta = Path(path), meta
    w.projection = Projection.from_dict(meta.get("projection"))
    return w


def _restarted() -> bool:
    """Whether this actor is a restart of one that died."""
    with warnings.catch_warnings():  # Ray 2.60 warns about an API this property uses inside
        warnings.simplefilter("ignore")
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def sample_ray(cfg: Any, progress: bool = True) -> Any:
    from hsrm.capture.windows import batch_window, window_prompts
    from hsrm.sampling import finish_sample, plan_sample, resolve_model, sample_inputs
    from hsrm.scale.fingerprint import model_fingerprint

    _check_pool_args(cfg.workers, cfg.cpus_per_worker, cfg.gpus_per_worker)
    # Every check the local engine makes, with its messages, before any worker starts; the model
    # settled once here (`auto` included) and handed to every worker.
    scfg, task, prompts = sample_inputs(cfg)
    mc = dataclasses.replace(
        resolve_model(cfg), threads=cfg.threads or max(1, int(cfg.cpus_per_worker))
    )
    plan = plan_sample(cfg, model_fingerprint(cfg.model), scfg, task, prompts, mc)
    t0, n_done = time.perf_counter(), 0
    if plan.todo:
        n_workers = min(cfg.workers, len(plan.todo))
        with _cluster(cfg.ray_address, n_workers, cfg.cpus_per_worker, cfg.gpus_per_worker):
            fault = int(os.environ.get(FAULT_ENV, "-1"))
            slim = dataclasses.replace(
                plan,
                prompts=[],
                shards=[],
                todo=[],
                writer=(str(plan.writer.path), plan.writer.meta),  # type: ignore[arg-type]
            )
            bar = tqdm(
                total=sum(len(plan.shards[k]) for k in plan.todo) * cfg.n,
                desc=f"sampling ({n_workers} Ray workers)",
                unit="sample",
                disable=not progress,
            )

            def make(i: int) -> Any:
                return _actor(ShardSampler, cfg.cpus_per_worker, cfg.gpus_per_worker).remote(
                    mc, slim, cfg.api_log, fault if i == 0 else -1, cfg
                )

            warned = False

            def done(res: tuple[int, int, bool]) -> None:
                nonlocal n_done, warned
                n_done += res[1]
                bar.update(res[1])
                if res[2] and not warned:  # once: later shards of that actor say so too
                    log.warning("a Ray worker died and was restarted; Ray retried its shard")
                    warned = True

            try:
                S, N = cfg.shard_prompts, len(plan.prompts)
                B = window_prompts(cfg.batch_prompts, int(plan.writer.meta.get("refill_window", 0)))
                items = []
                for k in plan.todo:
                    a, b = batch_window(k, S, B, N)
                    items.append((k, plan.prompts[a:b], a, k * S, min((k + 1) * S, N)))
                _run_pool(make, n_workers, items, "sample_shard", done)
            finally:
                bar.close()
                _remove_temporaries(plan.writer.path)
    return finish_sample(cfg, plan, n_done, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# scoring
@ray.remote
class StoreScorer:
    """Opens the store (memory-mapped, on the shared file system) and the head once."""

    def __init__(self, store_path: str, head_path: str, threads: int):
        from hsrm.heads.base import Head
        from hsrm.store import Store

        torch.set_num_threads(threads)
        self.store = Store(store_path)
        self.head = Head.load(head_path)

    def score(self, idx: list[int]) -> tuple[list[int], list[float]]:
        return idx, self.head.score(self.store.features(idx)).tolist()


def score_store(
    store_path: str | Path,
    head_path: str | Path,
    workers: int = 1,
    *,
    out: str | Path | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    ray_address: str = "",
    progress: bool = True,
) -> Path:
    import numpy as np

    from hsrm.heads.base import Head
    from hsrm.scoring import store_scores_path, write_store_scores
    from hsrm.store import Store

    _check_pool_args(workers, cpus_per_worker, gpus_per_worker)
    store = Store(store_path)
    head = Head.load(head_path)
    head.check_compatible(store.fingerprint, store.layers)  # before any worker starts
    out = Path(out) if out else store_scores_path(store_path, head_path)
    # One work item per shard: the records a worker reads then sit in one file.
    by_shard: dict[int, list[int]] = collections.defaultdict(list)
    for i, r in enumerate(store.records):
        by_shard[r["shard"]].append(i)
    items = [(idx,) for _, idx in sorted(by_shard.items())]
    scores = np.full(len(store), np.nan)
    n_workers = max(1, min(workers, len(items)))
    if items:
        with _cluster(ray_address, n_workers, cpus_per_worker, gpus_per_worker):
            bar = tqdm(total=len(store), desc="scoring", unit="answer", disable=not progress)

            def make(i: int) -> Any:
                return _actor(StoreScorer, cpus_per_worker, gpus_per_worker).remote(
                    str(store_path), str(head_path), max(1, int(cpus_per_worker))
                )

            def done(res: tuple[list[int], list[float]]) -> None:
                scores[res[0]] = res[1]
                bar.update(len(res[0]))

            try:
                _run_pool(make, n_workers, items, "score", done)
            finally:
                bar.close()
    write_store_scores(store.records, scores, out)
    log.info("scored %d answers with %s -> %s", len(store), head_path, out)
    return out


# ----------------------------------------------------------------------------------------------
# scoring given completions (teacher forcing)
@ray.remote
class PairScorer:
    """One model replica and the head: teacher-forces (prompt, completion) pairs and scores them
    (``hsrm.scoring.Scorer``, the local engine's code)."""

    def __init__(self, mc: Any, head_path: str, batch_size: int):
        """``mc``: the driver's resolved ``ModelConfig``, the same for every worker."""
        from hsrm.models import load_model
        from hsrm.scoring import Scorer

        lm = load_model(mc)
        self.scorer = Scorer(lm, head_path, batch_size=batch_size)

    def score(
        self, idx: list[int], prompts: list[Any], completions: list[str]
    ) -> tuple[list[int], list[float]]:
        return idx, self.scorer.score_pairs(prompts, completions)


def pair_items(
    prompts: Sequence[Any], completions: Sequence[str], batch_size: int
) -> list[tuple[list[int], list[Any], list[str]]]:
    """Work items of (row indices, prompts, completions): one prompt's completions in input order,
    cut every ``batch_size`` rows, so each item is one of the local engine's forward passes."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(prompts):
        key = ("text", p) if isinstance(p, str) else ("messages", json.dumps(p, sort_keys=True))
        groups.setdefault(key, []).append(i)
    items = []
    for rows in groups.values():
        for c in range(0, len(rows), batch_size):
            idx = rows[c : c + batch_size]
            items.append((idx, [prompts[i] for i in idx], [completions[i] for i in idx]))
    return items


def score_pairs(
    cfg: Any, head: Any, prompts: Sequence[Any], completions: Sequence[str], progress: bool = True
) -> list[float]:
    from hsrm.scale.fingerprint import model_fingerprint
    from hsrm.scoring import check_head_fingerprint

    _check_pool_args(cfg.workers, cfg.cpus_per_worker, cfg.gpus_per_worker)
    # the head against the model, from its config alone, before any worker loads the weights
    check_head_fingerprint(model_fingerprint(cfg.model), head, cfg.head)
    items = pair_items(prompts, completions, cfg.batch_size)
    scores = [float("nan")] * len(prompts)
    n_workers = max(1, min(cfg.workers, len(items)))
    mc = dataclasses.replace(
        cfg.resolve_workers(cfg.gpus_per_worker),
        threads=cfg.threads or max(1, int(cfg.cpus_per_worker)),
    )
    with _cluster(cfg.ray_address, n_workers, cfg.cpus_per_worker, cfg.gpus_per_worker):
        bar = tqdm(total=len(prompts), desc="scoring", unit="completion", disable=not progress)

        def make(i: int) -> Any:
            return _actor(PairScorer, cfg.cpus_per_worker, cfg.gpus_per_worker).remote(
                mc, str(cfg.head), cfg.batch_size
            )

        def done(res: tuple[list[int], list[float]]) -> None:
            for i, v in zip(*res):
                scores[i] = v
            bar.update(len(res[0]))

        try:
            _run_pool(make, n_workers, items, "score", done)
        finally:
            bar.close()
    return scores
