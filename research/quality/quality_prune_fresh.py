"""Early pruning on fresh task seeds, pooled (issue 12, goal 4).

    PYTHONPATH=src .venv/bin/python research/quality/quality_prune_fresh.py \\
        quality_prune_needed_train384_test14 quality_prune_needed_train384_test12 \\
        quality_prune_needed_train384_test15

Reads the results of ``quality_prune_needed.py`` runs that share a training store and differ in
their test store (each a task seed no head was fitted on), and pools their test prompts: per
policy and selector, the mean over all test prompts of BoN@16 after pruning minus BoN@16 without
it, with a bootstrap CI over prompts. The training store's out-of-fold replay is shown beside it
(from the first run). Writes research/quality/results/quality_prune_fresh.json and .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from hsrm import metrics as M

RESULTS = Path(__file__).parent / "results"
POLICIES = (
    "real prefix head, head frac=0.75 at 12",
    "random, same budget as head frac=0.75 at 12",
    "real prefix head, head frac=0.5 at 8,12",
    "random, same budget as head frac=0.5 at 8,12",
    "deepconf online eta=90 n_init=4 window=8",
    "deepconf online eta=10 n_init=4 window=8",
)
TRAIN = "train (out of fold)"


def pool(runs: list[dict[str, Any]], policy: str, store: str, n_boot: int) -> dict[str, Any]:
    """Concatenate the per-prompt differences of ``store`` over ``runs``."""
    parts = [r["per_store"][policy][store] for r in runs]
    sel = list(parts[0]["diff"])
    out: dict[str, Any] = {
        "n_prompts": sum(len(p["diff"][sel[0]]) for p in parts),
        "saved": 1 - sum(p["tokens"][0] for p in parts) / sum(p["tokens"][1] for p in parts),
    }
    for s in sel:
        d = np.concatenate([p["diff"][s] for p in parts])
        out[s] = {"delta": float(d.mean()), "ci": list(M.bootstrap_ci(d, n_boot, seed=0))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tags", nargs="+", help="quality_prune_needed result tags (one per test store)")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--tag", default="quality_prune_fresh")
    a = ap.parse_args()
    runs = [json.loads((RESULTS / f"{t}.json").read_text()) for t in a.tags]
    trains = {r["train"] for r in runs}
    if len(trains) != 1:
        raise SystemExit(f"the runs were fitted on different training stores: {sorted(trains)}")
    sel = list(runs[0]["per_store"][POLICIES[0]]["test"]["diff"])
    out: dict[str, Any] = {"train": trains.pop(), "tests": [r["test"] for r in runs], "rows": []}
    for pol in POLICIES:
        for name, rs, store in [(f"test {r['test']}", [r], "test") for r in runs] + [
            (f"all {len(runs)} test stores", runs, "test"),
            ("training store", runs[:1], TRAIN),
        ]:
            out["rows"].append({"policy": pol, "store": name, **pool(rs, pol, store, a.n_boot)})
    (RESULTS / f"{a.tag}.json").write_text(json.dumps(out, indent=1))
    L = [
        "# Early pruning on fresh task seeds, pooled (`quality_prune_fresh.py`)",
        "",
        "```",
        "PYTHONPATH=src python research/quality/quality_prune_fresh.py " + " ".join(a.tags),
        "```",
        "",
        f"Prefix head and final head fitted on `{out['train']}`; each test store is a task seed "
        "no head was fitted on. Each cell: mean over prompts of BoN@16 after pruning minus BoN@16 "
        f"without it [95% bootstrap CI over prompts, {a.n_boot} resamples]. The training store's "
        "row is its out-of-fold replay (3 prompt splits).",
        "",
        "| policy | store | prompts | saved | " + " | ".join(sel) + " |",
        "|---|---|---|---|" + "---|" * len(sel),
    ]
    for r in out["rows"]:
        cells = [f"{r[s]['delta']:+.3f} [{r[s]['ci'][0]:+.3f}, {r[s]['ci'][1]:+.3f}]" for s in sel]
        L.append(
            f"| {r['policy']} | {r['store']} | {r['n_prompts']} | {r['saved']:.0%} | "
            + " | ".join(cells)
            + " |"
        )
    md = "\n".join(L) + "\n"
    (RESULTS / f"{a.tag}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
