"""Compact stores: what a seeded per-layer random projection (+ int8) costs in best-of-N quality.

One demo-like store (the embedded SmolLM2-135M-Instruct, synthetic arith+compare, 320 prompts x 16
samples, all 31 hidden states, float16) is sampled once; every compact mode is the same states
passed through the code a compact store uses (``Projection.apply`` and the store's int8 codec), so
all modes see identical answers and labels. ELHSR with the demo settings (``DEMO_ELHSR``, all
layers) is cross-fit by prompt (3 folds) for 3 fold seeds; BoN@16 and within-prompt AUROC are
computed on the out-of-fold scores. Bytes per token are also given for the Llama-3.1-8B shape.

    PYTHONPATH=src python benchmarks/bench_compact.py [--prompts 320] [--threads 1]

Writes benchmarks/results/compact.json and .md.

With ``--no-sample --store S`` an existing float16 all-layer store is used (e.g. the demo's), and
``--test-store F`` adds "trained on S, tested on F" (e.g. the demo's fresh-seed store): the head is
fit on all of S (ELHSR seed = fold seed) and scores F. Each compact mode is computed offline from
the float16 states exactly as ``StoreWriter.write_shard`` does it (``Projection.apply`` in float32,
then the storage codec); the only difference from a store sampled with ``--project`` is that the
projection's input was rounded to float16 first (relative error ~5e-4, below the output's own
float16 rounding).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hsrm.bon.demo import DEMO_ELHSR
from hsrm.bon.report import bon_report
from hsrm.engines import sample
from hsrm.features import TokenFeatures
from hsrm.heads.base import make_head
from hsrm.io import atomic_write_json, atomic_write_text
from hsrm.projection import Projection, bytes_per_token, project_features
from hsrm.sampling import SampleRunConfig
from hsrm.splits import prompt_folds
from hsrm.store import Store, _decode_hidden, _encode_hidden

RESULTS = Path(__file__).parent / "results"
# (name, k or 0 for full, storage dtype)
MODES = [
    ("full float16", 0, "float16"),
    ("proj k=256 int8", 256, "int8"),
    ("proj k=128 float16", 128, "float16"),
    ("proj k=128 int8", 128, "int8"),
    ("proj k=64 float16", 64, "float16"),
]


NOTE = (
    "How: every compact mode is computed offline from the float16 all-layer store, the way "
    "`StoreWriter.write_shard` builds a `--project K` store (`Projection.apply` in float32, then "
    "the storage codec), so all modes see the same answers and labels; the one difference from a "
    "store sampled with `--project` is that the projection's input was rounded to float16 first "
    "(relative error ~5e-4, below the float16 rounding of its output). ELHSR with the demo's "
    "settings on all layers; the full-float16 seed-0 numbers reproduce the demo's own ELHSR row."
)


def codec(X: TokenFeatures, dtype: str) -> TokenFeatures:
    """Features as the store would return them after writing them in ``dtype``."""
    ts = []
    for i in range(len(X)):
        enc = _encode_hidden(X[i], dtype)
        ts.append(_decode_hidden(enc["hidden"], enc.get("hidden_scale")))
    return TokenFeatures.from_tensors(ts, X.layers, X.fingerprint)


def _mean_rows(row: dict, key: str) -> None:
    ps = row[key]
    row[f"{key}_bon_at_n"] = float(np.mean([r["bon"] for r in ps]))
    row[f"{key}_within_auroc"] = float(np.mean([r["within_auroc"] for r in ps]))


def write(args, store, rows, y, pids, t_sample, test=None) -> None:
    """Results so far (written after every mode, so a cut-off run still leaves them)."""
    full = rows[0]
    for r in rows:
        r["bon_delta_vs_full"] = r["bon_at_n"] - full["bon_at_n"]
        if r.get("test_per_seed") and full.get("test_per_seed"):
            r["test_bon_delta_vs_full"] = (
                r["test_per_seed_bon_at_n"] - full["test_per_seed_bon_at_n"]
            )
    out = {
        "machine": "2-core CPU box shared with other jobs",
        "store": {
            "prompts": int(len(set(pids.tolist()))),
            "samples": int(len(y)),
            "layers": len(store.layers),
            "d": store.fingerprint.hidden_size,
            "accuracy": float(y.mean()),
            "sampling_s": t_sample,
        },
        "head": {"elhsr": DEMO_ELHSR, "layers": "all"},
        "test_store": None
        if test is None
        else {
            "path": args.test_store,
            "prompts": int(len(set(test.prompt_ids.tolist()))),
            "samples": len(test),
            "accuracy": float(test.labels.mean()),
        },
        "fold_seeds": args.seeds,
        "N": args.n,
        "rows": rows,
        "command": "PYTHONPATH=src python benchmarks/bench_compact.py "
        + " ".join(__import__("sys").argv[1:]),
    }
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / f"{args.out}.json", out)
    md = [
        f"# Compact stores: ELHSR quality vs storage ({out['store']['prompts']} prompts x {args.n}, "
        f"{out['store']['layers']} layers, d={out['store']['d']}, fold seeds done: "
        f"{[r['seed'] for r in rows[0]['per_seed']]})",
        "",
        f"| mode | BoN@{args.n} | delta vs full | within-prompt AUROC | bytes/token (demo) | "
        "bytes/token (8B, 33 layers) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['mode']} | {r['bon_at_n']:.3f} | {r['bon_delta_vs_full']:+.3f} | "
            f"{r['within_auroc']:.3f} | {r['bytes_per_token_demo']:,} | {r['bytes_per_token_8b']:,} |"
        )
    md += [
        "",
        f"BoN@{args.n} per fold seed (out-of-fold by prompt, 3 folds), with the prompt-bootstrap "
        "95% CI of each seed:",
        "",
    ]
    for r in rows:
        md.append(
            f"- {r['mode']}: "
            + "; ".join(
                f"seed {p['seed']}: {p['bon']:.3f} [{p['bon_ci'][0]:.3f}, {p['bon_ci'][1]:.3f}], "
                f"AUROC {p['within_auroc']:.3f}"
                for p in r["per_seed"]
            )
        )
    if test is not None and rows[0].get("test_per_seed"):
        ti = out["test_store"]
        md += [
            "",
            f"Trained on all of the store, tested on `{args.test_store}` ({ti['prompts']} prompts x "
            f"{args.n}, accuracy {ti['accuracy']:.3f}); ELHSR seed = fold seed:",
            "",
            f"| mode | BoN@{args.n} (mean of seeds) | delta vs full | within-prompt AUROC | "
            "per seed (BoN [95% CI]) |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            if not r.get("test_per_seed"):
                continue
            md.append(
                f"| {r['mode']} | {r['test_per_seed_bon_at_n']:.3f} | "
                f"{r.get('test_bon_delta_vs_full', 0.0):+.3f} | "
                f"{r['test_per_seed_within_auroc']:.3f} | "
                + "; ".join(
                    f"{p['bon']:.3f} [{p['bon_ci'][0]:.3f}, {p['bon_ci'][1]:.3f}]"
                    for p in r["test_per_seed"]
                )
                + " |"
            )
    md += ["", NOTE, "", f"Command: `{out['command']}`; {out['machine']}.", ""]
    atomic_write_text(RESULTS / f"{args.out}.md", "\n".join(md))
    print("\n".join(md))
    print(json.dumps({r["mode"]: round(r["bon_at_n"], 4) for r in rows}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=320)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--store", default="runs/bench_compact/samples")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="compact")
    ap.add_argument("--max-prompts", type=int, default=0, help="only the first P prompts (checks)")
    ap.add_argument("--test-store", default=None, help="also train on --store, test on this one")
    ap.add_argument(
        "--no-sample", action="store_true", help="use the store as it is (e.g. a cut-short run)"
    )
    ap.add_argument(
        "--modes", nargs="+", default=[m[0] for m in MODES], help="subset of the mode names"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if not args.no_sample:
        sample(
            SampleRunConfig(out=args.store, n_prompts=args.prompts, n=args.n, threads=args.threads),
            progress=False,
        )
    t_sample = time.perf_counter() - t0
    store = Store(args.store)
    raw = store.features()  # float16 states as stored, memory-mapped
    y, pids = store.labels, store.prompt_ids
    if args.max_prompts:  # a quick check of the script on a few prompts
        keep = np.flatnonzero(np.isin(pids, list(dict.fromkeys(pids.tolist()))[: args.max_prompts]))
        raw, y, pids = raw.subset(keep), y[keep], pids[keep]
    rows = []
    modes = [m for m in MODES if m[0] in args.modes]
    test = Store(args.test_store) if args.test_store else None
    feats, tfeats = {}, {}
    for name, k, dtype in modes:
        X = raw if not k else project_features(raw, Projection(k, seed=0))
        feats[name] = codec(X, dtype) if (dtype != "float16" or k) else X
        if test is not None:
            Xt = test.features()
            Xt = Xt if not k else project_features(Xt, Projection(k, seed=0))
            tfeats[name] = codec(Xt, dtype) if (dtype != "float16" or k) else Xt
    L, d = len(store.layers), store.fingerprint.hidden_size
    # Seeds outer, modes inner: a run cut short still compares every mode on the seeds it did.
    for seed in args.seeds:
        fold = prompt_folds(pids, 3, seed)
        for name, k, dtype in modes:
            t1 = time.perf_counter()
            X = feats[name]
            s = np.zeros(len(y))
            for f in range(3):
                tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
                head = make_head("elhsr", layers=list(store.layers), **DEMO_ELHSR)
                head.fit(X.subset(tr), y[tr], pids[tr])
                s[te] = head.score(X.subset(te))
            rep = bon_report({"elhsr": s}, y, pids, ks=[args.n], n_boot=200, seed=seed)
            res = {
                "seed": seed,
                "bon": rep["bon"]["elhsr"][str(args.n)],
                "bon_ci": rep["bon_ci"]["elhsr"][str(args.n)],
                "within_auroc": rep["within_prompt_auroc"]["elhsr"],
                "within_auroc_ci": rep["within_prompt_auroc_ci"]["elhsr"],
                "oracle": rep["pass_at_k"][str(args.n)],
                "mean_accuracy": rep["mean_accuracy"],
                "fit_seconds": time.perf_counter() - t1,
            }
            print(name, res, flush=True)
            row = next((r for r in rows if r["mode"] == name), None)
            if row is None:
                row = {
                    "mode": name,
                    "k": k,
                    "store_dtype": dtype,
                    "per_seed": [],
                    "bytes_per_token_demo": bytes_per_token(L, d, dtype, k),
                    "bytes_per_token_8b": bytes_per_token(33, 4096, dtype, k),
                }
                rows.append(row)
            row["per_seed"].append(res)
            row["bon_at_n"] = float(np.mean([r["bon"] for r in row["per_seed"]]))
            row["within_auroc"] = float(np.mean([r["within_auroc"] for r in row["per_seed"]]))
            if test is not None:
                t1 = time.perf_counter()
                head = make_head("elhsr", layers=list(store.layers), seed=seed, **DEMO_ELHSR)
                head.fit(X, y, pids)
                st = head.score(tfeats[name])
                yt, gt = test.labels, test.prompt_ids
                rep = bon_report({"elhsr": st}, yt, gt, ks=[args.n], n_boot=200, seed=seed)
                tres = {
                    "seed": seed,
                    "bon": rep["bon"]["elhsr"][str(args.n)],
                    "bon_ci": rep["bon_ci"]["elhsr"][str(args.n)],
                    "within_auroc": rep["within_prompt_auroc"]["elhsr"],
                    "within_auroc_ci": rep["within_prompt_auroc_ci"]["elhsr"],
                    "oracle": rep["pass_at_k"][str(args.n)],
                    "mean_accuracy": rep["mean_accuracy"],
                    "fit_seconds": time.perf_counter() - t1,
                }
                print(name, "test", tres, flush=True)
                row.setdefault("test_per_seed", []).append(tres)
                _mean_rows(row, "test_per_seed")
            write(args, store, rows, y, pids, t_sample, test)


if __name__ == "__main__":
    main()
