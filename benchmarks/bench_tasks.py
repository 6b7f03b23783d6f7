"""The development tasks (reasoning-gym generators) on the embedded model: which have headroom?

    PYTHONPATH=src .venv/bin/python benchmarks/bench_tasks.py [--tasks lcm,count_bits]
        [--n-prompts 24] [--n 8] [--threads 1] [--resume]

First stage of issue 31: every development generator (``DEV`` below; no other generator is used
here) is sampled with ``hsrm sample``'s own code (``--task rg:NAME``, 3 exemplars drawn per prompt
from the same generator with another seed, the answer turn prefilled "The answer is", temperature
0.8) on ``--n-prompts`` prompts x ``--n`` samples. Each generator runs with its default settings;
``--tasks`` also takes settings, ``'lcm(max_value=20)'``, reported as their own row.

Answer tokens per task: the longest of 64 reference answers (" ANSWER.", tokenised) drawn with
another task seed, + 2, within [4, 48] -- long enough to finish a right answer, short enough that
the 2-core box samples all tasks in about an hour.

Reported per task: mean accuracy (share of samples the generator's verifier scores 1.0), pass@n
(share of prompts with a right sample), headroom (pass@n - mean accuracy), majority@n (the most
common extracted answer is right), and whether the task is *usable*: right 5-60% of the time.
Results are written after every task (``--resume`` skips tasks already measured with the same
settings) to benchmarks/results/tasks_dev.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsrm.metrics import majority_prompt
from hsrm.models import load_model
from hsrm.sampling import SampleRunConfig, sample
from hsrm.store import Store
from hsrm.tasks import get_task

RESULTS = Path(__file__).parent / "results"
#: the development generators of issue 31 (the only ones tests, benchmarks and docs use)
DEV = (
    "lcm count_bits number_sorting word_sorting spell_backward base_conversion power_function "
    "simple_equations decimal_arithmetic fraction_simplification time_intervals "
    "calendar_arithmetic count_primes prime_factorization family_relationships syllogism "
    "propositional_logic number_filtering word_sequence_reversal bitwise_arithmetic coin_flip "
    "dice gsm_symbolic"
).split()
USABLE = (0.05, 0.60)  # mean accuracy range of a task worth a head (issue 31)
CALIBRATION_SEED = 10_000  # references that size the answer budget come from another task seed


def answer_budget(spec: str, tokenizer: Any) -> int:
    refs = [p.answer for p in get_task(f"rg:{spec}", n=64, seed=CALIBRATION_SEED).prompts()]
    longest = max(len(tokenizer(f" {r}.", add_special_tokens=False)["input_ids"]) for r in refs)
    return int(min(48, max(4, longest + 2)))


def measure(store: Store) -> dict[str, Any]:
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for r in store.records:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    rng = np.random.default_rng(0)
    labels = [np.array([r["label"] for r in rs], float) for rs in by_prompt.values()]
    maj = [
        majority_prompt([r["extracted"] for r in rs], y, len(rs), rng)
        for rs, y in zip(by_prompt.values(), labels)
    ]
    acc = float(np.mean(np.concatenate(labels)))
    pass_n = float(np.mean([y.max() for y in labels]))
    extracted = [r["extracted"] is not None for r in store.records]
    return {
        "prompts": len(by_prompt),
        "samples": len(store.records),
        "accuracy": acc,
        "pass_at_n": pass_n,
        "headroom": pass_n - acc,
        "majority": float(np.mean(maj)),
        "answered": float(np.mean(extracted)),
        "answer_tokens": float(np.mean([r["n_tokens"] for r in store.records])),
        "usable": USABLE[0] <= acc <= USABLE[1],
    }


def write(rows: list[dict[str, Any]], cfg: dict[str, Any], note: str, tag: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{tag}.json").write_text(json.dumps({"config": cfg, "rows": rows}, indent=1))
    n = cfg["n"]
    lines = [
        "# Development tasks (reasoning-gym) on the embedded model",
        "",
        f"`PYTHONPATH=src python {shlex.join(['benchmarks/bench_tasks.py', *sys.argv[1:]])}` "
        "(SmolLM2-135M-Instruct, float32 on this project's 2-core CPU box shared with other "
        f"jobs; {cfg['n_prompts']} prompts x {n} samples a task, "
        "3 exemplars drawn per prompt from the same generator with another seed, temperature 0.8, "
        "answer prefilled with 'The answer is'; labels from the generator's own verifier, right "
        "= score 1.0). A row named NAME runs the generator's default settings; a row NAME(k=v,...) "
        "runs easier settings, picked before they were measured for generators whose defaults "
        "leave the 135M model near 0.",
        "",
        f"Usable: mean accuracy in [{USABLE[0]:.2f}, {USABLE[1]:.2f}]. Headroom: pass@{n} - mean "
        f"accuracy. Answered: an answer was extracted. Tokens: the answer budget (max new tokens) "
        "and the mean answer length.",
        "",
        f"| task | mean accuracy | pass@{n} | headroom | majority@{n} | answered | tokens | "
        "usable |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['accuracy']:.3f} | {r['pass_at_n']:.3f} | {r['headroom']:.3f} | "
            f"{r['majority']:.3f} | {r['answered']:.2f} | {r['max_new_tokens']} / "
            f"{r['answer_tokens']:.1f} | {'**yes**' if r['usable'] else 'no'} |"
        )
    usable = [r["task"] for r in rows if r["usable"]]
    lines += ["", f"Usable ({len(usable)} of {len(rows)}): {', '.join(usable) or 'none'}."]
    if note:
        lines += ["", note]
    (RESULTS / f"{tag}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=";".join(DEV), help="generator specs, ';'-separated")
    ap.add_argument("--n-prompts", type=int, default=24)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--task-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true", help="keep rows already in the results")
    ap.add_argument("--note", default="", help="a line for the table (e.g. what was left out)")
    ap.add_argument("--tag", default="tasks_dev", help="results file name")
    ap.add_argument(
        "--table-only", action="store_true", help="write the table of the kept rows, sample none"
    )
    ap.add_argument(
        "--rows-from",
        action="append",
        default=[],
        help="also keep the rows of this results file (a run of other tasks in parallel)",
    )
    args = ap.parse_args()
    if args.table_only and args.resume:  # the table would replace the resumed file's other rows
        ap.error("--table-only writes --tag's file: take its rows with --rows-from, not --resume")
    torch.set_num_threads(args.threads)
    cfg = {
        k: v
        for k, v in vars(args).items()
        if k not in ("tasks", "resume", "note", "tag", "rows_from", "table_only")
    }
    old: dict[str, dict[str, Any]] = {}
    tags = [args.tag] if args.resume else []
    for tag in [*tags, *args.rows_from]:  # rows measured with the same settings are kept
        path = RESULTS / f"{tag}.json"
        prev = json.loads(path.read_text()) if path.exists() else {}
        if prev.get("config") == cfg:
            old.update({r["task"]: r for r in prev["rows"]})
    specs = [s.strip() for s in args.tasks.split(";") if s.strip()]
    if args.table_only:  # the table of what was measured; the rest is named, not sampled
        missing = [s for s in specs if s not in old]
        note = args.note + (f" Not measured: {', '.join(missing)}." if missing else "")
        write([old[s] for s in specs if s in old], cfg, note.strip(), args.tag)
        return
    lm = load_model()  # once: every task samples the same model
    rows = []
    for spec in specs:
        if spec in old:
            rows.append(old[spec])
            continue
        budget = answer_budget(spec, lm.tokenizer)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            store = sample(
                SampleRunConfig(
                    out=f"{tmp}/s",
                    task=f"rg:{spec}",
                    n_prompts=args.n_prompts,
                    n=args.n,
                    shots=3,
                    fewshot="per_prompt",
                    task_seed=args.task_seed,
                    max_new_tokens=budget,
                    layers="last",
                    pool="mean",  # only the labels are read here
                    threads=args.threads,
                ),
                lm=lm,
                progress=False,
            )
            row = {"task": spec, "max_new_tokens": budget, **measure(store)}
            row["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
        write(
            rows, cfg, args.note, args.tag
        )  # after every task: a killed run keeps what it measured


if __name__ == "__main__":
    main()
