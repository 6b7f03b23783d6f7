"""`hsrm demo` at more prompts than its default: does the in-store number reach half the gap?

    hsrm demo --out runs/demo                          # the default, 512 prompts (make demo)
    hsrm demo --out runs/demo800 --n-prompts 800
    hsrm demo --out runs/demo1024 --n-prompts 1024
    PYTHONPATH=src .venv/bin/python benchmarks/quality_demo_size.py runs/demo runs/demo800 runs/demo1024

The demo's in-store evaluation trains each split's heads on two thirds of the store's prompts
(3 splits), so a larger store means more training prompts per split (341 / 533 / 683), tested on
prompts of the same seed as before. The fresh seed (128 prompts, task seed 1) is the same store in
every run; its heads train on the whole store. This script only reads the runs' results.json and
writes benchmarks/results/quality_demo_size.json and .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

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
            f: {s: v["bon"][s][N] for s in ("picked", "majority", "answer_prior") if s in v["bon"]}
            for f, v in rep.get("per_family", {}).items()
        },
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="hsrm demo output folders")
    ap.add_argument("--tag", default="quality_demo_size")
    a = ap.parse_args()
    rows = []
    for run in a.runs:
        rep = json.loads((Path(run) / "results.json").read_text())
        row = {
            "run": run,
            "train_prompts_per_split": int(
                round(rep["n_prompts"] * (rep["sizes"]["folds"] - 1) / rep["sizes"]["folds"])
            ),
            "in_store": summary(rep),
            "picks_in_store": [s["picked"] for s in rep["splits"]],
            "timing": rep["timing"],
        }
        if "fresh" in rep:
            row["fresh"] = summary(rep["fresh"])
            row["picks_fresh"] = rep["fresh"].get("picked")
        rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{a.tag}.json").write_text(json.dumps(rows, indent=1))
    md = markdown(rows, a.runs)
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
        f"PYTHONPATH=src python benchmarks/quality_demo_size.py {' '.join(runs)}",
        "```",
        "",
        "Each run is `hsrm demo --n-prompts P` (3 prompt splits; everything else the default). "
        "BoN@16; `picked` with its 95% CI over prompts and the share of the gap between random "
        "and pass@16 that it closes (the goal: 50%).",
        "",
    ]
    for where in ("in_store", "fresh"):
        title = (
            "In store, out of fold (each prompt tested by heads that did not train on it)"
            if where == "in_store"
            else "Fresh seed (128 prompts of task seed 1; heads trained on the whole store)"
        )
        L += [
            f"## {title}",
            "",
            "| store prompts (training prompts) | picked | gap | "
            + " | ".join(SCORERS[1:])
            + " | pass@16 | arith: picked / majority | compare: picked / majority |",
            "|---|---|---|" + "---|" * (len(SCORERS) - 1) + "---|---|---|",
        ]
        for r in rows:
            s = r.get(where)
            if s is None:
                continue
            pf = s["per_family"]
            fam = [
                f"{pf[f]['picked']:.3f} / {pf[f]['majority']:.3f}" if f in pf else ""
                for f in ("arith", "compare")
            ]
            train = r["train_prompts_per_split"] if where == "in_store" else "all"
            L.append(
                f"| {r['in_store']['prompts']} ({train}) | "
                f"{_cell(s, 'picked')} | {100 * s['gap_closed_picked']:.0f}% | "
                + " | ".join(_cell(s, n) for n in SCORERS[1:])
                + f" | {s['pass@16']:.3f} | "
                + " | ".join(fam)
                + " |"
            )
        L.append("")
    L += ["Picks (per family, chosen out of fold) and wall time on the 2-core box:", ""]
    for r in rows:
        L.append(
            f"- {r['run']}: in store {r['picks_in_store']}; fresh {r.get('picks_fresh')}; "
            f"sampling {r['timing']['sampling_s']:.0f} s, total {r['timing']['total_s']:.0f} s"
            + (" (rerun over a store already sampled)" if r["timing"]["sampling_s"] < 60 else "")
        )
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
