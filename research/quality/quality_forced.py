"""Reference answers as training positives: does a forced right answer per training-only prompt
help the demo's heads?

    PYTHONPATH=src .venv/bin/python research/quality/quality_forced.py runs/demo runs/demo_seed1 \\
        runs/demo_seed2 runs/demo_fp32 runs/demo_fp32_seed1 runs/demo_fp32_seed2

Each argument is an ``hsrm demo`` output folder. Its training-only prompts (``train_samples``)
each get one more sample: the prompt's reference answer, teacher-forced after the prompt in the
sampler's own format (``"<answer>."``; ``hsrm.capture.teacher_force``, in the store's model dtype,
hidden states rounded to the store's float16), labelled right. On arith most training-only
prompts have no right sample, so without it those prompts only show wrong answers. Tested and
fresh prompts never get one. The demo's in-store evaluation (out of fold, the run's own splits and
seed) and its fresh-seed evaluation are then refitted with the forced answers added to every
split's training prompts (heads and controls alike), and set beside the run's own results.json.
Protocol: research/quality/HISTORY.md, thirteenth session. Writes research/quality/results/<tag>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hsrm.bon.demo import (
    PICKED,
    DemoConfig,
    demo_sample_configs,
    demo_specs,
    fresh_scores,
    out_of_fold_scores,
    resolve_demo,
    training_view,
)
from hsrm.bon.outputs import store_report
from hsrm.capture import teacher_force
from hsrm.layer_spec import parse_layers
from hsrm.lm import encode
from hsrm.models import load_model
from hsrm.placement import resolve_device
from hsrm.sampling import sample_inputs
from hsrm.store import RecordsView, Store, StoreUnion

RESULTS = Path(__file__).parent / "results"
SCORERS = ("picked", "elhsr", "elhsr_vote", "rank_vote", "majority", "answer_prior")


class ForcedAnswers(RecordsView):
    """Teacher-forced answers held in memory, read like a store (``StoreUnion`` joins it)."""

    def __init__(self, like: Store, records: list[dict[str, Any]], hidden: list, logprobs: list):
        self.path, self.layers, self.fingerprint = like.path, like.layers, like.fingerprint
        self.records, self._hidden, self._logprobs = records, hidden, logprobs

    def hidden(self, i: int) -> torch.Tensor:
        return self._hidden[i]

    def logprobs(self, i: int) -> torch.Tensor:
        return self._logprobs[i]


def forced_answers(run: Path, cfg: DemoConfig, train: Store) -> ForcedAnswers:
    """One right answer per training-only prompt of ``run``, teacher-forced (see the module)."""
    scfg = demo_sample_configs(cfg)["train_samples"]
    _, _, prompts = sample_inputs(scfg)
    lm = load_model(scfg.model, dtype=cfg.dtype, device=resolve_device(cfg.device))
    first = {}
    for r in train.records:
        first.setdefault(r["prompt_id"], r)
    recs, hid, lps = [], [], []
    for p in tqdm(prompts, desc=f"{run.name}: forcing", unit="prompt"):
        like = first[p.id]
        text = f"{p.answer}."  # what the sampler writes after the prefill "The answer is "
        a = teacher_force(lm, p, [encode(lm.tokenizer, text)], layers=train.layers)[0]
        hid.append(a.hidden.half().float())  # the store keeps float16
        lps.append(a.logprobs)
        recs.append(
            {
                **{k: like[k] for k in ("prompt_id", "family", "qtype", "question", "reference")},
                "sample": -1,
                "text": text,
                "extracted": p.answer,
                "label": True,
                "n_tokens": len(a.token_ids),
                "mean_logprob": float(a.logprobs.mean()),
                "stop": "forced",
            }
        )
    return ForcedAnswers(train, recs, hid, lps)


def summary(rep: dict[str, Any], n: int) -> dict[str, Any]:
    N = str(n)
    fam = {
        f: {
            "picked": r["bon"][PICKED][N],
            "majority": r["bon"]["majority"][N],
            "picked_vs_majority": r["vs_majority"][PICKED],
        }
        for f, r in rep["per_family"].items()
    }
    return {
        "bon16": {s: rep["bon"][s][N] for s in SCORERS if s in rep["bon"]},
        "picked_ci": rep["bon_ci"][PICKED][N],
        "gap_closed_picked": rep["gap_closed"][PICKED][N],
        "per_family": fam,
    }


def refit(run: Path, force: bool = True) -> dict[str, Any]:
    old = json.loads((run / "results.json").read_text())
    cfg = resolve_demo(
        DemoConfig(
            out=str(run),
            seed=old["seed"],
            dtype=old["dtype"],
            folds=old["sizes"]["folds"],
            n=old["N"],
            fresh_prompts=old["fresh"]["n_prompts"],
        )
    )
    store, train = Store(run / "samples"), Store(run / "train_samples")
    fresh = Store(run / "fresh_samples")
    t0 = time.perf_counter()
    forced = forced_answers(run, cfg, train) if force else ForcedAnswers(train, [], [], [])
    t_force = time.perf_counter() - t0
    # read like a store; without forcing, exactly the demo's training set (a check of this path)
    extra = StoreUnion([train, forced]) if force else train  # type: ignore[list-item]
    layers = parse_layers(cfg.head_layers, store.fingerprint.n_layers)
    specs = demo_specs(layers, resolve_device(cfg.device))
    scores, folds, pick_all = out_of_fold_scores(
        store,
        cfg.folds,
        cfg.seed,
        specs,
        cfg.n,
        extra=extra,  # type: ignore[arg-type]
    )
    idx = np.arange(len(store))
    rep = store_report(store, idx, scores, 1000, cfg.seed, votes=(PICKED,))
    fs = fresh_scores(training_view(store, extra), fresh, specs, pick_all)  # type: ignore[arg-type]
    frep = store_report(fresh, np.arange(len(fresh)), fs, 1000, cfg.seed, votes=(PICKED,))
    arith = [r for r in forced.records if r["family"] == "arith"]
    fams, pids = train.column("family"), train.prompt_ids
    no_right = {  # training-only prompts none of whose samples is right, per family
        f: float(np.mean([not train.labels[pids == p].any() for p in set(pids[fams == f])]))
        for f in ("arith", "compare")
    }
    return {
        "run": str(run),
        "seed": cfg.seed,
        "dtype": cfg.dtype,
        "train_only": [len(set(train.prompt_ids)), len(train)],
        "forced": len(forced.records),
        "forced_arith": len(arith),
        "train_prompts_without_a_right_sample": no_right,
        "seconds": {"forcing": t_force, "total": time.perf_counter() - t0},
        "picks_in_store": [f["picked"] for f in folds],
        "picks_fresh": pick_all,
        "forced_in_store": summary(rep, cfg.n),
        "forced_fresh": summary(frep, cfg.n),
        "own_in_store": summary(old, cfg.n),
        "own_fresh": summary(old["fresh"], cfg.n),
    }


def _pm(d: dict[str, Any]) -> str:
    return f"{d['delta']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"


def markdown(rows: list[dict[str, Any]], argv: list[str]) -> str:
    L = [
        "# Reference answers as training positives (`quality_forced.py`)",
        "",
        "```",
        f"PYTHONPATH=src python research/quality/quality_forced.py {' '.join(argv)}",
        "```",
        "",
        "Each run's training-only prompts each get their reference answer, teacher-forced and "
        "labelled right; the demo's evaluations are refitted with them (protocol: "
        "research/quality/HISTORY.md). BoN@16 of `picked` (share of the gap between random and pass@16 it "
        "closes), with the run's own numbers (no forced answers) beside it; arith: `picked` "
        "minus majority, paired over prompts [95% CI].",
        "",
        "| run | evaluation | own: picked (gap) | forced: picked (gap) | own: elhsr_vote | "
        "forced: elhsr_vote | own: arith vs majority | forced: arith vs majority | forced: "
        "answer prior (own) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    means: dict[str, list[float]] = {}
    for r in rows:
        for where in ("in_store", "fresh"):
            o, f = r[f"own_{where}"], r[f"forced_{where}"]
            means.setdefault(f"own_{where}", []).append(o["gap_closed_picked"])
            means.setdefault(f"forced_{where}", []).append(f["gap_closed_picked"])
            L.append(
                f"| {r['run']} ({r['dtype']}, seed {r['seed']}) | {where.replace('_', ' ')} | "
                f"{o['bon16']['picked']:.3f} ({o['gap_closed_picked']:.0%}) | "
                f"{f['bon16']['picked']:.3f} ({f['gap_closed_picked']:.0%}) | "
                f"{o['bon16']['elhsr_vote']:.3f} | {f['bon16']['elhsr_vote']:.3f} | "
                f"{_pm(o['per_family']['arith']['picked_vs_majority'])} | "
                f"{_pm(f['per_family']['arith']['picked_vs_majority'])} | "
                f"{f['bon16']['answer_prior']:.3f} ({o['bon16']['answer_prior']:.3f}) |"
            )
    L += ["", "Mean gap closed by `picked` over the runs:", ""]
    L += ["| evaluation | own | forced |", "|---|---|---|"]
    for where in ("in_store", "fresh"):
        L.append(
            f"| {where.replace('_', ' ')} | {np.mean(means[f'own_{where}']):.1%} | "
            f"{np.mean(means[f'forced_{where}']):.1%} |"
        )
    L += ["", "Runs:", ""]
    for r in rows:
        nr = r["train_prompts_without_a_right_sample"]
        L.append(
            f"- {r['run']}: {r['train_only'][0]} training-only prompts x "
            f"{r['train_only'][1] // r['train_only'][0]}, {r['forced']} forced answers "
            f"({r['forced_arith']} arith); prompts without a right sample: arith "
            f"{nr['arith']:.1%}, compare {nr['compare']:.1%}; picks in store "
            f"{r['picks_in_store']}, fresh {r['picks_fresh']}; forcing "
            f"{r['seconds']['forcing']:.0f} s, total {r['seconds']['total']:.0f} s"
        )
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="hsrm demo output folders")
    ap.add_argument("--tag", default="quality_forced")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument(
        "--no-force", action="store_true", help="refit without forced answers (must match the run)"
    )
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    RESULTS.mkdir(exist_ok=True)
    argv = a.runs + ([] if a.tag == "quality_forced" else ["--tag", a.tag])
    for run in a.runs:
        rows.append(refit(Path(run), force=not a.no_force))
        # written after every run, so a long job's finished runs are kept
        (RESULTS / f"{a.tag}.json").write_text(json.dumps(rows, indent=1))
        (RESULTS / f"{a.tag}.md").write_text(markdown(rows, argv))
    print(markdown(rows, argv))


if __name__ == "__main__":
    main()
