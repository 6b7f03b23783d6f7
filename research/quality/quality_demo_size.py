"""`hsrm demo` at more prompts than its default: does the in-store number reach half the gap?

    # these runs predate training-only prompts: today they need --train-prompts 0
    hsrm demo --out runs/demo512 --n-prompts 512      # the default then (make demo)
    hsrm demo --out runs/demo800 --n-prompts 800
    hsrm demo --out runs/demo1024 --n-prompts 1024
    hsrm demo --out runs/demo2048 --n-prompts 2048 --threads 1
    hsrm demo --out runs/demo3072 --n-prompts 3072 --threads 1
    # on one H200 (benchmarks/results/demo_h200_4096/run.md):
    hsrm demo --n-prompts 4096 --fresh-prompts 512 --device cuda --dtype float32 --batch-prompts 64
    PYTHONPATH=src .venv/bin/python research/quality/quality_demo_size.py runs/demo512 runs/demo800 \
        runs/demo1024 runs/demo2048 runs/demo3072 benchmarks/results/demo_h200_4096

The demo's in-store evaluation trains each split's heads on two thirds of the store's prompts
(3 splits), so a larger store means more training prompts per split (341 / 533 / 683), tested on
prompts of the same seed as before. The fresh seed (128 prompts, task seed 1; 512 in the GPU run,
whose first 128 are those) is the same store in every run; its heads train on the whole store.

The synthetic task has 1,560 distinct questions (arith 800, compare 760) and draws them without
repeats while it can, so stores of more prompts repeat questions: a test prompt may then ask a
question a training prompt asked (in another few-shot context). The ``seen`` columns count those
test prompts, rebuilt from each run's task description and split seed (the prompts are a pure
function of them); `quality_seen.py` reports the heads on the unseen ones. This script only reads
the runs' results.json and writes research/quality/results/quality_demo_size.json and .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from hsrm.splits import prompt_folds
from hsrm.tasks import get_task

RESULTS = Path(__file__).parent / "results"
SCORERS = (
    "picked",
    "elhsr",
    "elhsr_vote",
    "rank_vote",
    "mean_logprob",
    "majority",
    "deepconf_vote",
    "answer_prior",
    "text_only",
    "random",
)


def summary(rep: dict[str, Any]) -> dict[str, Any]:
    """BoN@16 [CI] of the scorers, the gap `picked` closes, per family; of a demo report."""
    N = str(rep.get("N", 16))
    out = {
        "prompts": rep["n_prompts"],
        "mean_accuracy": rep["mean_accuracy"],
        "pass@16": rep["pass_at_k"][N],
        "gap_closed_picked": rep["gap_closed"]["picked"][N],
        "bon16": {s: rep["bon"][s][N] for s in SCORERS if s in rep["bon"]},
        "bon16_ci": {s: rep["bon_ci"][s][N] for s in SCORERS if s in rep.get("bon_ci", {})},
        "per_family": {
            f: {
                **{
                    s: v["bon"][s][N]
                    for s in ("picked", "majority", "answer_prior")
                    if s in v["bon"]
                },
                # the pick minus majority, paired over the family's prompts (reports that have it)
                **(
                    {"picked_vs_majority": v["vs_majority"]["picked"]} if "vs_majority" in v else {}
                ),
            }
            for f, v in rep.get("per_family", {}).items()
        },
    }
    return out


def _family(f: dict[str, Any]) -> str:
    """`picked` / majority, and the paired difference [95% CI] where the report has it."""
    cell = f"{f['picked']:.3f} / {f['majority']:.3f}"
    d = f.get("picked_vs_majority")
    return cell + (f" ({d['delta']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}])" if d else "")


def unseen(rep: dict[str, Any], n_seen: int) -> dict[str, Any] | None:
    """`picked` on the test prompts whose question no training prompt asked: the demo's own
    split (`questions`), or the whole report where no test prompt repeats one; None for a run
    that repeats questions and predates the split."""
    N = str(rep.get("N", 16))
    u = rep.get("questions", {}).get("unseen") or (rep if n_seen == 0 else None)
    if u is None:
        return None
    return {
        "prompts": u["n_prompts"],
        "picked": u["bon"]["picked"][N],
        "ci": u["bon_ci"]["picked"][N],
        "gap": u["gap_closed"]["picked"][N],
    }


def _questions(task: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(prompt ids, question texts) of a synthetic store, rebuilt from its task description."""
    lo, hi = task.get("range", [1, 20])
    t = get_task(
        "synthetic",
        n=task["n"],
        families=",".join(task["families"]),
        seed=task["seed"],
        lo=lo,
        hi=hi,
        shots=task.get("shots", 3),
        fewshot=task.get("fewshot", "fixed"),
    )
    ps = t.prompts()
    return np.array([p.id for p in ps]), np.array([p.messages[-1]["content"] for p in ps])


def seen_counts(rep: dict[str, Any]) -> dict[str, int]:
    """Test prompts whose question a training prompt asked: in store (out of fold) and fresh.
    The demo's own counts where it reports them (they include its training-only prompts)."""
    own = {"in_store": rep.get("questions", {}), "fresh": rep.get("fresh", {}).get("questions", {})}
    if all("seen_prompts" in v for k, v in own.items() if k == "in_store" or "fresh" in rep):
        out = {k: int(v["seen_prompts"]) for k, v in own.items() if "seen_prompts" in v}
        return {**out, "distinct_questions": len(set(_questions(rep["task"])[1].tolist()))}
    ids, q = _questions(rep["task"])
    fold = prompt_folds(ids, rep["sizes"]["folds"], rep["seed"])
    seen = sum(int(np.isin(q[fold == f], q[fold != f]).sum()) for f in range(int(fold.max()) + 1))
    out = {"in_store": seen, "distinct_questions": len(set(q.tolist()))}
    if "fresh" in rep:
        _, fq = _questions(rep["fresh"]["task"])
        out["fresh"] = int(np.isin(fq, q).sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="hsrm demo output folders (holding results.json)")
    ap.add_argument("--tag", default="quality_demo_size")
    a = ap.parse_args()
    rows = []
    for run in a.runs:
        rep = json.loads((Path(run) / "results.json").read_text())
        row = {
            "run": run,
            "train_prompts_per_split": int(
                round(rep["n_prompts"] * (rep["sizes"]["folds"] - 1) / rep["sizes"]["folds"])
            )
            + rep["sizes"].get("train_only_prompts", 0),
            "dtype": rep.get("dtype", "float32"),  # runs before it was recorded: float32 on a cpu
            "seed": rep.get("seed", 0),
            "folds": rep["sizes"]["folds"],
            "train_only": [
                rep["sizes"].get("train_only_prompts", 0),
                rep["sizes"].get("train_only_samples", 0),
            ],
            "in_store": summary(rep),
            "picks_in_store": [s["picked"] for s in rep["splits"]],
            "timing": rep["timing"],
            "seen_questions": seen_counts(rep),
        }
        if "fresh" in rep:
            row["fresh"] = summary(rep["fresh"])
            row["picks_fresh"] = rep["fresh"].get("picked")
            # the questions its store was told to avoid (task seed, prompts), or None: older runs
            row["fresh_avoids"] = rep["fresh"].get("task", {}).get("avoid_questions")
        for where, r in (("in_store", rep), ("fresh", rep.get("fresh"))):
            if r is not None:
                row[where]["unseen"] = unseen(r, row["seen_questions"][where])
        rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{a.tag}.json").write_text(json.dumps(rows, indent=1))
    md = markdown(rows, a.runs + ([] if a.tag == "quality_demo_size" else ["--tag", a.tag]))
    (RESULTS / f"{a.tag}.md").write_text(md)
    print(md)


def _cell(s: dict[str, Any], name: str) -> str:
    v = s["bon16"].get(name)
    if v is None:
        return ""
    ci = s["bon16_ci"].get(name)
    return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and name == "picked" else "")


def markdown(rows: list[dict[str, Any]], runs: list[str]) -> str:
    L = [
        "# `hsrm demo` at more prompts (`quality_demo_size.py`)",
        "",
        "```",
        f"PYTHONPATH=src python research/quality/quality_demo_size.py {' '.join(runs)}",
        "```",
        "",
        "Each run is an `hsrm demo` (its prompt splits, prompts, training-only prompts and dtype "
        "in the list at the end). Training prompts per split include the training-only ones. "
        "BoN@16; `picked` with its 95% CI over prompts and the share of the gap between random "
        "and pass@16 that it closes (the goal: 50%).",
        "",
    ]
    for where in ("in_store", "fresh"):
        title = (
            "In store, out of fold (each prompt tested by heads that did not train on it)"
            if where == "in_store"
            else "Fresh seed (prompts of task seed 1, as many as the second column counts; heads "
            "trained on the whole store; runs whose fresh store avoids the training questions "
            "say so at the end)"
        )
        L += [
            f"## {title}",
            "",
            "| store prompts (training prompts) | test prompts with a seen question | "
            "picked on the unseen ones [95% CI] (gap) | picked | gap | "
            + " | ".join(SCORERS[1:])
            + " | pass@16 | arith: picked / majority (paired difference [95% CI]) | compare: picked / "
            "majority (paired difference) |",
            "|---|---|---|---|---|" + "---|" * (len(SCORERS) - 1) + "---|---|---|",
        ]
        for r in rows:
            s = r.get(where)
            if s is None:
                continue
            pf = s["per_family"]
            fam = [_family(pf[f]) if f in pf else "" for f in ("arith", "compare")]
            train = r["train_prompts_per_split"] if where == "in_store" else "all"
            seen = f"{r['seen_questions'][where]} of {s['prompts']}"
            u = s.get("unseen")
            uns = (
                f"{u['picked']:.3f} [{u['ci'][0]:.3f}, {u['ci'][1]:.3f}] ({100 * u['gap']:.0f}%)"
                if u
                else "none unseen"
                if r["seen_questions"][where] == s["prompts"]
                else "-"
            )
            L.append(
                f"| {r['in_store']['prompts']} ({train}) | {seen} | {uns} | "
                f"{_cell(s, 'picked')} | {100 * s['gap_closed_picked']:.0f}% | "
                + " | ".join(_cell(s, n) for n in SCORERS[1:])
                + f" | {s['pass@16']:.3f} | "
                + " | ".join(fam)
                + " |"
            )
        L.append("")
    L += [
        "-: the run predates the demo's split by seen and unseen questions "
        "(`quality_seen.py` refits and splits the 512, 1024 and 2048 runs: `quality_seen.md`).",
        "",
    ]
    L += [
        "Picks (per family, chosen out of fold) and this run's time (the 2-core box; the GPU "
        "run: one H200 with 16 CPU cores, `demo_h200_4096/run.md`; a run that resumed stores "
        "already sampled counts only the sampling it did):",
        "",
    ]
    for r in rows:
        L.append(
            f"- {r['run']} (seed {r['seed']}, {r['dtype']}, {r.get('folds', 3)} prompt splits; {r['train_only'][0]} training-only prompts, "
            f"{r['train_only'][1]} samples): in store {r['picks_in_store']}; fresh "
            f"{r.get('picks_fresh')}"
            + (
                f" (fresh store avoids the questions of task seed {r['fresh_avoids'][0]}'s first "
                f"{r['fresh_avoids'][1]} prompts)"
                if r.get("fresh_avoids")
                else ""
            )
            + f"; sampling {r['timing']['sampling_s']:.0f} s, total {r['timing']['total_s']:.0f} s"
        )
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
