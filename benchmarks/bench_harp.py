"""HARP vs ablations, uncertainty baselines, ELHSR and a text-only control, with the embedded model.

Data (captured once, cached under --work): the synthetic tasks (sampled, checked answers), TruthfulQA
reference answers (teacher-forced, correct vs incorrect) and TruthfulQA answers the model samples
itself (labelled by ROUGE-L, rule in ``hsrm.detect.label_rouge``). Every split is by question;
AUROCs of detecting hallucinations carry 95 % bootstrap CIs over test questions.

    .venv/bin/python benchmarks/bench_harp.py            # capture (cached) + evaluate
    .venv/bin/python benchmarks/bench_harp.py --quick    # a smoke run on a few questions

Writes benchmarks/results/harp.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import torch

from hsrm.baselines.controls import TextOnlyScorer
from hsrm.detect import (
    CaptureConfig,
    auroc_row,
    capture,
    evaluate,
    head_hallucination_scores,
    length_normalised_entropy,
    load_labelled,
    markdown_table,
    perplexity,
    relabel_truthfulqa,
    split_questions,
)
from hsrm.heads import make_head
from hsrm.io import atomic_write_json, atomic_write_text
from hsrm.metrics import auroc
from hsrm.models import load_model
from hsrm.store import Store
from hsrm.subspace import cache_path, resolve_size, unembedding_svd

log = logging.getLogger("bench_harp")
ROOT = Path(__file__).resolve().parents[1]
SIZES = (0.01, 0.02, 0.05, 0.10, 0.25)


def datasets(data: Path, quick: bool) -> dict[str, CaptureConfig]:
    tqa = data / "truthfulqa" / "TruthfulQA.csv"
    q = quick
    return {
        "synthetic": CaptureConfig(
            source="synthetic:arith,compare,count",
            n_prompts=24 if q else 120,
            n=4,
            temperature=0.8,
            max_new_tokens=6,
            shard_prompts=40,
        ),
        "tqa-refs": CaptureConfig(
            source=f"truthfulqa-refs:{tqa}",
            n_prompts=16 if q else 150,
            refs_per_side=2,
            shots=1,
            shard_prompts=50,
        ),
        "tqa-sampled": CaptureConfig(
            source=f"truthfulqa:{tqa}",
            n_prompts=8 if q else 48,
            n=4,
            temperature=0.7,
            max_new_tokens=16,
            shots=1,
            shard_prompts=25,
        ),
    }


def harp(projection: str, size: float, basis_file: str, **kw):
    return partial(make_head, "harp", projection=projection, size=size, basis_file=basis_file, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "harp_bench"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--only", nargs="*", help="capture only these datasets, then stop")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: the machine is shared)"
    )
    ap.add_argument("--n-boot", type=int, default=500)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    t_start = time.time()
    work = Path(args.work) / ("quick" if args.quick else "full")
    cfgs = datasets(Path(args.data), args.quick)

    lm = load_model()
    # The SVD: computed once per model fingerprint, then a cache hit (logged) on every later run.
    hit_before = cache_path(lm.fingerprint).exists()
    t0 = time.time()
    svd = unembedding_svd(lm)
    svd_s = time.time() - t0
    basis_file = str(cache_path(lm.fingerprint))
    d = svd.d

    stores = {}
    for name, cfg in cfgs.items():
        if args.only and name not in args.only:
            continue
        t0 = time.time()
        done = work / name / "meta.json"
        if done.exists() and json.loads(done.read_text()).get("complete"):
            stores[name] = Store(work / name)  # cached capture
        else:
            stores[name] = capture(lm, cfg, work / name)
        log.info("%s: %d answers (%.0f s)", name, len(stores[name]), time.time() - t0)
    if args.only:
        return 0

    # TruthfulQA sampled answers: how many the ROUGE-L rule labels, at the paper's threshold and lower.
    tqa_csv = cfgs["tqa-sampled"].source.split(":", 1)[1]
    label_counts = {}
    relabels = {}
    for thr in (0.7, 0.5, 0.3):
        labs = relabel_truthfulqa(stores["tqa-sampled"], tqa_csv, thr)
        relabels[thr] = labs
        c = Counter(
            "unlabelled" if v is None else ("truthful" if v else "hallucination") for v in labs
        )
        label_counts[str(thr)] = {
            k: c.get(k, 0) for k in ("truthful", "hallucination", "unlabelled")
        }
    log.info("ROUGE-L labels of sampled TruthfulQA answers: %s", label_counts)

    data = {n: load_labelled(stores[n]) for n in ("synthetic", "tqa-refs")}
    # Sampled TruthfulQA: the paper's 0.7 rule, and 0.5 / 0.3 when 0.7 leaves too few of a class.
    for thr in (0.7, 0.5, 0.3):
        labs = relabels[thr]
        n_t = sum(v == 1 for v in labs)
        n_h = sum(v == 0 for v in labs)
        if min(n_t, n_h) >= 5:
            data[f"tqa-sampled@{thr}"] = load_labelled(stores["tqa-sampled"], labels=labs)

    k = resolve_size(0.05, d)
    last = lm.fingerprint.n_layers
    heads = {
        f"HARP (reasoning, k={k})": harp("reasoning", 0.05, basis_file),
        f"ablation: no projection (k={k} raw coords)": harp("none", 0.05, basis_file),
        f"ablation: random basis (k={k})": harp("random", 0.05, basis_file),
        f"ablation: semantic top-{k}": harp("semantic", 0.05, basis_file),
        f"full last hidden state (d={d})": harp("full", 0.05, basis_file),
        "ELHSR (layers 0,10,20,30)": partial(make_head, "elhsr"),
    }
    results: dict = {
        "model": lm.fingerprint.to_dict(),
        "svd": {
            "cache_hit": hit_before,
            "seconds": round(svd_s, 2),
            "path": basis_file,
            "d": d,
            "reasoning_k": k,
        },
        "capture": {n: {k2: v for k2, v in vars(c).items()} for n, c in cfgs.items()},
        "rouge_label_counts": label_counts,
        "tables": {},
        "sweep": {},
        "transfer": [],
        "repeated": {},
        "quick": args.quick,
    }
    splits = {}
    md = [
        "# HARP hallucination detection (SmolLM2-135M-Instruct, CPU)",
        "",
        f"AUROC of detecting wrong answers on held-out questions (70/30 split by question, seed 0), 95% bootstrap CI over test questions ({args.n_boot} resamples). "
        f"Reasoning subspace: the {k} of d={d} right singular vectors of the unembedding with the smallest singular values (5%). Last layer = hidden-state index {last} (after the final norm).",
        "",
        f"SVD cache hit: {hit_before} ({svd_s:.2f} s); ROUGE-L labels of sampled TruthfulQA answers (truthful / hallucination / unlabelled) by threshold: "
        + "; ".join(
            f"{t}: {c['truthful']} / {c['hallucination']} / {c['unlabelled']}"
            for t, c in label_counts.items()
        ),
        "",
    ]
    for name, D in data.items():
        tr, te = split_questions(D.groups, 0.3, seed=0)
        train, test = D.subset(np.flatnonzero(tr)), D.subset(np.flatnonzero(te))
        splits[name] = (train, test)
        if len(np.unique(train.labels)) < 2 or len(np.unique(test.labels)) < 2:
            log.warning("%s: a split holds one class; skipped", name)
            continue
        t0 = time.time()
        rows, _ = evaluate(train, test, heads, n_boot=args.n_boot)
        results["tables"][name] = {
            "rows": rows,
            "n_train": len(train),
            "n_test": len(test),
            "train_hallucination_rate": float(1 - train.labels.mean()),
        }
        md += [
            markdown_table(
                rows,
                f"{name}: train {len(train)} / test {len(test)} answers, test hallucination rate {1 - test.labels.mean():.2f}",
            ),
            "",
        ]
        log.info("%s table done (%.0f s)", name, time.time() - t0)

    # One split is noisy: repeat the key comparison over 5 question splits (and 5 random bases).
    seeds = (0, 1) if args.quick else (0, 1, 2, 3, 4)
    rep = {
        f"HARP (reasoning, k={k})": ("reasoning", 1e-4),
        f"ablation: random basis (k={k})": ("random", 1e-4),
        f"ablation: no projection (k={k} raw coords)": ("none", 1e-4),
        "full last hidden state": ("full", 1e-4),
        "HARP, lr 1e-3 (not the paper's 1e-4)": ("reasoning", 1e-3),
        "random basis, lr 1e-3": ("random", 1e-3),
        "full last hidden state, lr 1e-3": ("full", 1e-3),
    }
    rep_names = [n for n in ("synthetic", "tqa-refs") if n in results["tables"]]
    md += [
        f"**Repeated over {len(seeds)} question splits** (seeds {list(seeds)}; AUROC mean ± sd over splits; "
        "the random basis and raw coordinates are redrawn per split)",
        "",
        "| method | " + " | ".join(rep_names) + " |",
        "|---" * (len(rep_names) + 1) + "|",
    ]
    for name in rep_names:
        D = data[name]
        per: dict[str, list[float]] = {}
        for sd in seeds:
            tr, te = split_questions(D.groups, 0.3, seed=sd)
            train, test = D.subset(np.flatnonzero(tr)), D.subset(np.flatnonzero(te))
            for label, (proj, lr) in rep.items():
                h = harp(proj, 0.05, basis_file, seed=sd, lr=lr)().fit(
                    train.features, train.labels, train.groups
                )
                per.setdefault(label, []).append(auroc(-h.score(test.features), 1 - test.labels))
            per.setdefault("perplexity", []).append(
                auroc(perplexity(test.logprobs), 1 - test.labels)
            )
            per.setdefault("ln-entropy", []).append(
                auroc(length_normalised_entropy(test.entropy), 1 - test.labels)
            )
            ctl = TextOnlyScorer().fit(train.texts, train.labels)
            per.setdefault("text-only (TF-IDF)", []).append(
                auroc(-ctl.score(test.texts), 1 - test.labels)
            )
        results["repeated"][name] = {
            k: {"mean": float(np.mean(v)), "sd": float(np.std(v)), "values": v}
            for k, v in per.items()
        }
    for method in results["repeated"][rep_names[0]] if rep_names else []:
        cells = [results["repeated"][n][method] for n in rep_names]
        md.append(
            f"| {method} | " + " | ".join(f"{c['mean']:.3f} ± {c['sd']:.3f}" for c in cells) + " |"
        )
    md.append("")

    # Subspace-size sweep: reasoning vs random basis at the same size.
    md += [
        "**Subspace-size sweep** (AUROC on test questions; reasoning / random basis of the same size)",
        "",
    ]
    md += [
        "| data | " + " | ".join(f"{s:.0%} (k={resolve_size(s, d)})" for s in SIZES) + " |",
        "|---" * (len(SIZES) + 1) + "|",
    ]
    for name in results["tables"]:
        train, test = splits[name]
        row = []
        for s in SIZES:
            cell = {}
            for proj in ("reasoning", "random"):
                h = harp(proj, s, basis_file)().fit(train.features, train.labels, train.groups)
                cell[proj] = auroc_row(
                    proj,
                    head_hallucination_scores(h, test.features),
                    test.labels,
                    test.groups,
                    args.n_boot,
                )
            results["sweep"].setdefault(name, []).append(
                {"size": s, "k": resolve_size(s, d), **cell}
            )
            row.append(f"{cell['reasoning']['auroc']:.3f} / {cell['random']['auroc']:.3f}")
        md.append(f"| {name} | " + " | ".join(row) + " |")
    md.append("")

    # Cross-data transfer: train on one data set's train questions, test on another's test questions.
    pairs = [("synthetic", "tqa-refs"), ("tqa-refs", "synthetic")]
    pairs += [("synthetic", n) for n in results["tables"] if n.startswith("tqa-sampled")]
    pairs += [(n, "synthetic") for n in results["tables"] if n.startswith("tqa-sampled")]
    md += [
        "**Cross-data transfer** (train on A's train questions, test on B's test questions)",
        "",
        "| train → test | method | AUROC | 95% CI |",
        "|---|---|---|---|",
    ]
    for a, b in pairs:
        if a not in results["tables"] or b not in results["tables"]:
            continue
        train, test = splits[a][0], splits[b][1]
        for label, mk in (
            ("HARP", harp("reasoning", 0.05, basis_file)),
            ("random basis", harp("random", 0.05, basis_file)),
            ("full state", harp("full", 0.05, basis_file)),
        ):
            h = mk().fit(train.features, train.labels, train.groups)
            r = auroc_row(
                label,
                head_hallucination_scores(h, test.features),
                test.labels,
                test.groups,
                args.n_boot,
            )
            results["transfer"].append({"train": a, "test": b, **r})
            md.append(
                f"| {a} → {b} | {label} | {r['auroc']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] |"
            )
    md.append("")
    results["seconds"] = round(time.time() - t_start, 1)
    md.append(
        f"Command: `.venv/bin/python benchmarks/bench_harp.py{' --quick' if args.quick else ''}`; {results['seconds']:.0f} s on a shared 2-core CPU (capture cached under runs/)."
    )
    out = Path(args.out)
    stem = "harp_quick" if args.quick else "harp"
    atomic_write_json(out / f"{stem}.json", results)
    atomic_write_text(out / f"{stem}.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
