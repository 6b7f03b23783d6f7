"""``hsrm score``: scores of given completions (``--input``) or of a store's answers (``--store``)
with a saved head, on this process or over Ray workers (``engine``).

The scoring itself is ``hsrm.scoring.Scorer``, which the server and the Ray workers share.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hsrm import engines
from hsrm.config import field
from hsrm.errors import HsrmError
from hsrm.heads.base import Head
from hsrm.models import LoadedModel, ModelConfig
from hsrm.scoring import as_messages


@dataclass
class ScoreConfig(ModelConfig):
    """``hsrm score``: teacher-forced head scores for completions hsrm did not sample (the model
    fields are ``ModelConfig``'s; the model must be the one the head was fit on)."""

    head: str = field("", "saved head folder (required)")
    input: str = field("", "JSONL: per line 'prompt' (text) or 'messages', and 'completion'")
    store: str = field(
        "", "a sample store to score every answer of instead (its captured states; no model run)"
    )
    out: str | None = field(
        None, "output JSONL (--input: else standard output; --store: else STORE/scores-HEAD.jsonl)"
    )
    batch_size: int = field(16, "completions per forward pass")
    engine: str = field("local", "local (this process) | ray (Ray workers; docs/scale.md)")
    workers: int = field(
        1, "engine=ray: model replicas (Ray actors), each scoring one prompt's batches"
    )
    cpus_per_worker: float = field(1.0, "engine=ray: CPUs per worker (also its torch threads)")
    gpus_per_worker: float = field(0.0, "engine=ray: GPUs per worker (0.5 = two workers a GPU)")
    ray_address: str = field("", "engine=ray: cluster to join (default $RAY_ADDRESS, else local)")

    def validate(self) -> None:
        if not self.head:
            raise HsrmError("score: --head HEAD/ is required")
        if bool(self.input) == bool(self.store):
            raise HsrmError("score: give one of --input answers.jsonl or --store RUN/")
        if self.batch_size < 1:
            raise HsrmError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.engine not in ("local", "ray"):
            raise HsrmError(f"engine: unknown engine {self.engine!r}; use local or ray")
        if self.workers < 1:
            raise HsrmError(f"workers must be >= 1, got {self.workers}")


def read_score_input(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a score input file, each checked: prompt or messages, and completion."""
    from hsrm.io import read_jsonl

    rows = read_jsonl(path)
    for r in rows:
        where = f"{path}:{r['_line']}"
        has_p, has_m = "prompt" in r, "messages" in r
        if has_p == has_m:
            raise HsrmError(f"{where}: give exactly one of 'prompt' (text) or 'messages'")
        if has_p and not isinstance(r["prompt"], str):
            raise HsrmError(f"{where}: 'prompt' must be a string (use 'messages' for a chat)")
        if has_m:
            try:
                as_messages(r["messages"], "messages")
            except HsrmError as e:
                raise HsrmError(f"{where}: {e}") from None
        if not isinstance(r.get("completion"), str):
            raise HsrmError(f"{where}: missing 'completion' (a string)")
    if not rows:
        raise HsrmError(f"{path}: no rows")
    return rows


def score(cfg: ScoreConfig, lm: LoadedModel | None = None) -> list[dict[str, Any]]:
    """Score every line of ``cfg.input`` (or, with ``cfg.store``, every answer of a store:
    ``score_store``); returns the rows with ``score`` added and writes them to ``cfg.out``
    (atomically) when given. ``cfg.engine="ray"`` spreads the prompts over Ray workers
    (``hsrm.scale``), each holding one model; the scores are the local engine's."""
    from hsrm.io import atomic_write_text

    cfg.validate()
    if cfg.store:
        return score_store(cfg)
    engines.check_engine(cfg.engine, lm)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rows = read_score_input(cfg.input)
    head = Head.load(cfg.head)
    prompts = [r["prompt"] if "prompt" in r else r["messages"] for r in rows]
    completions = [r["completion"] for r in rows]
    scores = engines.score_pairs(cfg, head, prompts, completions, lm)
    out = []
    for r, s in zip(rows, scores):
        row = {k: v for k, v in r.items() if k != "_line"}
        row["score"] = s
        out.append(row)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
    if cfg.out:
        atomic_write_text(cfg.out, text)
    return out


def score_store(cfg: ScoreConfig) -> list[dict[str, Any]]:
    """``hsrm score --store RUN``: the head's score of every answer of a store, from the states
    captured while sampling (``engine="ray"``: over Ray workers, ``hsrm.scale.score_store``);
    written to ``cfg.out`` or ``STORE/scores-HEAD.jsonl``; returns the rows."""
    if cfg.threads and cfg.engine == "local":  # Ray workers set their own
        torch.set_num_threads(cfg.threads)
    out = engines.score_store(cfg, cfg.out)
    return [json.loads(line) for line in out.read_text().splitlines()]


__all__ = ["ScoreConfig", "read_score_input", "score", "score_store"]
