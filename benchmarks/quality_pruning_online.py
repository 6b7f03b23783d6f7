"""Online early pruning on the CoT family (`bench_quality.py --prune-online`).

A prefix head (``hsrm.prune_online.fit_prefix_head``, checkpoints 4 and 8 answer tokens) is fitted
on a fully sampled CoT store (``--cot-train``, its own task seed). Then the same prompts of another
task seed are sampled with ``hsrm.pipeline.sample`` four times: no pruning, ``--prune head``,
``--prune deepconf`` and ``--prune random`` (same checkpoints and share as the head). Reported per
run: answer tokens generated, wall time, and BoN@16 over the samples that finished (pruned ones are
never picked) with three selectors, with bootstrap CIs over prompts.

The sampler draws each prompt's uniforms up front, one stream per prompt and column per sample, so
a sample that is not pruned has the same tokens as in the unpruned run (up to floating-point
ties): the runs differ only in which samples they stop.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from hsrm import metrics as M
from hsrm.pipeline import SampleRunConfig, sample
from hsrm.prune import select
from hsrm.prune_online import fit_prefix_head
from hsrm.scorers import lowest_group_confidence
from hsrm.store import Store

SELECTORS = ("mean_logprob", "majority", "deepconf_vote")


def bon_finished(st: Store, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """BoN over each prompt's finished samples, per selector, with bootstrap CIs over prompts."""
    recs = st.records
    rng = np.random.default_rng(seed)
    per: dict[str, list[float]] = {s: [] for s in SELECTORS}
    oracle = []
    for rows in M.by_group(st.prompt_ids).values():
        done = np.array([r for r in rows if recs[r].get("stop") != "pruned"])
        y = st.labels[done]
        sc = {
            "mean_logprob": np.array([recs[i]["mean_logprob"] for i in done]),
            "confidence": np.array(
                [lowest_group_confidence(st.token_stat(int(i), "confidence").float()) for i in done]
            ),
        }
        ans = [recs[i]["extracted"] for i in done]
        for s in SELECTORS:
            per[s].append(select(s, ans, y, sc, rng))
        oracle.append(float(y.max()))
    out = {
        s: {"bon": float(np.mean(v)), "ci": list(M.bootstrap_ci(np.array(v), n_boot, seed=seed))}
        for s, v in per.items()
    }
    out["oracle_finished"] = {"bon": float(np.mean(oracle))}
    return out


def prune_online(args) -> dict[str, Any]:
    train = Store(args.cot_train)
    t0 = time.perf_counter()
    head = fit_prefix_head(train, checkpoints=(4, 8))
    head_dir = Path(args.cache) / "cot_prefix_head"
    head.save(head_dir)
    fit_s = time.perf_counter() - t0
    base = dict(
        task="synthetic:cot",
        n_prompts=args.cot_prompts,
        task_seed=args.cot_task_seed,
        seed=args.cot_task_seed,
        fewshot="per_prompt",
        layers=",".join(str(x) for x in train.layers),
        max_new_tokens=40,
        shard_prompts=8,
        threads=1,
        n=16,
    )
    runs = {
        "none": {},
        "head": {"prune": "head", "prune_head": str(head_dir), "prune_checkpoints": "4,8"},
        "random": {"prune": "random", "prune_checkpoints": "4,8"},
        "deepconf": {"prune": "deepconf", "prune_warmup": 4, "prune_window": 8, "prune_eta": 90.0},
    }
    out: dict[str, Any] = {
        "train_store": args.cot_train,
        "train_prompts": int(len(set(train.prompt_ids))),
        "head_fit_s": fit_s,
        "settings": base,
        "runs": {},
    }
    for name, kw in runs.items():
        cfg = SampleRunConfig(out=str(Path(args.cache) / f"cot_online_{name}"), **base, **kw)
        meta_p = Path(cfg.out) / "meta.json"
        before = json.loads(meta_p.read_text()).get("last_run", {}) if meta_p.exists() else {}
        st = sample(cfg, progress=False)
        last = st.meta.get("last_run", {})
        # sampling seconds of the run that drew the samples (a finished store is not redrawn)
        wall = float((last if last.get("samples") else before).get("seconds", float("nan")))
        recs = st.records
        r = {
            "config": kw,
            "tokens": int(sum(x["n_tokens"] for x in recs)),
            "pruned": int(sum(x.get("stop") == "pruned" for x in recs)),
            "samples": len(recs),
            "prompts": int(len(set(st.prompt_ids))),
            "wall_s": wall,
            "mean_accuracy": float(st.labels.mean()),
            "pass_at_16": float(
                np.mean([st.labels[g].max() for g in M.by_group(st.prompt_ids).values()])
            ),
            "bon": bon_finished(st, args.n_boot),
        }
        out["runs"][name] = r
        print(
            name,
            {k: v for k, v in r.items() if k != "bon"},
            {s: round(b["bon"], 3) for s, b in r["bon"].items()},
            flush=True,
        )
    full = out["runs"]["none"]["tokens"]
    for r in out["runs"].values():
        r["saved"] = 1 - r["tokens"] / full
    return out


def online_md(out: dict[str, Any]) -> str:
    runs = out["runs"]
    n = runs["none"]
    lines = [
        "### Online early pruning on the CoT family (`hsrm sample --prune`)",
        "",
        f"Prefix head fitted on {out['train_prompts']} CoT prompts x 16 ({out['train_store']}); "
        f"tested on {n['prompts']} prompts x 16 of task seed {out['settings']['task_seed']}. "
        f"Without pruning: mean accuracy {n['mean_accuracy']:.3f}, pass@16 {n['pass_at_16']:.3f}.",
        "",
        "| policy | tokens | saved | pruned samples | wall s | "
        + " | ".join(f"BoN@16 {s} [95% CI]" for s in SELECTORS)
        + " |",
        "|" + "---|" * (5 + len(SELECTORS)),
    ]
    for name, r in runs.items():
        cells = " | ".join(
            f"{r['bon'][s]['bon']:.3f} [{r['bon'][s]['ci'][0]:.3f}, {r['bon'][s]['ci'][1]:.3f}]"
            for s in SELECTORS
        )
        lines.append(
            f"| {name} | {r['tokens']} | {r['saved']:.0%} | {r['pruned']} | {r['wall_s']:.0f} | "
            f"{cells} |"
        )
    return "\n".join(lines) + "\n"


def plot_online(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SELECTORS), figsize=(4 * len(SELECTORS), 3.6), sharey=True)
    for ax, s in zip(axes, SELECTORS):
        for name, r in out["runs"].items():
            b = r["bon"][s]
            ax.errorbar(
                r["tokens"], b["bon"], yerr=[[b["bon"] - b["ci"][0]], [b["ci"][1] - b["bon"]]],
                fmt="o", capsize=3, label=name,
            )  # fmt: skip
        ax.set_title(f"selector: {s}")
        ax.set_xlabel("answer tokens generated")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("BoN@16 (finished samples)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
