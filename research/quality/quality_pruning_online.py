"""Online early pruning on the CoT family (`quality_pruning_online.py`).

A prefix head (``hsrm.bon.prefix_head.fit_prefix_head``, checkpoints 4 and 8 answer tokens) is fitted
on a fully sampled CoT store (``--cot-train``, its own task seed). Then the same prompts of another
task seed are sampled with ``hsrm.engines.sample`` four times: no pruning, ``--prune head``,
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
from hsrm.bon.prefix_head import fit_prefix_head
from hsrm.bon.prune import select
from hsrm.bon.scorers import lowest_group_confidence
from hsrm.engines import sample
from hsrm.sampling import SampleRunConfig
from hsrm.store import Store

RESULTS = Path(__file__).parent / "results"
SELECTORS = ("mean_logprob", "majority", "deepconf_vote")
# with a final hsrm head (``head``: its logit per sample; see ``hsrm.bon.prune.select``)
HEAD_SELECTORS = ("majority", "deepconf_vote", "mean_logprob", "head", "head_pvote",
                  "head_softmax_vote")  # fmt: skip


def bon_finished(
    st: Store,
    n_boot: int = 1000,
    seed: int = 0,
    selectors: tuple[str, ...] = SELECTORS,
    extra: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """BoN over each prompt's finished samples, per selector, with bootstrap CIs over prompts.
    ``extra``: more per-sample scores (one per record of ``st``) that selectors may name."""
    recs = st.records
    rng = np.random.default_rng(seed)
    per: dict[str, list[float]] = {s: [] for s in selectors}
    oracle = []
    for rows in M.by_group(st.prompt_ids).values():
        done = np.array([r for r in rows if recs[r].get("stop") != "pruned"])
        y = st.labels[done]
        sc = {
            "mean_logprob": np.array([recs[i]["mean_logprob"] for i in done]),
            "confidence": np.array(
                [lowest_group_confidence(st.token_stat(int(i), "confidence").float()) for i in done]
            ),
            **{k: np.asarray(v)[done] for k, v in (extra or {}).items()},
        }
        ans = [recs[i]["extracted"] for i in done]
        for s in selectors:
            per[s].append(select(s, ans, y, sc, rng))
        oracle.append(float(y.max()))
    out = {
        s: {
            "bon": float(np.mean(v)),
            "ci": list(M.bootstrap_ci(np.array(v), n_boot, seed=seed)),
            "per_prompt": v,
        }
        for s, v in per.items()
    }
    out["oracle_finished"] = {"bon": float(np.mean(oracle))}
    return out


def paired_delta(a: list[float], b: list[float], n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean of b - a over prompts (same prompts in the same order) with a bootstrap CI."""
    d = np.asarray(b, float) - np.asarray(a, float)
    return {"delta": float(d.mean()), "ci": list(M.bootstrap_ci(d, n_boot, seed=seed))}


def final_head_scores(train: Store, store: Store | None = None, folds: int = 3) -> np.ndarray:
    """The final-answer hsrm head: the pooled probe (``hsrm.bon.quality.PooledProbe``, C = 0.01,
    every captured layer) on each answer's mean state. Its logits on ``store`` when given (fitted
    on all of ``train``), else out-of-fold by prompt on ``train``."""
    from hsrm.bon.quality import PooledProbe, pooled_states
    from hsrm.splits import prompt_folds

    def probe() -> PooledProbe:
        return PooledProbe("all", 0.01, False, train.layers, train.fingerprint.n_layers)

    a = np.arange(len(train))
    P, y, g = pooled_states(train, a), train.labels, train.prompt_ids
    if store is not None:
        return probe().fit(P, y, g).score(pooled_states(store, np.arange(len(store))), None)
    out = np.zeros(len(train))
    fold = prompt_folds(g, folds, 0)
    for f in range(folds):
        tr, te = fold != f, fold == f
        out[te] = probe().fit(P[tr], y[tr], g[tr]).score(P[te], None)
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
        st, wall = _sample_timed(cfg)
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


def _sample_timed(cfg: SampleRunConfig) -> tuple[Store, float]:
    """The store of ``cfg`` (sampled now or earlier) and the seconds of the run that drew it: a
    finished store is not redrawn (its meta then says 0 samples), so the drawing run's seconds are
    kept in a file beside the store."""
    st = sample(cfg, progress=False)
    last = st.meta.get("last_run", {})
    side = Path(cfg.out).with_suffix(".wall.json")
    if last.get("samples"):
        json.dump({"seconds": last["seconds"]}, open(side, "w"))
    wall = json.loads(side.read_text())["seconds"] if side.exists() else float("nan")
    return st, wall


def _against_unpruned(none: Store, cache: Path, prefix: str) -> dict[str, Any]:
    """Each online pruned run (``cache/<prefix>_<policy>``) against the unpruned one: its finished
    samples must equal the unpruned run's, and a pruned sample must be a prefix of it."""
    ref = _samples(none)
    same: dict[str, Any] = {}
    for name in ("head", "random", "deepconf"):
        st = Store(cache / f"{prefix}_{name}")
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
    return same


def _samples(st: Store) -> dict[tuple[str, int], dict]:
    return {(r["prompt_id"], r["sample"]): r for r in st.records}


def replay(args) -> dict[str, Any]:
    """Each pruned online run against the unpruned one: is every sample that was not pruned the
    same as in the unpruned run (same text)? If so, replaying a policy over the unpruned store is
    exact, and ``hsrm.bon.prune.pruning_curve`` gives the whole tokens-vs-BoN curve (the prefix head
    fitted on ``--cot-train``, random pruning averaged over 20 draws at each head setting)."""
    from hsrm.bon.prefix_head import fit_prefix_head
    from hsrm.bon.prune import pruning_curve
    from hsrm.bon.quality import pooled_states

    cache = Path(args.cache)
    none = Store(cache / "cot_online_none")
    same = _against_unpruned(none, cache, "cot_online")
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


# --- goal 4 on the easier CoT setting (`quality_pruning_online.py --cot2`) ---------------------------

#: head pruning settings replayed: (checkpoints, share of running samples stopped at each)
GRID = tuple(
    (cps, f) for cps in ((4,), (8,), (12,), (4, 8), (8, 12), (4, 8, 12)) for f in (0.25, 0.5, 0.75)
)
GRID_CPS = (4, 8, 12)
#: DeepConf online settings replayed: (warm-up samples, eta, window)
DEEPCONF_GRID = ((4, 90, 8), (4, 50, 8), (4, 10, 8), (4, 90, 4))


def _with_deltas(curve: dict[str, Any], n_boot: int) -> dict[str, Any]:
    none = curve["points"][0]["per_prompt"]
    for p in curve["points"]:
        p["delta"] = {
            s: paired_delta(none[s], p["per_prompt"][s], n_boot) for s in curve["selectors"]
        }
    return curve


def choose(curve: dict[str, Any], selector: str, family: str, tol: float = 0.01) -> dict | None:
    """The point of ``family`` that saves the most tokens with BoN (``selector``) at most ``tol``
    below no pruning; None if no point qualifies."""
    full = curve["points"][0]["bon"][selector]
    ok = [p for p in curve["points"] if p["family"] == family and p["bon"][selector] >= full - tol]
    return max(ok, key=lambda p: p["saved"]) if ok else None


def kept(n: int, frac: float, checkpoints: list[int]) -> int:
    """Samples per prompt a head setting leaves running (when none finish before the cuts)."""
    for _ in checkpoints:
        n -= min(int(np.floor(frac * n)), n - 1)
    return n


def choose_head(
    curve: dict[str, Any],
    selector: str,
    families: list[str],
    min_saved: float = 0.4,
    min_kept: int = 4,
    tol: float = 0.01,
) -> dict[str, Any]:
    """The head setting to run online: among those that save >= ``min_saved`` of the tokens and
    leave >= ``min_kept`` samples per prompt to choose from (best-of-N, not a prefix classifier
    that keeps one), the highest BoN with ``selector``, then the most saved. The rule was fixed
    after the first look at the training store's replay, where the settings that keep one sample
    per prompt won; it never reads the test store."""
    n = curve["n"]
    pts = [
        p
        for p in curve["points"]
        if p["family"] in families
        and p["saved"] >= min_saved
        and kept(n, p["frac"], p["checkpoints"]) >= min_kept
    ]
    if not pts:
        raise ValueError("no head setting saves enough tokens and keeps enough samples")
    best = max(pts, key=lambda p: (round(p["bon"][selector], 9), p["saved"]))
    best["meets_target_on_train"] = bool(
        best["bon"][selector] >= curve["points"][0]["bon"][selector] - tol
    )
    return best


def top_half(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """1 for the samples whose score is at least their prompt's median (the distilled labels)."""
    out = np.zeros(len(scores))
    for rows in M.by_group(groups).values():
        out[rows] = scores[rows] >= np.median(scores[rows])
    return out


#: prefix heads replayed: trained on correctness, or on "the final head ranks it in the top half"
VARIANTS = {"label": ("head", "hsrm head"), "distilled": ("head~final", "hsrm head (distilled)")}


def replay_curve(
    store: Store, prefixes: dict[str, dict[int, np.ndarray]], head: np.ndarray, n_boot: int
) -> dict[str, Any]:
    from hsrm.bon.prune import pruning_curve

    curve: dict[str, Any] = {}
    for k, (v, pref) in enumerate(prefixes.items()):
        c = pruning_curve(
            store,
            np.arange(len(store)),
            pref,
            selectors=HEAD_SELECTORS,
            head_settings=GRID,
            deepconf_settings=DEEPCONF_GRID if k == 0 else (),
            extra_scores={"head": head},
        )
        name, fam = VARIANTS[v]
        for p in c["points"]:
            p["policy"] = p["policy"].replace("head frac", f"{name} frac")
            if p["family"] == "hsrm head":
                p["family"], p["variant"] = fam, v
        if k == 0:
            curve = c
        else:
            curve["points"] += c["points"][1:]
    return _with_deltas(curve, n_boot)


def prune_cot2(args) -> dict[str, Any]:
    """Choose a pruning setting on the training store (out-of-fold replay), then run it online on
    the test seed against no pruning, DeepConf stopping and random pruning at the same budget."""
    from hsrm.bon.prune import prefix_probe_scores

    train = Store(args.cot_train)
    t0 = time.perf_counter()
    idx = np.arange(len(train))
    fin = final_head_scores(train, None, args.folds)
    distill = top_half(fin, train.prompt_ids)
    pref = {
        "label": prefix_probe_scores(train, idx, GRID_CPS, folds=args.folds),
        "distilled": prefix_probe_scores(train, idx, GRID_CPS, folds=args.folds, labels=distill),
    }
    c_train = replay_curve(train, pref, fin, args.n_boot)
    sel = args.prune_select
    ch = choose_head(c_train, sel, [f for _, f in VARIANTS.values()])
    dc = (
        choose(c_train, sel, "deepconf")
        or [p for p in c_train["points"] if p["family"] == "deepconf"][0]
    )
    print("train replay", round(time.perf_counter() - t0), "s; chosen:", ch["policy"],
          "| deepconf:", dc["policy"], flush=True)  # fmt: skip
    cps = ",".join(map(str, ch["checkpoints"]))
    head = fit_prefix_head(
        train,
        checkpoints=ch["checkpoints"],
        labels=distill if ch["variant"] == "distilled" else None,
    )
    head_dir = Path(args.cache) / "cot2_prefix_head"
    head.save(head_dir)
    base = dict(
        task="synthetic:cot",
        n_prompts=args.cot_prompts,
        task_seed=args.cot_task_seed,
        seed=args.cot_task_seed,
        fewshot="per_prompt",
        task_range=args.cot_range,
        shots=args.cot_shots,
        layers=",".join(str(x) for x in train.layers),
        max_new_tokens=40,
        shard_prompts=8,
        threads=1,
        n=16,
    )
    frac = float(ch["frac"])
    runs = {
        "none": {},
        "head": {"prune": "head", "prune_head": str(head_dir), "prune_checkpoints": cps,
                 "prune_frac": frac},
        "random": {"prune": "random", "prune_checkpoints": cps, "prune_frac": frac},
        "deepconf": {"prune": "deepconf", "prune_warmup": dc["warmup"],
                     "prune_window": dc["window"], "prune_eta": float(dc["eta"])},
    }  # fmt: skip
    out: dict[str, Any] = {
        "train_store": args.cot_train,
        "train_prompts": int(len(set(train.prompt_ids))),
        "train_accuracy": float(train.labels.mean()),
        "selector_for_choice": sel,
        "chosen": {"head": ch["policy"], "deepconf": dc["policy"]},
        "train_replay": c_train,
        "settings": base,
        "runs": {},
    }
    for name, kw in runs.items():
        cfg = SampleRunConfig(out=str(Path(args.cache) / f"cot2_online_{name}"), **base, **kw)
        st, wall = _sample_timed(cfg)
        recs = st.records
        qt = np.array([x["qtype"] for x in recs])
        r = {
            "config": kw,
            "tokens": int(sum(x["n_tokens"] for x in recs)),
            "pruned": int(sum(x.get("stop") == "pruned" for x in recs)),
            "samples": len(recs),
            "prompts": int(len(set(st.prompt_ids))),
            "wall_s": wall,
            "mean_accuracy": float(st.labels.mean()),
            "accuracy_by_qtype": {t: float(st.labels[qt == t].mean()) for t in sorted(set(qt))},
            "pass_at_16": float(
                np.mean([st.labels[g].max() for g in M.by_group(st.prompt_ids).values()])
            ),
            "bon": bon_finished(
                st,
                args.n_boot,
                selectors=HEAD_SELECTORS,
                extra={"head": final_head_scores(train, st)},
            ),  # fmt: skip
        }
        out["runs"][name] = r
        print(name, {k: v for k, v in r.items() if k not in ("bon", "config")},
              {s: round(b["bon"], 3) for s, b in r["bon"].items()}, flush=True)  # fmt: skip
    none = out["runs"]["none"]
    for r in out["runs"].values():
        r["saved"] = 1 - r["tokens"] / none["tokens"]
        r["delta"] = {
            s: paired_delta(none["bon"][s]["per_prompt"], r["bon"][s]["per_prompt"], args.n_boot)
            for s in HEAD_SELECTORS
        }
    # exact replay over the unpruned test run (the online runs are checked against it)
    test = Store(Path(args.cache) / "cot2_online_none")
    same = _against_unpruned(test, Path(args.cache), "cot2_online")
    from hsrm.bon.quality import pooled_states

    ti = np.arange(len(test))
    P_t = {t: torch.as_tensor(pooled_states(test, ti, prefix=t)) for t in GRID_CPS}
    pref_t = {}
    for v, lab in (("label", None), ("distilled", distill)):
        h = fit_prefix_head(train, checkpoints=GRID_CPS, labels=lab)
        pref_t[v] = {t: h.score(t, P_t[t]).numpy() for t in GRID_CPS}
    out["replay"] = {
        "online_vs_unpruned": same,
        "curve": replay_curve(test, pref_t, final_head_scores(train, test), args.n_boot),
    }
    return out


def compact(x: Any) -> Any:
    """``x`` without the per-prompt lists (the paired deltas and CIs are kept): a small JSON."""
    if isinstance(x, dict):
        return {k: compact(v) for k, v in x.items() if k != "per_prompt"}
    if isinstance(x, list):
        return [compact(v) for v in x]
    return x


def _cell(b: dict, d: dict | None = None) -> str:
    c = f"{b['bon']:.3f} [{b['ci'][0]:.3f}, {b['ci'][1]:.3f}]"
    if d is not None:
        c += f"; {d['delta']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
    return c


def curve_md(c: dict[str, Any], title: str) -> str:
    sels = c["selectors"]
    lines = [
        title,
        "",
        "| policy | tokens | saved | " + " | ".join(f"{s}" for s in sels) + " |",
        "|" + "---|" * (3 + len(sels)),
    ]
    for p in c["points"]:
        cells = " | ".join(
            f"{p['bon'][s]:.3f} ({p['delta'][s]['delta']:+.3f})" if p["policy"] != "none"
            else f"{p['bon'][s]:.3f}"
            for s in sels
        )  # fmt: skip
        lines.append(f"| {p['policy']} | {p['tokens']} | {p['saved']:.0%} | {cells} |")
    return "\n".join(lines) + "\n"


def cot2_md(out: dict[str, Any]) -> str:
    runs = out["runs"]
    n = runs["none"]
    s = out["settings"]
    lines = [
        "### Online runs on the test seed (`hsrm sample --prune`)",
        "",
        f"CoT family, operands {s['task_range']}, {s['shots']} worked examples per prompt "
        f"(`--task-range {s['task_range']} --shots {s['shots']}`). Heads fitted on "
        f"{out['train_prompts']} prompts x 16 ({out['train_store']}, accuracy "
        f"{out['train_accuracy']:.3f}); tested on {n['prompts']} prompts x 16 of task seed "
        f"{s['task_seed']}: accuracy {n['mean_accuracy']:.3f} "
        f"({', '.join(f'{k} {v:.3f}' for k, v in n['accuracy_by_qtype'].items())}), "
        f"pass@16 {n['pass_at_16']:.3f}. Settings chosen on the training store's out-of-fold "
        f"replay with selector `{out['selector_for_choice']}`: head = {out['chosen']['head']} "
        "(rule: of the settings that save >= 40% of the tokens and leave >= 4 samples per "
        "prompt, the highest BoN on the training store); DeepConf = "
        f"{out['chosen']['deepconf']} (the one that saves most within 0.01 on the training "
        "store); random = the head's checkpoints and share. `head~final`: the prefix head is "
        "trained to predict whether the final head ranks a sample in its prompt's top half "
        "(out-of-fold final-head scores on the training store), `head`: on correctness.",
        "",
        "Each cell: BoN@16 over the finished samples [95% CI over prompts]; then the paired change "
        "against no pruning [95% CI].",
        "",
    ]
    for sel in HEAD_SELECTORS:
        lines += [f"**selector `{sel}`**", "",
                  "| policy | tokens | saved | pruned samples | wall s | BoN@16; change |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for name, r in runs.items():
            d = None if name == "none" else r["delta"][sel]
            lines.append(
                f"| {name} | {r['tokens']} | {r['saved']:.0%} | {r['pruned']} | "
                f"{r['wall_s']:.0f} | {_cell(r['bon'][sel], d)} |"
            )
        lines.append("")
    rp = out["replay"]
    lines += [
        "### Online runs against the unpruned run",
        "",
        "| run | finished | identical to the unpruned run | pruned | pruned = prefix of the "
        "unpruned sample |",
        "|---|---|---|---|---|",
    ]
    for name, r in rp["online_vs_unpruned"].items():
        lines.append(
            f"| {name} | {r['finished']} | {r['finished_identical']} | {r['pruned']} | "
            f"{r['pruned_prefix_of_full']} |"
        )
    lines.append("")
    lines.append(
        curve_md(
            out["train_replay"],
            "### Replay on the training store (out-of-fold heads; the setting is chosen here)\n\n"
            "BoN@16 per selector (change against no pruning); random = mean of 20 draws at the "
            "head's budget.",
        )
    )
    lines.append(
        curve_md(
            rp["curve"],
            "### Replay on the unpruned test run (heads fitted on the training store; reported, "
            "not used for the choice)",
        )
    )
    return "\n".join(lines)


def plot_cot2(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sels = ("majority", "head", "head_pvote")
    fig, axes = plt.subplots(1, len(sels), figsize=(4 * len(sels), 3.6), sharey=True)
    c = out["replay"]["curve"]
    for ax, s in zip(axes, sels):
        fams = (("hsrm head", "o"), ("hsrm head (distilled)", "^"), ("random", "x"),
                ("deepconf", "s"))  # fmt: skip
        for fam, mk in fams:
            pts = [p for p in c["points"] if p["family"] == fam]
            ax.scatter([p["tokens"] for p in pts], [p["bon"][s] for p in pts], marker=mk,
                       label=f"replay: {fam}", alpha=0.6)  # fmt: skip
        ax.axhline(c["points"][0]["bon"][s], color="k", lw=0.8, label="no pruning")
        for name, r in out["runs"].items():
            b = r["bon"][s]
            ax.errorbar(r["tokens"], b["bon"], yerr=[[b["bon"] - b["ci"][0]], [b["ci"][1] - b["bon"]]],
                        fmt="D", capsize=3, label=f"online: {name}")  # fmt: skip
        ax.set_title(f"selector: {s}")
        ax.set_xlabel("answer tokens generated (test seed)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("BoN@16 (finished samples)")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    """``quality_pruning_online.py [--cot2]``: online pruning at checkpoints 4 and 8, or (``--cot2``)
    the setting chosen on a training store and run online. Writes results/<tag>.json, .md, .png."""
    from bench_quality import arg_parser  # type: ignore[import-not-found]

    ap = arg_parser()
    ap.add_argument("--cot2", action="store_true", help="choose on train, then run online")
    ap.add_argument("--cot-train", default="runs/cot_train", help="the prefix head's store")
    ap.add_argument("--cot-prompts", type=int, default=64, help="test prompts")
    ap.add_argument("--cot-task-seed", type=int, default=11, help="test task seed")
    ap.add_argument("--cot-range", default="1,20", help="--cot2: operands LO,HI")
    ap.add_argument("--cot-shots", type=int, default=3, help="--cot2: few-shot examples")
    ap.add_argument(
        "--prune-select", default="head_pvote", help="--cot2: selector the setting is chosen for"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    meta = {"machine": "2-core CPU box shared with other jobs", "config": vars(args)}
    RESULTS.mkdir(exist_ok=True)
    if args.cot2:
        tag = args.tag if args.tag != "quality" else "quality_pruning_cot2"
        out = {**meta, **prune_cot2(args)}
        md = ["# Early pruning that keeps best-of-N (`quality_pruning_online.py --cot2`)", ""]
        md.append(cot2_md(out))
        (RESULTS / f"{tag}.json").write_text(json.dumps(compact(out), indent=1))
        plot_cot2(out, RESULTS / f"{tag}.png")
    else:
        tag = args.tag if args.tag != "quality" else "quality_pruning_online"
        out = {**meta, **prune_online(args)}
        md = ["# Online early pruning (`quality_pruning_online.py`)", "", online_md(out)]
        md.append(replay_md(out))
        (RESULTS / f"{tag}.json").write_text(json.dumps(out, indent=1))
        plot_online(out, RESULTS / f"{tag}.png")
    (RESULTS / f"{tag}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
