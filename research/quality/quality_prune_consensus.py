"""Consensus stopping (DeepConf's adaptive sampling) against prefix-head pruning (issue 12, goal 4).

    PYTHONPATH=src .venv/bin/python research/quality/quality_prune_consensus.py

A prompt's first ``warmup`` samples run to the end; if their most common extracted answer holds
>= ``tau`` of them, the prompt's other samples are never started (``hsrm.bon.prune``,
``consensus_stops``). Optionally the samples still to run are then pruned by the prefix head at
token 12 (``head_stops``), or the vote is weighted by the final head's sigmoid.

1. The grid is replayed on the training store, out of fold (3 prompt splits: prefix head and final
   head fitted on the other two), and one setting is chosen by the rule fixed in research/quality/HISTORY.md:
   of the settings that save >= 40% of answer tokens, the one whose worst BoN@16 change over the
   five selectors is smallest.
2. That setting is replayed on each test store (task seeds no head was fitted on), beside the
   prefix head's own setting (three quarters stopped at token 12), random stopping at each one's
   budget, and DeepConf's single-trace online stop; per store and pooled, with paired bootstrap
   CIs over prompts.

Writes research/quality/results/quality_prune_consensus.json, .md and .png (tokens generated vs
BoN@16 change per selector, pooled over the test stores; ``--replot`` redraws it from the JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import quality_prune_needed as QN  # type: ignore[import-not-found]  # noqa: E402
import quality_pruning_online as QP  # type: ignore[import-not-found]  # noqa: E402

from hsrm import metrics as M  # noqa: E402
from hsrm.bon.prune import consensus_stops, head_stops, pruning_curve  # noqa: E402
from hsrm.store import Store  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SELECTORS = QN.SELECTORS
CP = 12  # the checkpoint past the answers' divergence (quality_prune_needed.md)
HEAD = "head frac=0.75 at 12"
WARMUPS = (2, 3, 4, 6, 8)
TAUS = (0.5, 0.75, 1.0)
FRACS = (0.0, 0.5, 0.67, 0.75)
HEAD_TAUS = (0.5, 0.6, 0.7)
MIN_SAVED = 0.40
TRAIN = "runs/cot2_train384"  # the default training store (float32, seventh session)


def grid_policies(st: Store, pref: np.ndarray, head: np.ndarray) -> dict[str, Any]:
    """Every setting of the grid as a ``pruning_curve`` policy over ``st`` (rows in sample order)."""
    ext = [r["extracted"] for r in st.records]
    lens = np.array([r["n_tokens"] for r in st.records])
    p_right = 1 / (1 + np.exp(-head))

    def weighted(rows: np.ndarray, warm: int, tau: float) -> np.ndarray:
        stop = lens[rows].copy()
        votes: dict[Any, float] = {}
        for j in rows[:warm]:
            if ext[j] is not None:
                votes[ext[j]] = votes.get(ext[j], 0.0) + p_right[j]
        if votes and max(votes.values()) >= tau * p_right[rows[:warm]].sum():
            stop[warm:] = 0
        return stop

    def then_head(stop: np.ndarray, rows: np.ndarray, warm: int, frac: float) -> np.ndarray:
        if frac and stop[warm:].any():  # no consensus: the samples still to run are pruned
            rest, _ = head_stops(lens[rows][warm:], {CP: pref[rows][warm:]}, (CP,), frac)
            stop[warm:] = rest
        return stop

    out: dict[str, Any] = {}
    for w in WARMUPS:
        for tau in TAUS:
            for frac in FRACS:
                name = f"consensus warmup={w} tau={tau:g}" + (
                    f" + head frac={frac}" if frac else ""
                )
                out[name] = lambda rows, w=w, tau=tau, frac=frac: then_head(
                    consensus_stops([ext[j] for j in rows], lens[rows], w, tau), rows, w, frac
                )
    for w in (4, 8):
        for tau in HEAD_TAUS:
            for frac in FRACS[:2]:
                name = f"head-weighted consensus warmup={w} tau={tau:g}" + (
                    f" + head frac={frac}" if frac else ""
                )
                out[name] = lambda rows, w=w, tau=tau, frac=frac: then_head(
                    weighted(rows, w, tau), rows, w, frac
                )
    return out


def deltas(c: dict[str, Any], n_boot: int) -> dict[str, dict[str, Any]]:
    """Per policy: tokens saved, and BoN@16 change per selector against no pruning, with CIs."""
    pts = {p["policy"]: p for p in c["points"]}
    none = pts["none"]["per_prompt"]
    return {
        name: {
            "saved": p["saved"],
            "tokens": [p["tokens"], c["full_tokens"]],
            "diff": {
                s: np.subtract(p["per_prompt"][s], none[s]).round(6).tolist() for s in SELECTORS
            },
            "delta": {s: QP.paired_delta(none[s], p["per_prompt"][s], n_boot) for s in SELECTORS},
            **({"prompts_stopped": p["prompts_stopped"]} if "prompts_stopped" in p else {}),
        }
        for name, p in pts.items()
        if name != "none"
    }


def choose(grid: dict[str, dict[str, Any]]) -> str:
    """The rule: of the settings saving >= MIN_SAVED, the smallest worst change; ties: more saved."""
    ok = {k: v for k, v in grid.items() if v["saved"] >= MIN_SAVED}
    if not ok:
        raise SystemExit(f"no setting of the grid saves >= {MIN_SAVED:.0%} on the training store")
    return max(
        ok, key=lambda k: (min(ok[k]["delta"][s]["delta"] for s in SELECTORS), ok[k]["saved"])
    )


def consensus_setting(name: str) -> tuple[int, float] | None:
    """(warmup, tau) when ``name`` is plain consensus stopping, else None."""
    if not name.startswith("consensus") or "+" in name:
        return None
    w, tau = (part.split("=")[1] for part in name.split()[1:3])
    return int(w), float(tau)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", default=TRAIN)
    ap.add_argument(
        "--tests",
        nargs="+",
        default=[
            "runs/cot2_test14",
            "runs/cache_cot2/cot2_online_none",
            "runs/cot2_test15",
            "runs/cot2_test16",
        ],
    )
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--tag", default="quality_prune_consensus")
    ap.add_argument(
        "--replot", action="store_true", help="only rewrite the .md and .png from the results JSON"
    )
    a = ap.parse_args()
    if a.replot:
        out = json.loads((RESULTS / f"{a.tag}.json").read_text())
        write(out, a)
        return
    t0 = time.perf_counter()
    train = Store(a.train)
    tests = {p: Store(p) for p in a.tests}

    # 1. the grid on the training store, out of fold; the rule picks one setting
    pref = QN.real_prefix_scores(train, train, cps=(CP,))["train (out of fold)"]
    head = QP.final_head_scores(train)
    idx = np.arange(len(train))
    c = pruning_curve(
        train, idx, pref, selectors=SELECTORS, head_settings=(((CP,), 0.75),),
        deepconf_settings=(), random_repeats=1, extra_scores={"head": head},
        policies=grid_policies(train, pref[CP], head),
    )  # fmt: skip
    grid = deltas(c, a.n_boot)
    chosen = choose({k: v for k, v in grid.items() if not k.startswith(("random", "head frac"))})
    print(f"training grid {time.perf_counter() - t0:.0f} s; chosen: {chosen}", flush=True)

    # 2. the chosen setting and the controls on every test store
    cons = consensus_setting(chosen)
    per_store: dict[str, dict[str, Any]] = {}
    heads: dict[str, dict[str, float]] = {}  # how well each head ranks a prompt's samples
    for path, st in tests.items():
        p12 = QN.real_prefix_scores(train, st, cps=(CP,))["test"]
        h = QP.final_head_scores(train, st)
        y, g = st.labels, st.prompt_ids
        heads[path] = {
            "accuracy": float(y.mean()),
            "prefix_auroc": M.within_prompt_auroc(p12[CP], y, g),
            "final_auroc": M.within_prompt_auroc(h, y, g),
        }
        pol = grid_policies(st, p12[CP], h)
        ct = pruning_curve(
            st, np.arange(len(st)), p12, selectors=SELECTORS, head_settings=(((CP,), 0.75),),
            deepconf_settings=QP.DEEPCONF_GRID, consensus_settings=[cons] if cons else (),
            random_repeats=20, extra_scores={"head": h},
            policies={} if cons else {chosen: pol[chosen]},
        )  # fmt: skip
        per_store[path] = deltas(ct, a.n_boot)
        print(f"{path}: {time.perf_counter() - t0:.0f} s", flush=True)

    # whether a training prompt asked each test prompt's question (in another context), per store
    # in per-prompt order (sorted prompt ids, as ``pruning_curve`` reports them)
    asked = {r["question"] for r in train.records}
    seen = {
        path: np.array(
            [st.records[r[0]]["question"] in asked for r in M.by_group(st.prompt_ids).values()]
        )
        for path, st in tests.items()
    }

    def pooled(stores: list[str], policy: str, part: bool | None = None) -> dict[str, Any]:
        """The pooled change; ``part``: only prompts whose question was (True) or was not (False)
        asked by a training prompt (tokens saved stay those of all the prompts)."""
        parts = [per_store[s][policy] for s in stores]
        keep = [np.ones(len(seen[s]), bool) if part is None else seen[s] == part for s in stores]
        out: dict[str, Any] = {
            "n_prompts": int(sum(k.sum() for k in keep)),
            "saved": 1 - sum(p["tokens"][0] for p in parts) / sum(p["tokens"][1] for p in parts),
        }
        for s in SELECTORS:
            d = np.concatenate([np.asarray(p["diff"][s])[k] for p, k in zip(parts, keep)])
            out[s] = {"delta": float(d.mean()), "ci": list(M.bootstrap_ci(d, a.n_boot, seed=0))}
        return out

    policies = [chosen, f"random, same budget as {chosen}", HEAD, f"random, same budget as {HEAD}"]
    policies += [p for p in per_store[a.tests[0]] if p.startswith("deepconf")]
    policies = [p for p in policies if p in per_store[a.tests[0]]]
    rows = []
    for pol in policies:
        for name, stores in [(f"test {s}", [s]) for s in a.tests] + [
            (f"all {len(a.tests)} test stores", a.tests)
        ]:
            rows.append({"policy": pol, "store": name, **pooled(stores, pol)})
        if pol in (HEAD, f"random, same budget as {HEAD}"):
            for part, what in ((True, "seen"), (False, "unseen")):
                name = f"all {len(a.tests)}, {what} questions"
                rows.append({"policy": pol, "store": name, **pooled(a.tests, pol, part)})
    out = {
        "train": a.train,
        "tests": a.tests,
        "rule": f"saved >= {MIN_SAVED}, then the largest worst change over {list(SELECTORS)}",
        "chosen": chosen,
        "grid": {
            k: {"saved": v["saved"], "delta": {s: v["delta"][s]["delta"] for s in SELECTORS}}
            for k, v in grid.items()
        },
        "rows": rows,
        "heads": heads,
        "seen_questions": {p: [int(v.sum()), len(v)] for p, v in seen.items()},
        "seconds": time.perf_counter() - t0,
    }
    (RESULTS / f"{a.tag}.json").write_text(json.dumps(out, indent=1))
    write(out, a)
    print((RESULTS / f"{a.tag}.md").read_text())


def write(out: dict[str, Any], a: argparse.Namespace) -> None:
    (RESULTS / f"{a.tag}.md").write_text(markdown(out, a))
    plot(out, RESULTS / f"{a.tag}.png")


def plot(out: dict[str, Any], path: Path) -> None:
    """Share of answer tokens generated vs BoN@16 change (pooled test stores, 95% CI), per
    selector: one marker per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        r for r in out["rows"] if r["store"].startswith("all ") and "questions" not in r["store"]
    ]
    fig, axes = plt.subplots(1, len(SELECTORS), figsize=(3.6 * len(SELECTORS), 3.8), sharey=True)
    for ax, s in zip(axes, SELECTORS):
        for r in rows:
            d = r[s]
            ax.errorbar(
                1 - r["saved"], d["delta"], yerr=[[d["delta"] - d["ci"][0]], [d["ci"][1] - d["delta"]]],
                fmt="s" if r["policy"].startswith("random") else "o", capsize=3,
                label=r["policy"].replace("random, same budget as ", "random @ "),
            )  # fmt: skip
        ax.axhline(0, color="k", lw=0.8)
        ax.axhspan(-0.01, 0.01, color="g", alpha=0.1)
        ax.set_title(s)
        ax.set_xlabel("share of answer tokens generated")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"BoN@16 change ({rows[0]['n_prompts']} fresh prompts)")
    axes[-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(out: dict[str, Any], a: argparse.Namespace) -> str:
    def cell(v: dict[str, Any]) -> str:
        return f"{v['delta']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]"

    sel = " | ".join(SELECTORS)
    L = [
        "# Consensus stopping against prefix-head pruning (`quality_prune_consensus.py`)",
        "",
        "```",
        "PYTHONPATH=src python research/quality/quality_prune_consensus.py "
        + ("" if out["train"] == TRAIN else f"--train {out['train']} ")
        + "--tests "
        + " ".join(out["tests"])
        + ("" if a.tag == "quality_prune_consensus" else f" --tag {a.tag}"),
        "```",
        "",
        f"Training store `{out['train']}` (heads fitted on it); rule: {out['rule']}. "
        f"**Chosen on the training store: `{out['chosen']}`.**",
        "",
    ]
    if "heads" in out:  # runs before it was recorded lack it
        L += [
            "Within-prompt AUROC on each test store of the prefix head at token "
            f"{CP} and of the final head (both fitted on the training store):",
            "",
            "| test store | accuracy | prefix head at token 12 | final head | prompts asking a training question |",
            "|---|---|---|---|---|",
            *(
                f"| {k} | {v['accuracy']:.3f} | {v['prefix_auroc']:.3f} | {v['final_auroc']:.3f} | "
                + ("/".join(map(str, out["seen_questions"][k])) if "seen_questions" in out else "")
                + " |"
                for k, v in out["heads"].items()
            ),
            "",
        ]
    L += [
        "## Test stores: BoN@16 change against no pruning [95% bootstrap CI over prompts, "
        f"{a.n_boot} resamples]",
        "",
        f"| policy | store | prompts | tokens saved | {sel} |",
        "|---|---|---|---|" + "---|" * len(SELECTORS),
    ]
    for r in out["rows"]:
        cells = " | ".join(cell(r[s]) for s in SELECTORS)
        L.append(
            f"| {r['policy']} | {r['store']} | {r['n_prompts']} | {r['saved']:.1%} | {cells} |"
        )
    L += [
        "",
        "## The grid on the training store (out of fold): BoN@16 change per selector",
        "",
        f"| setting | tokens saved | {sel} | worst |",
        "|---|---|" + "---|" * (len(SELECTORS) + 1),
    ]
    for k, v in sorted(out["grid"].items(), key=lambda kv: -kv[1]["saved"]):
        d = v["delta"]
        mark = "**" if k == out["chosen"] else ""
        L.append(
            f"| {mark}{k}{mark} | {v['saved']:.1%} | "
            + " | ".join(f"{d[s]:+.3f}" for s in SELECTORS)
            + f" | {min(d.values()):+.3f} |"
        )
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
