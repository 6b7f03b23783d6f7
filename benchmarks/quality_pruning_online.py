"""Online early pruning on the CoT family (`bench_quality.py --prune-online`).

A prefix head (``hsrm.bon.prune_online.fit_prefix_head``, checkpoints 4 and 8 answer tokens) is fitted
on a fully sampled CoT store (``--cot-train``, its own task seed). Then the same prompts of another
task seed are sampled with ``hsrm.sampling.sample`` four times: no pruning, ``--prune head``,
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
import torch

from hsrm import metrics as M
from hsrm.bon.prune import select
from hsrm.bon.prune_online import fit_prefix_head
from hsrm.bon.scorers import lowest_group_confidence
from hsrm.sampling import SampleRunConfig, sample
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
        st = sample(cfg, progress=False)
        last = st.meta.get("last_run", {})
        # sampling seconds of the run that drew the samples; a finished store is not redrawn (its
        # meta then says 0 samples), so the first run's seconds are kept beside the store
        side = Path(cfg.out).with_suffix(".wall.json")
        if last.get("samples"):
            json.dump({"seconds": last["seconds"]}, open(side, "w"))
        wall = json.loads(side.read_text())["seconds"] if side.exists() else float("nan")
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
    out["replay"] = replay(args)
    return out


def _samples(st: Store) -> dict[tuple[str, int], dict]:
    return {(r["prompt_id"], r["sample"]): r for r in st.records}


def replay(args) -> dict[str, Any]:
    """Each pruned online run against the unpruned one: is every sample that was not pruned the
    same as in the unpruned run (same text)? If so, replaying a policy over the unpruned store is
    exact, and ``hsrm.bon.prune.pruning_curve`` gives the whole tokens-vs-BoN curve (the prefix head
    fitted on ``--cot-train``, random pruning averaged over 20 draws at each head setting)."""
    from hsrm.bon.prune import pruning_curve
    from hsrm.bon.prune_online import fit_prefix_head
    from hsrm.bon.quality import pooled_states

    cache = Path(args.cache)
    none = Store(cache / "cot_online_none")
    ref = _samples(none)
    same: dict[str, Any] = {}
    for name in ("head", "random", "deepconf"):
        st = Store(cache / f"cot_online_{name}")
        kept = [r for r in st.records if r.get("stop") != "pruned"]
        cut = [r for r in st.records if r.get("stop") == "pruned"]
        same[name] = {
            "finished": len(kept),
            "finished_identical": int(
                sum(r["text"] == ref[(r["prompt_id"], r["sample"])]["text"] for r in kept)
            ),
            "pruned_prefix_of_full": int(
                sum(ref[(r["prompt_id"], r["sample"])]["text"].startswith(r["text"]) for r in cut)
            ),
            "pruned": len(cut),
        }
    cps = (4, 8, 12, 16)
    head = fit_prefix_head(Store(args.cot_train), checkpoints=cps)
    idx = np.arange(len(none))
    scores = {}
    for t in cps:
        P = pooled_states(none, idx, prefix=t)  # (n, L, d)
        scores[t] = head.score(t, torch.as_tensor(P)).numpy()
    curve = pruning_curve(
        none,
        idx,
        scores,
        selectors=SELECTORS,
        head_settings=(
            ((8,), 0.5),
            ((4,), 0.5),
            ((4, 8), 0.5),
            ((4,), 0.75),
            ((8,), 0.75),
            ((4, 8, 12), 0.5),
        ),
    )
    return {"online_vs_unpruned": same, "curve": curve}


def replay_md(out: dict[str, Any]) -> str:
    rp = out["replay"]
    lines = [
        "### Online runs against the unpruned run, and the replayed curve",
        "",
        "| run | finished samples | identical to the unpruned run | pruned | pruned = prefix "
        "of the unpruned sample |",
        "|---|---|---|---|---|",
    ]
    for name, r in rp["online_vs_unpruned"].items():
        lines.append(
            f"| {name} | {r['finished']} | {r['finished_identical']} | {r['pruned']} | "
            f"{r['pruned_prefix_of_full']} |"
        )
    c = rp["curve"]
    lines += [
        "",
        f"Replayed over the unpruned run ({c['n_prompts']} prompts x {c['n']}, "
        f"{c['full_tokens']} tokens); random = mean of 20 draws at the head's budget; DeepConf "
        "here is the paper's offline form (thresholds from the finished warm-up traces).",
        "",
        "| policy | tokens | saved | " + " | ".join(f"BoN@16 {s}" for s in c["selectors"]) + " |",
        "|" + "---|" * (3 + len(c["selectors"])),
    ]
    for p in c["points"]:
        lines.append(
            f"| {p['policy']} | {p['tokens']} | {p['saved']:.0%} | "
            + " | ".join(f"{p['bon'][s]:.3f}" for s in c["selectors"])
            + " |"
        )
    return "\n".join(lines) + "\n"


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
