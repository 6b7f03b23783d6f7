"""``import_generations``: generations read (``readers``) and their features built (``forcing``)
into a store, written as ``hsrm sample`` writes one (``StoreWriter`` through the background
``BackgroundWriter``, shard by shard, locked, resumable)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from hsrm.capture import PromptResult, parse_layers
from hsrm.config import field, validate
from hsrm.errors import HsrmError
from hsrm.features import TOPK_LAYER
from hsrm.importing.forcing import (
    SourceConfig,
    forced_answers,
    load_source_model,
    logged_answers,
    make_source_task,
    resolve_ids,
    source_model,
)
from hsrm.importing.readers import LABELS, TextPrompt, grade_requests, read_generations
from hsrm.io import check_out, read_json
from hsrm.sampling import check_model_resumes
from hsrm.shardwriter import BackgroundWriter
from hsrm.store import DTYPES, POOLS, Store, StoreWriter

log = logging.getLogger(__name__)


@dataclass
class ImportConfig(SourceConfig):
    out: str = field("runs/import", "output folder of the store (resumes if it exists)")
    labels: str = field(
        "auto", "labels: auto (a labels field, else the checker) | field | task (the checker)"
    )
    layers: str = field("all", "hidden states to keep: all | every:K | mid | last | 0,4,8")
    store_dtype: str = field("float16", "storage dtype: float16 | bfloat16 | int8 | fp8")
    pool: str = field("none", "none (per token) | mean | last (one vector per answer)")
    shard_prompts: int = field(16, "prompts per shard (the unit of resumption)", min=1)
    writer_queue: int = field(
        2, "shards that may wait for the background writer (0 = write synchronously)", min=0
    )


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_generations(cfg: ImportConfig, lm: Any = None, progress: bool = True) -> Any:
    """Read ``cfg.input`` into the store ``cfg.out`` (a normal store: ``hsrm train`` / ``evaluate``
    read it); resumes a killed import. Returns the ``Store``."""
    validate(cfg, "import")
    if not cfg.input:
        raise HsrmError("import: --input GENERATIONS.jsonl is required")
    # the settings a model load would otherwise wait for are checked first
    if cfg.store_dtype not in DTYPES:
        raise HsrmError(f"store_dtype: unknown {cfg.store_dtype!r}; use one of {DTYPES}")
    if cfg.pool not in POOLS:
        raise HsrmError(f"pool: unknown {cfg.pool!r}; use one of {POOLS}")
    if cfg.labels not in LABELS:
        raise HsrmError(f"labels: unknown source {cfg.labels!r}; use one of {LABELS}")
    check_out(cfg.out, "store")
    mc = source_model(cfg, lm)
    if mc is not None:  # before the model loads: a store is resumed in its dtype and device only
        _check_not_logged(cfg.out)
        check_model_resumes(cfg.out, mc)
    task = make_source_task(cfg)
    prompts = {p.id: p for p in task.prompts()} if task else {}
    fmt, reqs = read_generations(cfg.input, cfg.format, cfg.requests, prompts)
    grades = grade_requests(reqs, task, cfg.labels)
    # what the store's contents depend on (the resume key: the same bytes, read the same way; the
    # files may have moved), then where they came from (recorded, never compared)
    key = {
        "source": "import",
        "format": fmt,
        "input_sha256": _sha256(cfg.input),
        **({"requests_sha256": _sha256(cfg.requests)} if cfg.requests else {}),
        "labels": cfg.labels,
    }
    source = {
        "input": str(cfg.input),
        **({"requests": str(cfg.requests)} if cfg.requests else {}),
        "engine_models": sorted({r.model for r in reqs if r.model}),
    }
    # Everything below the reading is checked before the store is created, so a bad input line or
    # a token the model does not know leaves nothing behind.
    lm = load_source_model(cfg, mc, lm)
    if lm is not None:
        ids = resolve_ids(lm, reqs)
        fp, layers = lm.fingerprint, parse_layers(cfg.layers, lm.fingerprint.n_layers)
        features = "teacher_forced"
        logged = None
    else:
        logged, k, fp = logged_answers(reqs, cfg.top_logprobs)
        layers, features = (TOPK_LAYER,), f"logged_top{k}_logprobs"
    writer = StoreWriter(
        cfg.out,
        {
            "fingerprint": fp.to_dict(),
            "layers": list(layers),
            "task": task.describe() if task else {"name": "import"},
            "sampling": {**key, "features": features},
            "dtype": cfg.store_dtype,
            # what the model ran as, resolved (never `auto`; "none": no model ran, the features
            # are the log's), as `hsrm sample` records it: one store never mixes dtypes or devices
            "model_dtype": mc.dtype if mc is not None else "none",
            "model_device": mc.device.split(":", 1)[0] if mc is not None else "none",
            "pool": cfg.pool,
            "shard_prompts": cfg.shard_prompts,
        },
    )
    S = cfg.shard_prompts
    shards = [list(range(i, min(i + S, len(reqs)))) for i in range(0, len(reqs), S)]
    todo = [k for k, sh in enumerate(shards) if not writer.shard_done(k, [reqs[i].id for i in sh])]
    if len(todo) < len(shards):
        log.info(
            "resuming %s: %d of %d shards already done",
            cfg.out,
            len(shards) - len(todo),
            len(shards),
        )
    bar = tqdm(
        total=sum(len(reqs[i].choices) for k in todo for i in shards[k]),
        desc="importing",
        unit="answer",
        disable=not progress,
    )
    bg = BackgroundWriter(writer.write_shard, depth=cfg.writer_queue)
    t0, n_done, n_tok = time.perf_counter(), 0, 0
    try:
        for k in todo:
            results = []
            for i in shards[k]:
                r = reqs[i]
                prompt = r.prompt or TextPrompt(r.id, (), "", meta={"source": r.where})
                if logged is not None:
                    answers = logged[i]
                else:
                    answers = forced_answers(lm, prompt, ids[i], layers, cfg.batch_size)
                for c, a in zip(r.choices, answers):
                    a.text = c.text  # the engine's text, as it returned it
                    a.extra.setdefault("stop", c.finish_reason)
                results.append(PromptResult(prompt=prompt, answers=answers, prompt_hidden=None))
                n_done += len(answers)
                n_tok += sum(int(a.logprobs.shape[0]) for a in answers)
                bar.update(len(answers))
            bg.submit(k, results, [grades[i] for i in shards[k]])
        bg.close()
    except BaseException:
        # the shards written so far stay (complete: false, resumable); the lock is released
        with contextlib.suppress(BaseException):
            bg.close()
        writer.close()
        raise
    finally:
        bar.close()
    dt = time.perf_counter() - t0
    writer.finish(
        {
            "import": {**key, **source, "features": features, "requests": len(reqs)},
            "last_run": {
                "samples": n_done,
                "tokens": n_tok,
                "seconds": dt,
                "writer_wait_s": bg.idle_s,
            },
        }
    )
    store = Store(cfg.out)
    log.info(
        "store %s: %d answers of %d requests imported (%s), %.0f answers/s this run",
        cfg.out,
        len(store),
        len(reqs),
        features,
        n_done / dt if dt > 0 else 0,
    )
    return store


def _check_not_logged(out: str) -> None:
    """A store imported without a model (logged log-probs) is not resumed teacher-forced: said
    here, before the model loads, instead of as a dtype to resume with (``check_model_resumes``)."""
    mp = Path(out) / "meta.json"
    old = read_json(mp, "store meta.json") if mp.exists() else None
    if isinstance(old, dict) and old.get("model_dtype") == "none":
        raise HsrmError(
            f"{mp}: the store holds logged log-probs (imported without --model); import "
            "teacher-forced into another --out"
        )
