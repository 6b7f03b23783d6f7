"""Engine choice: where sampling and scoring run, in this process (``local``) or over Ray workers
(``ray``, ``hsrm.scale``; docs/scale.md). Both engines write the same store and the same scores.

This module sits above both: the local engines (``hsrm.sampling.sample_local``,
``hsrm.scoring.Scorer``) and the Ray engine, which reuses their steps, import nothing from here.
Ray itself is imported only when ``engine="ray"`` is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hsrm.errors import HsrmError
from hsrm.sampling import SampleRunConfig, sample_local
from hsrm.scoring import Scorer, store_scores_path, write_store_scores

if TYPE_CHECKING:
    from hsrm.heads.base import Head
    from hsrm.models import LoadedModel
    from hsrm.store import Store

ENGINES = ("local", "ray")


def check_engine(engine: str, lm: Any = None) -> None:
    """Refuse an unknown engine, and a loaded model given to Ray (each worker loads its own)."""
    if engine not in ENGINES:
        raise HsrmError(f"engine: unknown engine {engine!r}; use local or ray")
    if engine == "ray" and lm is not None:
        raise HsrmError("engine='ray' loads the model in each worker from cfg.model; pass no lm")


def sample(cfg: SampleRunConfig, lm: Any = None, progress: bool = True) -> Store:
    """Sample ``cfg.n`` answers per prompt with capture into ``cfg.out``; resumes a killed run.

    ``cfg.engine="ray"`` spreads the shards over Ray workers (``hsrm.scale``, docs/scale.md); the
    store it writes is the same."""
    check_engine(cfg.engine, lm)
    if cfg.engine == "ray":
        from hsrm.scale import sample_ray

        return sample_ray(cfg, progress=progress)
    return sample_local(cfg, lm, progress=progress)


def score_pairs(
    cfg: Any,
    head: Head,
    prompts: Sequence[Any],
    completions: Sequence[str],
    lm: LoadedModel | None = None,
) -> list[float]:
    """One head score per (prompt, completion), teacher-forced; ``cfg``: a ``ScoreConfig``
    (``lm``: the local engine's model, else ``cfg.model`` is loaded)."""
    check_engine(cfg.engine, lm)
    if cfg.engine == "ray":
        from hsrm.scale import score_pairs_ray

        return score_pairs_ray(cfg, head, prompts, completions)
    if lm is None:
        from hsrm.models import load_model

        lm = load_model(cfg)
    return Scorer(lm, head, batch_size=cfg.batch_size).score_pairs(prompts, completions)


def score_store(cfg: Any, out: str | Path | None = None) -> Path:
    """Score every answer of the store ``cfg.store`` with the head ``cfg.head`` (``cfg``: a
    ``ScoreConfig``) from its captured states; writes ``out`` (default
    ``STORE/scores-HEAD.jsonl``) and returns its path."""
    check_engine(cfg.engine)
    out = Path(out) if out else store_scores_path(cfg.store, cfg.head)
    if cfg.engine == "ray":
        from hsrm.scale import score_store as score_store_ray

        return score_store_ray(
            cfg.store,
            cfg.head,
            cfg.workers,
            out=out,
            cpus_per_worker=cfg.cpus_per_worker,
            gpus_per_worker=cfg.gpus_per_worker,
            ray_address=cfg.ray_address,
        )
    from hsrm.heads.base import Head
    from hsrm.store import Store

    store = Store(cfg.store)
    head = Head.load(cfg.head)
    head.check_compatible(store.fingerprint, store.layers)
    write_store_scores(store.records, head.score(store.features()), out)
    return out
