"""Scale-out on Ray: sampling with capture, and scoring, over many workers into one ordinary store.

``sample_ray(cfg)`` is what ``hsrm sample --engine ray`` (``SampleRunConfig(engine="ray")``) runs;
``score_pairs_ray`` is what ``hsrm score --engine ray`` runs (given completions, teacher-forced);
``score_store(store, head, workers)`` scores every record of a store with a saved head and writes
``RUN/scores-<head>.jsonl``. See docs/scale.md for the design and its bounds.

Ray is imported only here (extra ``hsrm[scale]``), never on the local engine's path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hsrm.errors import HsrmError

if TYPE_CHECKING:
    from hsrm.heads.base import Head
    from hsrm.sampling import SampleRunConfig
    from hsrm.store import Store

__all__ = ["model_fingerprint", "sample_ray", "score_pairs_ray", "score_store"]


def _engine():
    try:
        from hsrm.scale import ray_engine
    except ImportError as e:
        if e.name != "ray" and not str(e.name or "").startswith("ray."):
            raise
        raise HsrmError(
            "engine 'ray' needs Ray: pip install 'hsrm[scale]' (or pip install 'ray>=2.40,<3')"
        ) from None
    return ray_engine


def sample_ray(cfg: SampleRunConfig, progress: bool = True) -> Store:
    """Sample ``cfg`` over ``cfg.workers`` Ray actors; the same store the local engine writes."""
    return _engine().sample_ray(cfg, progress=progress)


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
    """Score every record of a store with a saved head over ``workers`` Ray actors.

    Writes one JSON line per record, in store order (``prompt_id``, ``sample``, ``score``), to
    ``out`` (default ``STORE/scores-<head folder name>.jsonl``), atomically; returns its path.
    """
    return _engine().score_store(
        store_path,
        head_path,
        workers,
        out=out,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
        ray_address=ray_address,
        progress=progress,
    )


def score_pairs_ray(
    cfg: Any,
    head: Head,
    prompts: Sequence[Any],
    completions: Sequence[str],
    progress: bool = True,
) -> list[float]:
    """Teacher-forced head scores of (prompt, completion) pairs over ``cfg.workers`` Ray actors,
    each holding one model (``hsrm score --engine ray``); one score per pair, in input order.
    ``cfg``: the command's ``hsrm.score.ScoreConfig`` (a module above this one, so not imported).

    The head is checked against the model's fingerprint (from its config) before any worker
    starts; each prompt's completions go to one worker in the local engine's batches."""
    return _engine().score_pairs(cfg, head, prompts, completions, progress=progress)


def model_fingerprint(name: str) -> Any:
    """The fingerprint ``load_model(name)`` would give, from the config alone (no weights read)."""
    from hsrm.scale.fingerprint import model_fingerprint as mf

    return mf(name)
