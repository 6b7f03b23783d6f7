"""Does a head trained on one task family rank answers of another? (It should not be assumed.)

    .venv/bin/python benchmarks/bench_transfer.py [--run runs/demo/samples]

Trains ELHSR (the demo's settings) on all prompts of one family and scores every prompt of the
other, against the same head trained out-of-fold within the target family. Writes
benchmarks/results/transfer.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from hsrm.bon.demo import DEMO_ELHSR
from hsrm.bon.report import bon_report
from hsrm.heads import make_head
from hsrm.splits import prompt_folds
from hsrm.store import Store

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/demo/samples")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    st = Store(args.run)
    X = st.features().materialize()
    y, pids, fam = st.labels, st.prompt_ids, st.column("family")
    fams = sorted(set(fam.tolist()))
    rows = []
    for src in fams:
        for dst in fams:
            te = np.flatnonzero(fam == dst)
            if src == dst:  # within-family, out-of-fold by prompt
                s = np.zeros(len(st))
                fold = prompt_folds(pids[te], 3, 0)
                for f in range(3):
                    tr_i, te_i = te[fold != f], te[fold == f]
                    h = make_head("elhsr", **DEMO_ELHSR).fit(X.subset(tr_i), y[tr_i], pids[tr_i])
                    s[te_i] = h.score(X.subset(te_i))
                scores = s[te]
            else:
                tr = np.flatnonzero(fam == src)
                scores = (
                    make_head("elhsr", **DEMO_ELHSR)
                    .fit(X.subset(tr), y[tr], pids[tr])
                    .score(X.subset(te))
                )
            rep = bon_report(
                {"elhsr": scores, "random": np.zeros(len(te))}, y[te], pids[te], ks=[16], n_boot=300
            )
            rows.append(
                {
                    "train": src,
                    "test": dst,
                    "bon@16": rep["bon"]["elhsr"]["16"],
                    "bon@16_ci": rep["bon_ci"]["elhsr"]["16"],
                    "mean_accuracy": rep["mean_accuracy"],
                    "within_prompt_auroc": rep["within_prompt_auroc"]["elhsr"],
                    "within_prompt_auroc_ci": rep["within_prompt_auroc_ci"]["elhsr"],
                }
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "transfer.json").write_text(json.dumps({"run": args.run, "rows": rows}, indent=2))
    md = [
        "| trained on | tested on | BoN@16 [95% CI] | mean accuracy | within-prompt AUROC [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["bon@16_ci"]
        wl, wh = r["within_prompt_auroc_ci"]
        md.append(
            f"| {r['train']} | {r['test']} | {r['bon@16']:.3f} [{lo:.3f}, {hi:.3f}] | {r['mean_accuracy']:.3f} | "
            f"{r['within_prompt_auroc']:.3f} [{wl:.3f}, {wh:.3f}] |"
        )
    (RESULTS / "transfer.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
