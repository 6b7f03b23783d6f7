"""Best-of-N selection on BIG-Bench Hard tasks, asked 3-shot, on the embedded model (issue 12).

    PYTHONPATH=src .venv/bin/python research/quality/quality_bbh.py --data ../shared/data \\
        --tasks object_counting,logical_deduction_three_objects [--threads 2]

Each task file is sampled once into ``--runs/<task>`` (resumable). With ``--fewshot per_prompt``
(the default here) every row is asked, each with its own 3 exemplars drawn from the other rows
(many contexts in one store); 16 answers of at most 8 tokens after the prefill "The answer is ",
all hidden states captured.

Then, as ``hsrm demo`` does in store: ELHSR (the demo's layers and settings), the probe and the
rank head are cross-fitted over 3 prompt splits with every control (text-only, answer prior) and
training-free selector (mean log-prob, self-certainty, DeepConf, majority); ``picked`` takes, for
each split, the head or head vote with the best BoN@16 on the other splits. The table gives BoN@16
with 95% bootstrap CIs over prompts and the share of the random-to-pass@16 gap each closes.

Writes research/quality/results/quality_bbh.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsrm.bon.demo import (
    PICKED,
    cross_fit,
    demo_specs,
    pick_by_family,
    picked_out_of_fold,
)
from hsrm.bon.outputs import store_report
from hsrm.bon.scorers import VOTE_SUFFIX, add_head_votes
from hsrm.engines import sample
from hsrm.layer_spec import parse_layers
from hsrm.models import load_model
from hsrm.sampling import SampleRunConfig
from hsrm.splits import prompt_folds

RESULTS = Path(__file__).parent / "results"
TASKS = ("object_counting", "logical_deduction_three_objects")
#: the columns of the summary table (each also in the full per-task report)
SHOW = (
    PICKED,
    "elhsr",
    "elhsr_vote",
    "rank_vote",
    "mean_logprob",
    "majority",
    "deepconf_vote",
    "self_certainty",
    "answer_prior",
    "text_only",
    "random",
)


def run_task(args: argparse.Namespace, name: str, lm: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    store = sample(
        SampleRunConfig(
            out=str(Path(args.runs) / name),
            task=f"bbh:{Path(args.data) / 'bbh' / f'{name}.json'}",
            n_prompts=args.n_prompts,
            shots=3,
            fewshot=args.fewshot,
            n=args.n,
            max_new_tokens=args.max_new_tokens,
            layers="all",
            threads=args.threads,
        ),
        lm=lm,
    )
    t_sample = time.perf_counter() - t0
    layers = parse_layers("top:11", store.fingerprint.n_layers)
    specs = demo_specs(layers)
    t0 = time.perf_counter()
    scores, _ = cross_fit(store, args.folds, args.seed, specs)
    y, pids = store.labels, store.prompt_ids
    fams = np.array([r["family"] for r in store.records])
    ex = [r["extracted"] for r in store.records]
    fold = prompt_folds(pids, args.folds, args.seed)
    scores = add_head_votes(scores, list(specs), pids)
    cands = [*specs, *(h + VOTE_SUFFIX for h in specs)]
    scores[PICKED], picks = picked_out_of_fold(scores, y, pids, fams, ex, fold, cands, args.n)
    rep = store_report(
        store, np.arange(len(store)), scores, args.n_boot, args.seed, votes=(PICKED,)
    )
    rep["picks"] = picks
    rep["pick_on_all"] = pick_by_family(scores, y, pids, fams, cands, ex, args.n)
    rep["right"] = float(y.mean())
    rep["prompts"] = int(len(set(pids)))
    rep["seconds"] = {"sampling": t_sample, "fitting": time.perf_counter() - t0}
    return rep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--runs", default="runs/bbh")
    ap.add_argument("--n-prompts", type=int, default=250)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--fewshot", default="per_prompt")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="seed of the prompt splits")
    ap.add_argument("--tag", default="quality_bbh", help="results file name")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model()
    out: dict[str, Any] = {"config": {k: v for k, v in vars(args).items()}, "tasks": {}}
    N = str(args.n)
    lines = [
        "# Best-of-N on BIG-Bench Hard, 3-shot, embedded model (in store, out of fold)",
        "",
        "`PYTHONPATH=src python research/quality/quality_bbh.py --data ../shared/data "
        f"--tasks {args.tasks} --seed {args.seed}` ({args.n} answers a prompt, {args.folds} prompt splits, "
        f"exemplars {args.fewshot}; this project's 2-core CPU box).",
        "",
        f"BoN@{N} [95% CI over prompts]; gap: share of the random-to-pass@{N} gap closed.",
        "",
    ]
    for name in args.tasks.split(","):
        rep = run_task(args, name, lm)
        out["tasks"][name] = rep
        bon, ci = rep["bon"], rep["bon_ci"]
        rnd, top = bon["random"][N], rep["pass_at_k"][N]
        lines += [
            f"## {name}: {rep['prompts']} prompts, {rep['right']:.1%} of answers right, "
            f"pass@{N} {top:.3f}",
            "",
            f"Picks per split: {', '.join(p[name] for p in rep['picks'])}.",
            "",
            "| selector | BoN@16 | 95% CI | gap |",
            "|---|---|---|---|",
        ]
        for s in SHOW:
            if s not in bon:
                continue
            lo, hi = ci[s][N]
            gap = (bon[s][N] - rnd) / (top - rnd) if top > rnd else float("nan")
            lines.append(f"| {s} | {bon[s][N]:.3f} | [{lo:.3f}, {hi:.3f}] | {gap:.0%} |")
        lines.append("")
        print("\n".join(lines[-len(SHOW) - 8 :]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(out, indent=1, default=float))
    (RESULTS / f"{args.tag}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
