"""Selection quality on fresh prompts and contexts, training-free selectors, and early pruning.

    PYTHONPATH=src .venv/bin/python research/quality/bench_quality.py \\
        --train runs/train_pp --fresh runs/fresh_pp --cot runs/cot [--tag quality]

Stores (sampled with `hsrm sample --fewshot per_prompt`, so every prompt has its own few-shot
context): ``--train`` (task seed 0), ``--fresh`` (task seed 1: other questions, other contexts; no
head or control is fitted on it) and ``--cot`` (the chain-of-thought family). A store may be partial
(the shards written so far); the sizes used are in the outputs.

1. Fresh-seed table: every selector out-of-fold by prompt inside ``--train`` (3 prompt splits) and
   trained on all of ``--train`` then applied to ``--fresh``. Controls and training-free scorers in
   every table; BoN@16 with bootstrap CIs over prompts, gap closed, within-prompt AUROC, per family.
2. CoT table: the same selectors out-of-fold on ``--cot``.
3. Pruning curve (``hsrm.bon.prune``, offline over the fully sampled CoT store): tokens generated vs
   BoN@16 for no pruning, hsrm-head pruning, DeepConf online stopping, random at the same budget.

Writes research/quality/results/<tag>.json, <tag>.md and <tag>_pruning.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsrm.bon.baselines import baseline_scores
from hsrm.bon.demo import DEMO_ELHSR
from hsrm.bon.quality import POOLED_DEFAULT, PooledProbe, StackedSelector, pooled_states
from hsrm.bon.report import bon_report
from hsrm.heads import make_head
from hsrm.splits import prompt_folds
from hsrm.store import Store

RESULTS = Path(__file__).parent / "results"
FAST = ("random", "majority", "mean_logprob", "text_only", "answer_prior")


def _oof(st: Store, folds: int, seed: int, fit_score) -> np.ndarray:
    pids = st.prompt_ids
    fold = prompt_folds(pids, folds, seed)
    out = np.zeros(len(st))
    for f in range(folds):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        out[te] = fit_score(tr, te)
    return out


def selectors(
    train: Store, tr: np.ndarray, test: Store, te: np.ndarray, P_tr, P_te, elhsr: bool
) -> dict[str, np.ndarray]:
    """Every selector fitted on ``train``'s records ``tr``, scored on ``test``'s records ``te``."""
    t0 = time.perf_counter()
    y, g = train.labels[tr], train.prompt_ids[tr]
    s = baseline_scores(test, tr, te, train_store=train)
    for name, (layers, C, center) in {
        "probe_pooled": (POOLED_DEFAULT["layers"], POOLED_DEFAULT["C"], False),
        "probe_pooled_centered": (POOLED_DEFAULT["layers"], POOLED_DEFAULT["C"], True),
        "probe_pooled_last8": ("top:8", POOLED_DEFAULT["C"], False),
    }.items():
        probe = PooledProbe(layers, C, center, train.layers, train.fingerprint.n_layers)
        s[name] = probe.fit(P_tr, y, g).score(P_te, test.prompt_ids[te])
    stk = StackedSelector().fit(train, tr, P_tr)
    s["stacked"] = stk.score(test, te, P_te)
    if elhsr:
        h = make_head("elhsr", **DEMO_ELHSR).fit(train.features(tr), y, g)
        s["elhsr"] = h.score(test.features(te))
    print(f"  selectors fitted in {time.perf_counter() - t0:.0f} s", flush=True)
    return s


def summ(rep: dict[str, Any], k: str) -> dict[str, Any]:
    rows = {}
    for name in rep["bon"]:
        rows[name] = {
            "bon": rep["bon"][name][k],
            "ci": rep["bon_ci"][name][k],
            "gap_closed": rep["gap_closed"][name][k],
            "within_prompt_auroc": rep["within_prompt_auroc"][name],
        }
    return {
        "n_prompts": rep["n_prompts"],
        "mean_accuracy": rep["mean_accuracy"],
        "pass_at_k": rep["pass_at_k"][k],
        "rows": rows,
        "per_family": {
            f: {
                "n_prompts": r["n_prompts"],
                "mean_accuracy": r["mean_accuracy"],
                "pass_at_k": r["pass_at_k"][k],
                "bon": {n: r["bon"][n][k] for n in r["bon"]},
            }
            for f, r in rep.get("per_family", {}).items()
        },
    }


def _report(st: Store, idx: np.ndarray, scores: dict[str, np.ndarray], n: int) -> dict[str, Any]:
    recs = st.records
    rep = bon_report(
        scores,
        st.labels[idx],
        st.prompt_ids[idx],
        extracted=[recs[i]["extracted"] for i in idx],
        families=np.array([recs[i]["family"] for i in idx]),
        ks=[n],
        n_boot=1000,
    )
    return summ(rep, str(n))


def _whole_prompts(st: Store, n: int) -> np.ndarray:
    """Records of prompts that have all n samples (a partial store ends on whole shards anyway)."""
    pids = st.prompt_ids
    u, c = np.unique(pids, return_counts=True)
    full = set(u[c == n].tolist())
    return np.flatnonzero([p in full for p in pids])


def table_md(title: str, t: dict[str, Any]) -> str:
    fams = sorted(t["per_family"])
    head = "| selector | BoN@16 [95% CI] | gap closed | within-prompt AUROC | " + " | ".join(
        f"{f} BoN@16" for f in fams
    )
    lines = [
        f"### {title}",
        "",
        f"{t['n_prompts']} prompts; mean accuracy {t['mean_accuracy']:.3f}, pass@16 "
        f"{t['pass_at_k']:.3f}; per family (mean acc / pass@16): "
        + ", ".join(
            f"{f} {t['per_family'][f]['mean_accuracy']:.3f} / {t['per_family'][f]['pass_at_k']:.3f}"
            for f in fams
        ),
        "",
        head + " |",
        "|" + "---|" * (4 + len(fams)),
    ]
    order = sorted(t["rows"], key=lambda n: -t["rows"][n]["bon"])
    for n in order:
        r = t["rows"][n]
        fam = " | ".join(f"{t['per_family'][f]['bon'][n]:.3f}" for f in fams)
        lines.append(
            f"| {n} | {r['bon']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | "
            f"{r['gap_closed']:.0%} | {r['within_prompt_auroc']:.3f} | {fam} |"
        )
    return "\n".join(lines) + "\n"


def arg_parser() -> argparse.ArgumentParser:
    """The flags every study here shares (``quality_levers.py`` and ``quality_pruning_online.py``
    add their own)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", default="runs/train_pp")
    ap.add_argument("--fresh", default="runs/fresh_pp")
    ap.add_argument("--cot", default="runs/cot")
    ap.add_argument("--tag", default="quality")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--no-elhsr", action="store_true", help="skip ELHSR (slow on a busy CPU)")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: fresh,cot,prune")
    ap.add_argument("--n-boot", type=int, default=1000)
    return ap


def main() -> None:
    args = arg_parser().parse_args()
    torch.set_num_threads(1)
    skip = set(args.skip.split(","))
    out: dict[str, Any] = {"machine": "2-core CPU box shared with other jobs", "config": vars(args)}
    md = ["# Selection quality (`research/quality/bench_quality.py`)", ""]
    t_all = time.perf_counter()

    if "fresh" not in skip:
        tr_st, fr_st = Store(args.train), Store(args.fresh)
        a, b = _whole_prompts(tr_st, args.n), _whole_prompts(fr_st, args.n)
        P_a, P_b = pooled_states(tr_st, a), pooled_states(fr_st, b)
        pos = {int(i): j for j, i in enumerate(a)}
        oof: dict[str, np.ndarray] = {}
        fold = prompt_folds(tr_st.prompt_ids[a], args.folds, 0)
        for f in range(args.folds):
            ti, ei = a[fold != f], a[fold == f]
            print(f"fold {f}", flush=True)
            s = selectors(
                tr_st,
                ti,
                tr_st,
                ei,
                P_a[[pos[int(i)] for i in ti]],
                P_a[[pos[int(i)] for i in ei]],
                not args.no_elhsr,
            )
            for k, v in s.items():
                oof.setdefault(k, np.zeros(len(a)))[fold == f] = v
        out["in_store_oof"] = _report(tr_st, a, oof, args.n)
        print("fresh store", flush=True)
        s = selectors(tr_st, a, fr_st, b, P_a, P_b, not args.no_elhsr)
        out["fresh_seed"] = _report(fr_st, b, s, args.n)
        md += [
            table_md(
                f"Out-of-fold by prompt inside the training store ({args.folds} prompt splits)",
                out["in_store_oof"],
            ),
            table_md(
                "Trained on every training-store prompt, tested on the fresh-seed store",
                out["fresh_seed"],
            ),
        ]

    if "cot" not in skip or "prune" not in skip:
        from hsrm.bon.prune import prefix_probe_scores, pruning_curve

        cot = Store(args.cot)
        c = _whole_prompts(cot, args.n)
        if "cot" not in skip:
            P_c = pooled_states(cot, c)
            pos_c = {int(i): j for j, i in enumerate(c)}
            oofc: dict[str, np.ndarray] = {}
            fold = prompt_folds(cot.prompt_ids[c], args.folds, 0)
            for f in range(args.folds):
                ti, ei = c[fold != f], c[fold == f]
                s = selectors(
                    cot,
                    ti,
                    cot,
                    ei,
                    P_c[[pos_c[int(i)] for i in ti]],
                    P_c[[pos_c[int(i)] for i in ei]],
                    False,
                )
                for k, v in s.items():
                    oofc.setdefault(k, np.zeros(len(c)))[fold == f] = v
            out["cot_oof"] = _report(cot, c, oofc, args.n)
            md.append(table_md("CoT family, out-of-fold by prompt", out["cot_oof"]))
        if "prune" not in skip:
            pref = prefix_probe_scores(cot, c, folds=args.folds)
            curve = pruning_curve(cot, c, pref)
            out["pruning"] = curve
            md.append(pruning_md(curve))
            plot_pruning(curve, RESULTS / f"{args.tag}_pruning.png")

    if "elhsr" not in skip:  # ELHSR (the demo's settings), trained on all of --train, on --fresh
        tr_st, fr_st = Store(args.train), Store(args.fresh)
        a, b = _whole_prompts(tr_st, args.n), _whole_prompts(fr_st, args.n)
        t0 = time.perf_counter()
        h = make_head("elhsr", **DEMO_ELHSR).fit(
            tr_st.features(a), tr_st.labels[a], tr_st.prompt_ids[a]
        )
        s = {"elhsr": h.score(fr_st.features(b))}
        s.update(baseline_scores(fr_st, a, b, train_store=tr_st))
        out["elhsr_fresh"] = _report(fr_st, b, s, args.n)
        fold = prompt_folds(tr_st.prompt_ids[a], args.folds, 0)
        oof = {"elhsr": np.zeros(len(a)), "mean_logprob": np.zeros(len(a))}
        oof.update({"random": np.zeros(len(a)), "majority": np.zeros(len(a))})
        for f in range(args.folds):
            ti, ei = a[fold != f], a[fold == f]
            hf = make_head("elhsr", **DEMO_ELHSR).fit(
                tr_st.features(ti), tr_st.labels[ti], tr_st.prompt_ids[ti]
            )
            oof["elhsr"][fold == f] = hf.score(tr_st.features(ei))
        oof["mean_logprob"] = np.array([tr_st.records[i]["mean_logprob"] for i in a])
        out["elhsr_in_store_oof"] = _report(tr_st, a, oof, args.n)
        md.append(
            table_md(
                f"ELHSR (demo settings), out-of-fold in --train ({args.folds} prompt splits)",
                out["elhsr_in_store_oof"],
            )
        )
        out["elhsr_fit_s"] = time.perf_counter() - t0
        md.append(
            table_md("ELHSR (demo settings), trained on --train, on --fresh", out["elhsr_fresh"])
        )

    out["seconds"] = time.perf_counter() - t_all
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(out, indent=1))
    (RESULTS / f"{args.tag}.md").write_text("\n".join(md))
    print("\n".join(md))


def pruning_md(curve: dict[str, Any]) -> str:
    lines = [
        "### Early pruning on the CoT store (offline simulation, `hsrm.prune`)",
        "",
        f"{curve['n_prompts']} prompts x {curve['n']}; full sampling generates "
        f"{curve['full_tokens']} answer tokens. Selector over the surviving samples: each column.",
        "",
        "| policy | tokens | saved | "
        + " | ".join(f"BoN@16 {s}" for s in curve["selectors"])
        + " |",
        "|" + "---|" * (3 + len(curve["selectors"])),
    ]
    for p in curve["points"]:
        lines.append(
            f"| {p['policy']} | {p['tokens']} | {p['saved']:.0%} | "
            + " | ".join(f"{p['bon'][s]:.3f}" for s in curve["selectors"])
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot_pruning(curve: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = curve["selectors"][0]
    fig, ax = plt.subplots(figsize=(6, 4))
    pols = sorted({p["family"] for p in curve["points"]})
    for pol in pols:
        pts = sorted((p for p in curve["points"] if p["family"] == pol), key=lambda p: p["tokens"])
        ax.plot([p["tokens"] for p in pts], [p["bon"][sel] for p in pts], "o-", label=pol)
    ax.set_xlabel("answer tokens generated")
    ax.set_ylabel(f"BoN@16 ({sel})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
