"""What enlarges the gap ELHSR closes? Variants trained out-of-fold on the demo's store, controls beside.

    .venv/bin/python benchmarks/bench_ablations.py [--run runs/demo/samples] [--folds 3] [--seeds 0 1 2]

Each variant: BoN@8, BoN@16 and within-prompt AUROC, out-of-fold over k prompt folds, repeated
over several fold seeds (mean and min..max across seeds). Writes benchmarks/results/ablations.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hsrm.bon.baselines import baseline_scores
from hsrm.bon.demo import DEMO_ELHSR
from hsrm.bon.report import bon_report
from hsrm.capture import parse_layers
from hsrm.features import TokenFeatures
from hsrm.heads import make_head
from hsrm.splits import prompt_folds
from hsrm.store import Store

RESULTS = Path(__file__).parent / "results"


def with_prompt_token(store: Store) -> TokenFeatures:
    """Answer tokens preceded by the prompt's last token (its state before answering)."""
    recs = store.records

    def get(i: int) -> torch.Tensor:
        return torch.cat([store.prompt_hidden(recs[i]["prompt_id"])[None], store.hidden(i)], 0)

    return TokenFeatures(get, len(store), store.layers, store.fingerprint)


def oof(store, X, arch, params, folds, seed, train_frac=1.0):
    pids, y = store.prompt_ids, store.labels
    fold = prompt_folds(pids, folds, seed)
    s = np.zeros(len(store))
    rng = np.random.default_rng(seed)
    for f in range(folds):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        if train_frac < 1.0:
            keep = set(
                rng.choice(
                    np.unique(pids[tr]), int(train_frac * len(np.unique(pids[tr]))), replace=False
                )
            )
            tr = np.array([i for i in tr if pids[i] in keep])
        s[te] = make_head(arch, **params).fit(X.subset(tr), y[tr], pids[tr]).score(X.subset(te))
    return s


def oof_baselines(store, folds, seed):
    pids = store.prompt_ids
    fold = prompt_folds(pids, folds, seed)
    out = {}
    for f in range(folds):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        for k, v in baseline_scores(store, tr, te).items():
            out.setdefault(k, np.zeros(len(store)))[te] = v
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/demo/samples")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    store = Store(args.run)
    nL = store.fingerprint.n_layers
    X = store.features().materialize()
    Xp = with_prompt_token(store).materialize()
    e4 = list(parse_layers("every:4", nL))
    best = {"layers": e4, **DEMO_ELHSR}
    variants = {
        "elhsr, SWIFT defaults (every 4th layer)": (X, "elhsr", {"layers": e4}),
        "elhsr, + early stop on within-prompt AUROC": (
            X,
            "elhsr",
            {"layers": e4, "early_stop": "within_auroc"},
        ),
        "elhsr, + standardize, patience 5 (demo default)": (X, "elhsr", best),
        "demo default, all 31 layers": (X, "elhsr", {**best, "layers": None}),
        "demo default, middle layer only": (X, "elhsr", {**best, "layers": [nL // 2]}),
        "demo default, last layer only": (X, "elhsr", {**best, "layers": [nL]}),
        "demo default, no gate (plain mean)": (X, "elhsr", {**best, "gate": False}),
        "demo default, final norm on every layer": (X, "elhsr", {**best, "final_norm": True}),
        "demo default, + prompt's last token": (Xp, "elhsr", best),
        "demo default, 50% of training prompts": (X, "elhsr", best, 0.5),
        "demo default, 25% of training prompts": (X, "elhsr", best, 0.25),
        "probe (middle layer, logreg)": (X, "probe", {}),
        "probe (PCA+LDA)": (X, "probe", {"method": "lda"}),
    }
    N = str(int(store.meta["sampling"]["n"]))
    ks = ["8", N]
    rows: dict[str, dict[str, list[float]]] = {}
    t0 = time.perf_counter()
    for seed in args.seeds:
        scores = oof_baselines(store, args.folds, seed)
        for name, spec in variants.items():
            Xv, arch, params = spec[:3]
            frac = spec[3] if len(spec) > 3 else 1.0
            scores[name] = oof(store, Xv, arch, params, args.folds, seed, frac)
        rep = bon_report(
            scores,
            store.labels,
            store.prompt_ids,
            extracted=[r["extracted"] for r in store.records],
            ks=[int(k) for k in ks],
            n_boot=100,
            seed=seed,
        )
        for name in scores:
            r = rows.setdefault(name, {f"bon@{k}": [] for k in ks} | {"within_prompt_auroc": []})
            for k in ks:
                r[f"bon@{k}"].append(rep["bon"][name][k])
            r["within_prompt_auroc"].append(rep["within_prompt_auroc"][name])
        rows.setdefault(
            "oracle (pass@k)", {f"bon@{k}": [] for k in ks} | {"within_prompt_auroc": []}
        )
        for k in ks:
            rows["oracle (pass@k)"][f"bon@{k}"].append(rep["pass_at_k"][k])
        rows["oracle (pass@k)"]["within_prompt_auroc"].append(float("nan"))
    out = {
        "run": args.run,
        "folds": args.folds,
        "seeds": args.seeds,
        "n_prompts": int(len(set(store.prompt_ids))),
        "seconds": time.perf_counter() - t0,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ablations.json").write_text(json.dumps(out, indent=2))
    cols = [f"bon@{k}" for k in ks] + ["within_prompt_auroc"]
    md = [
        "| variant | "
        + " | ".join(f"{c} (mean, min..max over {len(args.seeds)} fold seeds)" for c in cols)
        + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, r in rows.items():
        cells = []
        for c in cols:
            v = np.array(r[c], float)
            cells.append(
                ""
                if np.isnan(v).all()
                else f"{np.nanmean(v):.3f} ({np.nanmin(v):.3f}..{np.nanmax(v):.3f})"
            )
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    (RESULTS / "ablations.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
