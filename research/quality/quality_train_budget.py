"""Training prompts or samples per prompt? The demo's heads refitted out of fold on one store with
training sets that differ in prompts x samples, tested on the same prompts every time.

    PYTHONPATH=src .venv/bin/python research/quality/quality_train_budget.py \\
        [--store runs/demo1024/samples] [--partitions 3] [--sampling-cost]

Why: the demo's in-store number rises with its training prompts (research/quality/HISTORY.md, fifth and sixth
sessions), but every prompt of its store is sampled 16 times because each is tested once. A prompt
that is only trained on does not need 16: if 4 samples of twice the prompts train as well as 16 of
half, the demo can buy more training prompts with the same sampling time.

For each of ``--partitions`` partitions of the store's prompts into 3 splits, each split is tested
on its own prompts (all 16 samples) with the heads (ELHSR, probe, rank) trained on the other two
splits' prompts, restricted to a fraction of those prompts and to their first k samples
(``FRACxK``).
``0.5x16`` is what the demo's 512-prompt store trained on (341 prompts x 16); ``1x4`` spends half
those samples on twice the prompts. Reports BoN@16 of ELHSR, its vote and the demo's ``picked``
(per family, chosen out of fold), with the gap closed.

``--sampling-cost``: also times ``hsrm sample`` of 48 prompts of the demo's task at 16, 8 and 4
samples each (the rows per step kept at 128), the cost that decides the demo's split.

Writes research/quality/results/quality_train_budget.json and .md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from quality_ensemble import _fams, candidates, fit_scores, table  # noqa: E402

from hsrm.bon.demo import picked_out_of_fold  # noqa: E402
from hsrm.bon.scorers import add_head_votes  # noqa: E402
from hsrm.layer_spec import parse_layers  # noqa: E402
from hsrm.metrics import gap_closed  # noqa: E402
from hsrm.splits import prompt_folds  # noqa: E402
from hsrm.store import Store  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SETTINGS = ("0.5x16", "0.5x8", "1x4", "1x8", "1x16")
SHOWN = ("elhsr", "elhsr_vote", "picked")


def rank_in_prompt(g: np.ndarray) -> np.ndarray:
    """Each sample's position among its prompt's samples, in store order."""
    out, seen = np.zeros(len(g), int), {}
    for i, p in enumerate(g):
        out[i] = seen.get(p, 0)
        seen[p] = out[i] + 1
    return out


def run_partition(st: Store, part: int, settings: list[str], layers: list[int]) -> dict[str, Any]:
    g, y = st.prompt_ids, st.labels
    every = np.arange(len(st))
    fams = _fams(st, every)
    ex = [r["extracted"] for r in st.records]
    F = st.features()
    k_in = rank_in_prompt(g)
    fold = prompt_folds(g, 3, part)
    rng = np.random.default_rng(100 + part)  # which prompts a FRAC < 1 keeps
    res: dict[str, Any] = {}
    for s in settings:
        frac, k = float(s.split("x")[0]), int(s.split("x")[1])
        t0 = time.perf_counter()
        acc: dict[str, np.ndarray] = {}
        n_prompts, n_samples = [], []
        for f in range(3):
            pool = np.unique(g[fold != f])
            keep = rng.permutation(pool)[: int(round(frac * len(pool)))]
            tr = np.flatnonzero((fold != f) & np.isin(g, keep) & (k_in < k))
            te = np.flatnonzero(fold == f)
            n_prompts.append(len(keep))
            n_samples.append(len(tr))
            out = fit_scores(
                F, y, g, fams, tr, [(F.subset(te), fams[te])], layers, seeds=(0,), per_family=False
            )
            for name, v in out.items():
                acc.setdefault(name, np.zeros(len(st)))[te] = v[0]
        sc = {"elhsr": acc["elhsr_s0"], "probe": acc["probe"], "rank": acc["rank"]}
        sc = add_head_votes(sc, list(sc), g)
        sc["picked"], _ = picked_out_of_fold(sc, y, g, fams, ex, fold, candidates("elhsr"), 16)
        tab = table(st, every, sc)
        res[s] = {
            "train_prompts": float(np.mean(n_prompts)),
            "train_samples": float(np.mean(n_samples)),
            "seconds": time.perf_counter() - t0,
            **{n: tab[n] for n in (*SHOWN, "_ref")},
        }
        print(f"partition {part} {s}: " + ", ".join(
            f"{n} {tab[n]['all']:.3f}" for n in SHOWN), flush=True)  # fmt: skip
    return res


def sampling_cost(threads: int) -> dict[str, Any]:
    """Seconds of ``hsrm sample`` for 48 prompts of the demo's task at n = 16, 8, 4."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n, bp in ((16, 8), (8, 16), (4, 32)):
            cmd = [sys.executable, "-m", "hsrm", "sample", "--out", f"{tmp}/n{n}",
                   "--n-prompts", "48", "--n", str(n), "--batch-prompts", str(bp),
                   "--fewshot", "per_prompt", "--layers", "all", "--threads", str(threads)]  # fmt: skip
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            meta = json.loads(Path(f"{tmp}/n{n}/meta.json").read_text())
            out[str(n)] = {
                "wall_s": time.perf_counter() - t0,
                "sampling_s": meta["last_run"]["seconds"],
                "s_per_prompt": meta["last_run"]["seconds"] / 48,
            }
            print(f"n={n}: {out[str(n)]}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="runs/demo1024/samples")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sampling-cost", action="store_true")
    ap.add_argument("--replot", action="store_true", help="only rewrite the .md from the JSON")
    a = ap.parse_args()
    if a.replot:
        out = json.loads((RESULTS / "quality_train_budget.json").read_text())
        a.store, a.partitions = out["store"], len(out["partitions"])
        a.sampling_cost = "sampling_cost" in out
        (RESULTS / "quality_train_budget.md").write_text(markdown(out, a))
        return
    torch.set_num_threads(a.threads)
    st = Store(a.store)
    layers = list(parse_layers("top:11", st.fingerprint.n_layers))
    settings = a.settings.split(",")
    out: dict[str, Any] = {"store": a.store, "settings": settings, "partitions": []}
    for p in range(a.partitions):
        out["partitions"].append(run_partition(st, p, settings, layers))
    if a.sampling_cost:
        out["sampling_cost"] = sampling_cost(a.threads)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality_train_budget.json").write_text(json.dumps(out, indent=1))
    md = markdown(out, a)
    (RESULTS / "quality_train_budget.md").write_text(md)
    print(md)


def markdown(out: dict[str, Any], a: argparse.Namespace) -> str:
    parts = out["partitions"]
    L = [
        "# Training prompts or samples per prompt (`quality_train_budget.py`)",
        "",
        "```",
        f"PYTHONPATH=src python research/quality/quality_train_budget.py --store {a.store} "
        f"--partitions {a.partitions}" + (" --sampling-cost" if a.sampling_cost else ""),
        "```",
        "",
        f"Out of fold over 3 prompt splits of `{a.store}`, for {len(parts)} partitions of its "
        "prompts; every split tested on its own prompts with all their samples. `FRACxK`: the "
        "heads (ELHSR, probe, rank) train on FRAC of the other splits' prompts, K samples of "
        "each. "
        "BoN@16 (gap closed), mean over partitions; per partition in the JSON.",
        "",
        "| training set | prompts per split | samples per split | "
        + " | ".join(SHOWN)
        + " | arith: " + " / ".join(SHOWN) + " |",
        "|---|---|---|" + "---|" * (len(SHOWN) + 1),
    ]  # fmt: skip
    ref = {k: float(np.mean([p[out["settings"][0]]["_ref"][k] for p in parts]))
           for k in ("random", "pass@16")}  # fmt: skip
    for s in out["settings"]:
        rows = [p[s] for p in parts]
        cells = []
        for n in SHOWN:
            m = float(np.mean([r[n]["all"] for r in rows]))
            gap = 100 * gap_closed(m, ref["random"], ref["pass@16"])
            cells.append(f"{m:.3f} ({gap:.0f}%)")
        ar = " / ".join(f"{np.mean([r[n]['arith'] for r in rows]):.3f}" for n in SHOWN)
        L.append(
            f"| {s} | {np.mean([r['train_prompts'] for r in rows]):.0f} | "
            f"{np.mean([r['train_samples'] for r in rows]):.0f} | " + " | ".join(cells)
            + f" | {ar} |"
        )  # fmt: skip
    L += ["", f"Random {ref['random']:.3f}, pass@16 {ref['pass@16']:.3f}."]
    if "sampling_cost" in out:
        L += ["", "Sampling cost, 48 prompts of the demo's task (`hsrm sample`, this machine):", "",
              "| samples per prompt | seconds sampling | per prompt |", "|---|---|---|"]  # fmt: skip
        for n, c in out["sampling_cost"].items():
            L.append(f"| {n} | {c['sampling_s']:.1f} | {c['s_per_prompt']:.2f} |")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
