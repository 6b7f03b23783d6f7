"""Head-weighted votes and ELHSR's training settings, chosen on a validation store; ELHSR's seed spread.

    PYTHONPATH=src .venv/bin/python benchmarks/quality_votes.py \\
        --train runs/demo/samples --val runs/val2 [--threads 1]

``--train``: the demo's store (512 prompts x 16, task seed 0). ``--val``: a store of a third task seed
that neither the demo's out-of-fold numbers nor its fresh seed (task seed 1) touch::

    hsrm sample --out runs/val2 --task synthetic:arith,compare --n-prompts 192 --task-seed 2 \\
        --seed 2 --fewshot per_prompt --layers all --max-new-tokens 6

1. Validation: ELHSR at the demo's layers (``top:11``) in two training settings x 3 seeds, fitted on
   all of ``--train`` and scored on ``--val``. For each: BoN@16 of the head and of its
   score-weighted vote (``<head>_vote``: weights ``exp(z)`` of the within-prompt z-score), per family,
   within-prompt AUROC and fit time. The demo's settings and the vote are chosen here.
2. In store: the chosen setting out of fold over the demo's 3 prompt splits, 3 seeds, to show how
   far the seed alone moves the demo's in-store number.

Writes benchmarks/results/quality_votes.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsrm.bon.demo import DEMO_ELHSR, cross_fit, demo_head_layers
from hsrm.bon.report import bon_per_prompt
from hsrm.bon.scorers import add_head_votes
from hsrm.heads import make_head
from hsrm.metrics import within_prompt_auroc
from hsrm.store import Store

RESULTS = Path(__file__).parent / "results"
SETTINGS: dict[str, dict[str, Any]] = {
    "SWIFT batch 16, lr 1e-4 (old demo)": {"batch_size": 16, "lr": 1e-4},
    "batch 64, lr 4e-4": {"batch_size": 64, "lr": 4e-4},
}
N = 16


def _table(st: Store, s: np.ndarray) -> dict[str, float]:
    """BoN@N of a head's scores and of its weighted vote, within-prompt AUROC; overall, per family."""
    y, g = st.labels, st.prompt_ids
    fams = np.array([r["family"] for r in st.records])
    ex = np.asarray([r["extracted"] for r in st.records], dtype=object)
    sc = add_head_votes({"h": s}, ["h"], g)
    out: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for fam in (None, *sorted(set(fams.tolist()))):
        m = np.ones(len(y), bool) if fam is None else fams == fam
        tag = fam or "all"
        for name, vote in (("bon", None), ("vote", (sc["h_vote"][m], 1.0))):
            per = bon_per_prompt(name, s[m], y[m], g[m], ex[m], N, rng, vote=vote)
            out[f"{name}_{tag}"] = float(np.mean(list(per.values())))
        out[f"wauroc_{tag}"] = float(within_prompt_auroc(s[m], y[m], g[m]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", default="runs/demo/samples")
    ap.add_argument("--val", default="runs/val2")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chosen", default="batch 64, lr 4e-4")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    st, va = Store(args.train), Store(args.val)
    layers = list(demo_head_layers("top:11", st.fingerprint.n_layers))
    Xtr, Xva = st.features(np.arange(len(st))), va.features(np.arange(len(va)))
    val: dict[str, list[dict[str, float]]] = {}
    for name, params in SETTINGS.items():
        for seed in range(args.seeds):
            p = {**DEMO_ELHSR, **params, "seed": seed}
            t0 = time.perf_counter()
            head = make_head("elhsr", layers=layers, **p).fit(Xtr, st.labels, st.prompt_ids)
            r = {"seed": seed, "fit_s": time.perf_counter() - t0, "epochs": len(head.history_)}
            r.update(_table(va, head.score(Xva)))
            val.setdefault(name, []).append(r)
            print(name, json.dumps({k: round(v, 3) for k, v in r.items()}), flush=True)
    oof = []
    for seed in range(args.seeds):
        p = {**DEMO_ELHSR, **SETTINGS[args.chosen], "seed": seed}
        sc, _ = cross_fit(
            st, args.folds, 0, {"elhsr": ("elhsr", {"layers": layers, **p})}, progress=False
        )
        r = {"seed": seed, **_table(st, sc["elhsr"])}
        oof.append(r)
        print("in store", json.dumps({k: round(v, 3) for k, v in r.items()}), flush=True)
    out = {
        "machine": "2-core CPU box shared with other jobs",
        "config": vars(args),
        "train": st.meta["task"],
        "val": va.meta["task"],
        "val_results": val,
        "in_store_oof": oof,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality_votes.json").write_text(json.dumps(out, indent=1))
    md = markdown(out)
    (RESULTS / "quality_votes.md").write_text(md)
    print(md)


def _rows(rs: list[dict[str, float]], label: str) -> list[str]:
    cols = ("all", "arith", "compare")
    lines = []
    for r in rs:
        cells = [f"{r[f'bon_{c}']:.3f} / {r[f'vote_{c}']:.3f}" for c in cols]
        fit = f"{r['fit_s']:.0f}" if "fit_s" in r else ""
        lines.append(
            f"| {label} | {r['seed']} | "
            + " | ".join(cells)
            + f" | {r['wauroc_all']:.3f} | {fit} |"
        )
    mean = {k: float(np.mean([r[k] for r in rs])) for k in rs[0] if k != "seed"}
    cells = [f"**{mean[f'bon_{c}']:.3f} / {mean[f'vote_{c}']:.3f}**" for c in cols]
    lines.append(f"| {label} | mean | " + " | ".join(cells) + f" | {mean['wauroc_all']:.3f} | |")
    return lines


def markdown(out: dict[str, Any]) -> str:
    head = (
        "| setting | seed | all: BoN@16 / vote@16 | arith | compare | within-prompt AUROC | "
        "fit s |\n|---|---|---|---|---|---|---|"
    )
    md = [
        "# Head-weighted votes and ELHSR settings (`benchmarks/quality_votes.py`)",
        "",
        f"ELHSR at the demo's layers (top:11), fitted on all of `{out['config']['train']}` "
        f"(task seed {out['train']['seed']}), scored on `{out['config']['val']}` (task seed "
        f"{out['val']['seed']}, {out['val']['n']} prompts). Each cell: the head's BoN@16 / its "
        "score-weighted vote's BoN@16. Machine: " + out["machine"] + ".",
        "",
        "## Validation store (choices are made here)",
        "",
        head,
    ]
    for name, rs in out["val_results"].items():
        md += _rows(rs, name)
    md += [
        "",
        f"## In store, out of fold ({out['config']['folds']} prompt splits), setting "
        f"`{out['config']['chosen']}`: the spread the seed alone gives",
        "",
        head,
        *_rows(out["in_store_oof"], out["config"]["chosen"]),
        "",
    ]
    return "\n".join(md)


if __name__ == "__main__":
    main()
