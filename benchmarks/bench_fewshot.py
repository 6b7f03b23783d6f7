"""Few-shot prompting of file tasks on the embedded model: does the model answer in the expected form?

    PYTHONPATH=src .venv/bin/python benchmarks/bench_fewshot.py --data ../shared/data [--threads 2]

For each BIG-Bench Hard task below, ``hsrm sample`` is run three ways on the same first prompts of
the file: zero-shot (``--shots 0``), 3 exemplars fixed for the file (``--shots 3``, BBH's standard;
those 3 rows are then not asked) and 3 exemplars drawn per prompt (``--fewshot per_prompt``).
Exemplars come from the same file and are never the question itself (``hsrm.tasks.files``).

Reported per task and prompting: the share of answers *in form* (the extracted answer is one of the
file's targets, after normalisation), the share right, majority-vote accuracy and pass@n. A head
trained on zero-shot samples where few answers are in form learns the form, not the truth
(issue 12); this table says which tasks the embedded model can be asked at all.

Writes benchmarks/results/fewshot.json and .md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsrm.engines import sample
from hsrm.io import read_json
from hsrm.models import load_model
from hsrm.sampling import SampleRunConfig
from hsrm.store import Store
from hsrm.tasks.base import normalize_text

RESULTS = Path(__file__).parent / "results"
#: answer types: a count, a two-way choice, a valid/invalid call, and multiple choice (3 and 6 options)
TASKS = (
    "object_counting",
    "hyperbaton",
    "formal_fallacies",
    "logical_deduction_three_objects",
    "date_understanding",
)
PROMPTINGS = {
    "zero-shot": {"shots": 0},
    "3-shot fixed": {"shots": 3, "fewshot": "fixed"},
    "3-shot per prompt": {"shots": 3, "fewshot": "per_prompt"},
}


def measure(store: Store, targets: set[str]) -> dict[str, Any]:
    recs = store.records
    form = [r["extracted"] is not None and normalize_text(r["extracted"]) in targets for r in recs]
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    maj, any_right = [], []
    for rs in by_prompt.values():
        votes = Counter(normalize_text(r["extracted"]) for r in rs if r["extracted"])
        top = votes.most_common(1)[0][0] if votes else None
        maj.append(
            any(r["label"] for r in rs if r["extracted"] and normalize_text(r["extracted"]) == top)
        )
        any_right.append(any(r["label"] for r in rs))
    return {
        "prompts": len(by_prompt),
        "samples": len(recs),
        "in_form": float(np.mean(form)),
        "right": float(np.mean([r["label"] for r in recs])),
        "majority": float(np.mean(maj)),
        "pass_at_n": float(np.mean(any_right)),
        "answer_tokens": float(np.mean([r["n_tokens"] for r in recs])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--n-prompts", type=int, default=48)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="fewshot", help="results file name")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model()  # once: every run below samples the same model
    rows = []
    for name in args.tasks.split(","):
        path = Path(args.data) / "bbh" / f"{name}.json"
        targets = {normalize_text(str(e["target"])) for e in read_json(path, "bbh")["examples"]}
        for how, kw in PROMPTINGS.items():
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                store = sample(
                    SampleRunConfig(
                        out=f"{tmp}/s",
                        task=f"bbh:{path}",
                        n_prompts=args.n_prompts,
                        n=args.n,
                        max_new_tokens=args.max_new_tokens,
                        layers="last",
                        threads=args.threads,
                        **kw,  # type: ignore[arg-type]
                    ),
                    lm=lm,
                    progress=False,
                )
                row = {"task": name, "prompting": how, **measure(store, targets)}
                row["seconds"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(row), flush=True)
            rows.append(row)
    cfg = {k: v for k, v in vars(args).items() if k != "data"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps({"config": cfg, "rows": rows}, indent=1))
    lines = [
        "# Few-shot prompting of BIG-Bench Hard on the embedded model",
        "",
        f"`PYTHONPATH=src python benchmarks/bench_fewshot.py --data ../shared/data "
        f"--tasks {args.tasks} --max-new-tokens {args.max_new_tokens}` "
        f"({args.n_prompts} prompts x {args.n} samples a task and prompting, temperature 0.8, "
        f"at most {args.max_new_tokens} answer tokens after the prefill 'The answer is '; "
        "this project's 2-core CPU box).",
        "",
        "In form: the extracted answer is one of the file's targets. Majority: the most common "
        "answer is right. 3-shot fixed asks 3 fewer rows of the file (its exemplars).",
        "",
        "| task | prompting | in form | right | majority | pass@n |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['prompting']} | {r['in_form']:.3f} | {r['right']:.3f} | "
            f"{r['majority']:.3f} | {r['pass_at_n']:.3f} |"
        )
    (RESULTS / f"{args.tag}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
