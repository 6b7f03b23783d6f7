"""Iterative DPO: generate → filter → DPO (TRL ``DPOTrainer``, LoRA via PEFT) → evaluate, for R rounds.

Round r samples K answers per training prompt from the current policy (the base model in round 1,
base + round r-1's adapter after), scores them with a head through the *frozen base model* (the
model the head was fit on; the policy's own states drift), builds pairs (``hsrm.prefs.build``),
continues training the one LoRA adapter with DPO (the reference is the base model: the adapter
disabled), and measures per-sample accuracy on held-out prompts. ``round_0`` is the base policy.

Everything a round produces lands under ``out/round_r/`` (``pairs.jsonl``, ``adapter/``,
``metrics.json``, each written atomically, ``metrics.json`` last): a killed run resumes at the first
step whose output is missing. DPO defaults follow TRL (beta 0.1, sigmoid loss); LoRA r=8, alpha=16.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hsrm.capture import SampleConfig, sample_prompt
from hsrm.config import field
from hsrm.errors import HsrmError
from hsrm.heads.base import Head
from hsrm.io import atomic_dir, atomic_write_json
from hsrm.metrics import bootstrap_ci
from hsrm.models import LoadedModel, ModelConfig, load_model
from hsrm.prefs.build import pair_stats, sample_and_score, select_pairs
from hsrm.prefs.data import read_pairs, write_pairs
from hsrm.tasks import get_task
from hsrm.tasks.base import Prompt, Task

log = logging.getLogger(__name__)


@dataclass
class LoopConfig(ModelConfig):
    """``hsrm prefs loop``: iterative DPO on a task with a checker (for evaluation). The model
    fields are ``ModelConfig``'s: the policy and scoring model."""

    head: str | None = field(None, "saved head folder (needed for --select head)")
    task: str = field(
        "synthetic", "task with a checker: synthetic, gsm8k:PATH, bbh:PATH, jsonl:PATH"
    )
    families: str = field("arith,compare", "synthetic task families")
    n_prompts: int = field(64, "training prompts (pairs are built on these)")
    n_eval: int = field(64, "held-out evaluation prompts")
    task_seed: int = field(
        1, "synthetic task seed (hsrm sample's default is 0: use another for a head trained there)"
    )
    seed: int = field(0, "seed: prompt split, sampling, pair choice, LoRA init")
    rounds: int = field(1, "DPO rounds")
    select: str = field("head", "pair rule: head, verifier or random")
    margin: float = field(0.0, "minimum head-score gap between chosen and rejected")
    drop_disagreements: bool = field(
        False, "drop head pairs the verifier ranks the other way (uses labels)"
    )
    k: int = field(8, "answers sampled per training prompt")
    eval_k: int = field(8, "answers sampled per evaluation prompt")
    temperature: float = field(0.8, "sampling temperature (generation and evaluation)")
    max_new_tokens: int = field(6, "answer length limit")
    lora_r: int = field(8, "LoRA rank")
    lora_alpha: int = field(16, "LoRA alpha")
    target_modules: list[str] = field(
        ["q_proj", "k_proj", "v_proj", "o_proj"], "LoRA target modules"
    )
    lora_last_n: int = field(
        0, "adapt only the last N transformer blocks (0: all); cuts backward cost"
    )
    beta: float = field(0.1, "DPO beta (TRL default)")
    lr: float = field(5e-4, "learning rate")
    epochs: float = field(1.0, "DPO epochs over each round's pairs")
    max_steps: int = field(-1, "cap on DPO steps per round (-1: epochs decide)")
    batch_size: int = field(8, "pairs per DPO step")
    out: str = field("runs/dpo", "output folder (resumable)")


def _split_prompts(cfg: LoopConfig, task: Task) -> tuple[list[Prompt], list[Prompt]]:
    """Training and held-out prompts, disjoint by question text."""
    ps = task.prompts()
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(ps))
    train: list[Prompt] = []
    evalp: list[Prompt] = []
    seen: set[str] = set()
    for i in order:
        p = ps[int(i)]
        if len(train) < cfg.n_prompts:
            train.append(p)
            seen.add(p.question)
        elif len(evalp) < cfg.n_eval and p.question not in seen:
            evalp.append(p)
    if len(train) < cfg.n_prompts or len(evalp) < cfg.n_eval:
        raise HsrmError(
            f"task has {len(ps)} prompts; need {cfg.n_prompts} training + {cfg.n_eval} held-out"
        )
    return train, evalp


def evaluate_policy(
    lm: LoadedModel,
    prompts: Sequence[Prompt],
    task: Task,
    k: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    greedy: bool = True,
) -> dict[str, Any]:
    """Per-sample accuracy over ``k`` samples per prompt (mean over prompts, bootstrap CI over
    prompts) and, with ``greedy``, greedy accuracy."""
    per: dict[str, float] = {}
    gre: dict[str, float] = {}
    scfg = SampleConfig(n=k, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    gcfg = SampleConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens, seed=seed)
    last = (lm.fingerprint.n_layers,)
    for p in prompts:
        res = sample_prompt(lm, p, scfg, layers=last, capture=False)
        per[p.id] = float(np.mean([task.label(a.text, p) for a in res.answers]))
        if greedy:
            g = sample_prompt(lm, p, gcfg, layers=last, capture=False).answers[0]
            gre[p.id] = float(task.label(g.text, p))
    acc = float(np.mean(list(per.values())))
    lo, hi = bootstrap_ci(np.array(list(per.values())), seed=seed)
    out: dict[str, Any] = {
        "accuracy": acc,
        "accuracy_ci": [lo, hi],
        "n_prompts": len(per),
        "k": k,
        "per_prompt": per,
    }
    if greedy:
        glo, ghi = bootstrap_ci(np.array(list(gre.values())), seed=seed)
        out.update(
            greedy_accuracy=float(np.mean(list(gre.values()))),
            greedy_ci=[glo, ghi],
            per_prompt_greedy=gre,
        )
    return out


def dpo_train(
    policy_model: Any, tokenizer: Any, pairs_path: Path, cfg: LoopConfig, work_dir: Path
) -> tuple[Any, list[dict[str, Any]]]:
    """One DPO pass of TRL's ``DPOTrainer`` over ``pairs_path`` (read as is by ``datasets``) on a
    PEFT model; returns (the trained PEFT model, TRL's log history)."""
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer

    ds = load_dataset("json", data_files=str(pairs_path), split="train")
    args = DPOConfig(
        output_dir=str(work_dir),
        use_cpu=True if not _cuda() else False,
        per_device_train_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.lr,
        beta=cfg.beta,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=cfg.seed,
        max_length=512,
        precompute_ref_log_probs=True,  # the reference (adapter off) is fixed: one pass per round
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=policy_model, args=args, train_dataset=ds, processing_class=tokenizer
    )
    trainer.train()
    return trainer.model, trainer.state.log_history


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _lora_policy(base: LoadedModel, cfg: LoopConfig, adapter: Path | None) -> Any:
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(cfg.seed)
    if adapter is not None:
        return PeftModel.from_pretrained(base.model, str(adapter), is_trainable=True)
    lc = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
        layers_to_transform=(
            list(range(base.fingerprint.n_layers - cfg.lora_last_n, base.fingerprint.n_layers))
            if cfg.lora_last_n > 0
            else None
        ),
    )
    return get_peft_model(base.model, lc)


def run_loop(
    cfg: LoopConfig,
    *,
    load: Callable[[], LoadedModel] | None = None,
    head: Head | None = None,
    task: Task | None = None,
) -> dict[str, Any]:
    """Run (or resume) the loop; returns ``{"rounds": [metrics of round 0..R]}``.

    ``load`` builds a fresh copy of the model (default ``load_model(cfg)``, ``auto`` settled once
    and recorded in ``loop_config.json``, so a resumed run trains in the same dtype); ``head`` and
    ``task`` override ``cfg.head`` / ``cfg.task`` (for tests and benchmarks)."""
    if cfg.select not in ("head", "verifier", "random"):
        raise HsrmError(f"select must be head, verifier or random, got {cfg.select!r}")
    if cfg.rounds < 0:
        raise HsrmError(f"rounds must be >= 0, got {cfg.rounds}")
    mc = cfg.resolve()
    cfg = replace(cfg, dtype=mc.dtype, device=mc.device)
    load = load or (lambda: load_model(mc))
    if head is None and cfg.head:
        head = Head.load(cfg.head)
    if cfg.select == "head" and head is None:
        raise HsrmError("select='head' needs a head (--head DIR)")
    task = task or get_task(
        cfg.task, n=4 * (cfg.n_prompts + cfg.n_eval), families=cfg.families, seed=cfg.task_seed
    )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, cfg)
    train_p, eval_p = _split_prompts(cfg, task)
    scorer = load()  # frozen: the head's model and the pairs' scorer
    eval_seed = cfg.seed + 1000

    def done(r: int) -> dict[str, Any] | None:
        f = out / f"round_{r}" / "metrics.json"
        return json.loads(f.read_text()) if f.exists() else None

    results = []
    if (m := done(0)) is None:
        t0 = time.time()
        m = {
            "round": 0,
            **evaluate_policy(
                scorer, eval_p, task, cfg.eval_k, cfg.temperature, cfg.max_new_tokens, eval_seed
            ),
        }
        m["eval_s"] = time.time() - t0
        (out / "round_0").mkdir(exist_ok=True)
        atomic_write_json(out / "round_0" / "metrics.json", m)
        log.info("round 0 (base): accuracy %.3f", m["accuracy"])
    results.append(m)
    for r in range(1, cfg.rounds + 1):
        rd = out / f"round_{r}"
        if (m := done(r)) is not None:
            results.append(m)
            continue
        rd.mkdir(exist_ok=True)
        t0 = time.time()
        prev = out / f"round_{r - 1}" / "adapter" if r > 1 else None
        base_copy = load()
        policy = _lora_policy(base_copy, cfg, prev)
        policy_lm = LoadedModel(
            policy.get_base_model().eval(), base_copy.tokenizer, base_copy.fingerprint
        )
        # 1. generate + filter
        pairs_path = rd / "pairs.jsonl"
        if pairs_path.exists():
            pairs = read_pairs(pairs_path)[0]
            stats = {
                "pairs": len(pairs),
                "resumed": True,
                **{f"pair_{k}": v for k, v in pair_stats(pairs).items()},
            }
        else:
            scfg = SampleConfig(
                n=cfg.k,
                temperature=cfg.temperature,
                max_new_tokens=cfg.max_new_tokens,
                seed=cfg.seed + r,
            )
            samples = sample_and_score(
                scorer if r == 1 else policy_lm,
                train_p,
                scfg,
                head=head if cfg.select == "head" else None,
                task=task,
                scoring_lm=None if r == 1 else scorer,
            )
            pairs, sel_stats = select_pairs(
                samples, cfg.select, cfg.margin, cfg.drop_disagreements, seed=cfg.seed + r
            )
            stats = {**sel_stats, **{f"pair_{k}": v for k, v in pair_stats(pairs).items()}}
            stats["sample_accuracy"] = float(
                np.mean([s.labels.mean() for s in samples if s.labels is not None])
            )
            write_pairs(pairs_path, pairs)
        gen_s = time.time() - t0
        if not pairs:
            raise HsrmError(
                f"round {r}: no pairs survived the filter ({stats}); lower --margin or raise --k"
            )
        # 2. DPO
        adapter = rd / "adapter"
        t1 = time.time()
        history: list[dict[str, Any]] = []
        if adapter.exists():
            policy = _lora_policy(load(), cfg, adapter)
        else:
            policy.train()
            policy, history = dpo_train(
                policy, base_copy.tokenizer, pairs_path, cfg, rd / ".trainer"
            )
            with atomic_dir(adapter, "adapter") as tmp:
                policy.save_pretrained(str(tmp))
        train_s = time.time() - t1
        # 3. evaluate
        policy.eval()
        policy_lm = LoadedModel(
            policy.get_base_model().eval(), base_copy.tokenizer, base_copy.fingerprint
        )
        t2 = time.time()
        ev = evaluate_policy(
            policy_lm, eval_p, task, cfg.eval_k, cfg.temperature, cfg.max_new_tokens, eval_seed
        )
        train_logs = [h for h in history if "loss" in h]
        m = {
            "round": r,
            **ev,
            "pairs": stats,
            "train": {
                "steps": len(train_logs),
                "first_loss": train_logs[0]["loss"] if train_logs else None,
                "last_loss": train_logs[-1]["loss"] if train_logs else None,
                "last_reward_accuracy": train_logs[-1].get("rewards/accuracies")
                if train_logs
                else None,
            },
            "gen_s": gen_s,
            "train_s": train_s,
            "eval_s": time.time() - t2,
        }
        atomic_write_json(rd / "metrics.json", m)
        log.info(
            "round %d: %d pairs, accuracy %.3f (base %.3f)",
            r,
            len(pairs),
            m["accuracy"],
            results[0]["accuracy"],
        )
        results.append(m)
    return {"config": dataclasses.asdict(cfg), "rounds": results}


_RESUME_KEYS = (
    "model",
    "dtype",
    "head",
    "task",
    "families",
    "n_prompts",
    "n_eval",
    "seed",
    "task_seed",
    "select",
    "margin",
    "drop_disagreements",
    "k",
    "eval_k",
    "temperature",
    "max_new_tokens",
    "lora_r",
    "lora_alpha",
    "target_modules",
    "lora_last_n",
    "beta",
    "lr",
    "epochs",
    "max_steps",
    "batch_size",
)


def _check_resume(out: Path, cfg: LoopConfig) -> None:
    """A resumed run must use the settings it started with (only ``rounds`` may grow)."""
    f = out / "loop_config.json"
    now = dataclasses.asdict(cfg)
    if f.exists():
        old = json.loads(f.read_text())
        diff = [k for k in _RESUME_KEYS if k in old and old[k] != now[k]]
        if diff:
            raise HsrmError(
                f"{out} holds a run with other settings ({', '.join(f'{k}: {old[k]!r} -> {now[k]!r}' for k in diff)}); "
                "use a new --out or the same settings"
            )
    atomic_write_json(f, now)
