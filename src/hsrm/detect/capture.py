"""``hsrm detect capture``: sample (or teacher-force) answers and write them, labelled, into a store.

Sampled answers go through the one sampling path (``hsrm.sampling.sample_local``: the same
decoding options, store layout and resumption as ``hsrm sample``), with the task built here
(``detect.data.make_task``: TruthfulQA's ROUGE-L labelling rule is not a ``hsrm sample`` option).
TruthfulQA's reference answers (``truthfulqa-refs``) are teacher-forced instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from hsrm.capture import PromptResult, parse_layers, teacher_force
from hsrm.config import field
from hsrm.detect.data import make_task
from hsrm.errors import HsrmError
from hsrm.models import LoadedModel, ModelConfig, loaded_config
from hsrm.sampling import SampleRunConfig, sample_local
from hsrm.store import Store, StoreWriter
from hsrm.tasks.base import Task
from hsrm.tasks.rouge import DEFAULT_ROUGE_THRESHOLD
from hsrm.tasks.truthfulqa import TruthfulQATask


@dataclass
class CaptureConfig(ModelConfig):
    """What ``hsrm detect capture`` records. Defaults: short answers that fit a CPU budget. The
    model fields are ``ModelConfig``'s."""

    out: str = field("runs/detect", "store folder to write (resumable)")

    source: str = field(
        "synthetic",
        "synthetic | gsm8k:PATH | truthfulqa:PATH | truthfulqa-refs:PATH | any task spec",
    )
    n_prompts: int = field(200, "questions to use (the first N; synthetic: how many to generate)")
    n: int = field(4, "sampled answers per question (ignored for truthfulqa-refs)")
    temperature: float = field(0.7, "sampling temperature (0 = greedy)")
    top_p: float = field(1.0, "nucleus sampling threshold", min=0.0, max=1.0)
    top_k: int = field(0, "keep only the k most likely tokens (0 = off)", min=0)
    min_p: float = field(
        0.0, "drop tokens below min_p x the top token's probability (0 = off)", min=0.0, max=1.0
    )
    stop: list[str] = field([], "stop strings: an answer ends where one appears")
    max_new_tokens: int = field(24, "answer length cap in tokens")
    layers: str = field("every:10", "hidden states to keep; HARP needs the last (n_layers)")
    refs_per_side: int = field(2, "truthfulqa-refs: correct and incorrect references per question")
    rouge_threshold: float = field(
        DEFAULT_ROUGE_THRESHOLD, "truthfulqa: ROUGE-L threshold of the labelling rule"
    )
    shots: int = field(
        3,
        "few-shot examples before the question (truthfulqa: the QA primer, 0-3; gsm8k, bbh: "
        "drawn from the same file)",
        min=0,
    )
    shard_prompts: int = field(50, "questions per store shard")
    seed: int = field(0, "sampling / task seed")


def sample_run_config(cfg: CaptureConfig, out: str | Path) -> SampleRunConfig:
    """The ``hsrm sample`` settings of a sampled capture. One prompt per decode batch, as this
    command always sampled: its states are then the ones it recorded before (batching changes
    them within floating-point tolerance)."""
    return SampleRunConfig(
        out=str(out),
        model=cfg.model,
        task=cfg.source,
        n_prompts=cfg.n_prompts,
        shots=cfg.shots,
        task_seed=cfg.seed,
        n=cfg.n,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        min_p=cfg.min_p,
        stop=list(cfg.stop),
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
        layers=cfg.layers,
        store_dtype="float16",
        pool="none",
        shard_prompts=cfg.shard_prompts,
        batch_prompts=1,
    )


def capture(lm: LoadedModel, cfg: CaptureConfig, out: str | Path | None = None) -> Store:
    """Sample (or teacher-force) answers and write them, labelled, into a store at ``out``
    (default: ``cfg.out``).

    Resumable: finished shards are kept. Unlabelled TruthfulQA answers are stored with
    ``extracted=None`` and dropped by ``load_labelled``."""
    out = cfg.out if out is None else out
    task = make_task(cfg.source, cfg.n_prompts, cfg.rouge_threshold, cfg.seed, cfg.shots)
    if isinstance(task, TruthfulQATask) and task.mode == "refs":
        return _teacher_force_refs(lm, cfg, task, out)
    scfg = sample_run_config(cfg, out)
    # The model is loaded already: the store records what it runs as (never `auto`).
    placed = loaded_config(lm)
    scfg.dtype, scfg.device = placed.dtype, placed.device
    return sample_local(scfg, lm, task=task)


def _teacher_force_refs(lm: LoadedModel, cfg: CaptureConfig, task: Task, out: str | Path) -> Store:
    """TruthfulQA's references, ``refs_per_side`` correct then as many incorrect per question,
    teacher-forced and labelled by which side they came from."""
    prompts = task.prompts()[: cfg.n_prompts]
    if not prompts:
        raise HsrmError(f"source {cfg.source!r} gave no prompts")
    layers = parse_layers(cfg.layers, lm.fingerprint.n_layers)
    writer = StoreWriter(
        out,
        {
            "fingerprint": lm.fingerprint.to_dict(),
            "layers": list(layers),
            "task": task.describe(),
            "sampling": {"mode": "teacher_force", "refs_per_side": cfg.refs_per_side},
            "dtype": "float16",
            # resolved, as `hsrm sample` records them: a store is never resumed in another
            "model_dtype": loaded_config(lm).dtype,
            "model_device": loaded_config(lm).device,
            "pool": "none",
            "shard_prompts": cfg.shard_prompts,
        },
    )
    S = cfg.shard_prompts
    n_shards = (len(prompts) + S - 1) // S
    bar = tqdm(total=len(prompts), desc=f"capture {cfg.source.split(':')[0]}", unit="q")
    for k in range(n_shards):
        chunk = prompts[k * S : (k + 1) * S]
        if writer.shard_done(k, [p.id for p in chunk]):
            bar.update(len(chunk))
            continue
        results = []
        for p in chunk:
            answers = list(p.meta["correct"][: cfg.refs_per_side]) + list(
                p.meta["incorrect"][: cfg.refs_per_side]
            )
            results.append(PromptResult(p, teacher_force(lm, p, answers, layers), None))
            bar.update(1)
        writer.write_shard(k, results, task.grade(results))
    bar.close()
    writer.finish()
    return Store(out)
