"""BBH selection on fresh contexts *and* unseen questions: heads trained in one store, tested in another.

    PYTHONPATH=src .venv/bin/python research/quality/quality_bbh_fresh.py --data ../shared/data \\
        --tasks object_counting,hyperbaton [--threads 2]

Store A is ``quality_bbh.py``'s (``runs/bbh/<task>``: 3-shot, every prompt its own exemplars,
task seed 0). Store B asks the same file with other exemplars (``--task-seed 1``) and another
sampling seed (``runs/bbh_seed1/<task>``). For each of 3 prompt splits, the heads and the controls
(text-only, answer prior) are fitted on A's prompts outside the split and score B's prompts inside
it: every tested answer comes from a context no head saw, to a question no head saw.

Writes research/quality/results/quality_bbh_fresh.json and .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsrm.bon.baselines import baseline_scores
from hsrm.bon.demo import DEMO_ELHSR
from hsrm.bon.outputs import store_report
from hsrm.bon.scorers import add_head_votes
from hsrm.engines import sample
from hsrm.heads import make_head
from hsrm.layer_spec import parse_layers
from hsrm.models import load_model
from hsrm.sampling import SampleRunConfig
from hsrm.splits import prompt_folds

RESULTS = Path(__file__).parent / "results"
SHOW = ("elhsr", "elhsr_vote", "rank", "rank_vote", "mean_logprob", "majority", "deepconf_vote",
        "self_certainty", "answer_prior", "text_only", "random")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--tasks", default="object_counting,hyperbaton")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model()
    out: dict[str, Any] = {"config": vars(args), "tasks": {}}
    lines = [
        "# BBH best-of-16: heads trained on one store, tested on fresh contexts and unseen questions",
        "",
        f"`PYTHONPATH=src python research/quality/quality_bbh_fresh.py --tasks {args.tasks}` "
        "(train: runs/bbh/<task>, task seed 0; test: task seed 1, other exemplars, held-out "
        "prompts of 3 splits; this project's 2-core CPU box).",
        "",
    ]
    for name in args.tasks.split(","):
        path = Path(args.data) / "bbh" / f"{name}.json"
        cfg = dict(task=f"bbh:{path}", n_prompts=250, shots=3, fewshot="per_prompt", n=16,
                   max_new_tokens=8, layers="all", threads=args.threads)  # fmt: skip
        a = sample(SampleRunConfig(out=f"runs/bbh/{name}", **cfg), lm=lm)  # type: ignore[arg-type]
        b = sample(
            SampleRunConfig(out=f"runs/bbh_seed1/{name}", task_seed=1, seed=1, **cfg),  # type: ignore[arg-type]
            lm=lm,
        )
        layers = parse_layers("top:11", a.fingerprint.n_layers)
        specs = {"elhsr": ("elhsr", {"layers": list(layers), **DEMO_ELHSR}), "rank": ("rank", {})}
        fa, fb = prompt_folds(a.prompt_ids, 3, 0), prompt_folds(b.prompt_ids, 3, 0)
        scores: dict[str, np.ndarray] = {}
        for f in range(3):
            tr, te = np.flatnonzero(fa != f), np.flatnonzero(fb == f)
            assert not set(a.prompt_ids[tr]) & set(b.prompt_ids[te])  # unseen questions
            for s, (arch, params) in specs.items():
                head = make_head(arch, **params).fit(a.features(tr), a.labels[tr], a.prompt_ids[tr])
                scores.setdefault(s, np.zeros(len(b)))[te] = head.score(b.features(te))
            for s, v in baseline_scores(b, tr, te, train_store=a).items():
                scores.setdefault(s, np.zeros(len(b)))[te] = v
        scores = add_head_votes(scores, list(specs), b.prompt_ids)
        rep = store_report(b, np.arange(len(b)), scores, args.n_boot)
        out["tasks"][name] = rep
        bon, ci, top = rep["bon"], rep["bon_ci"], rep["pass_at_k"]["16"]
        lines += [f"## {name}: {b.labels.mean():.1%} right, pass@16 {top:.3f}", "",
                  "| selector | BoN@16 | 95% CI | within-prompt AUROC |", "|---|---|---|---|"]  # fmt: skip
        for s in SHOW:
            w = rep["within_prompt_auroc"].get(s, float("nan"))
            lo, hi = ci[s]["16"]
            lines.append(f"| {s} | {bon[s]['16']:.3f} | [{lo:.3f}, {hi:.3f}] | {w:.3f} |")
        lines.append("")
        print("\n".join(lines[-len(SHOW) - 4 :]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality_bbh_fresh.json").write_text(json.dumps(out, indent=1, default=float))
    (RESULTS / "quality_bbh_fresh.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
