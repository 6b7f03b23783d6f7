"""``hsrm import`` (one teacher-forced pass over given answers) against ``hsrm sample`` with capture.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_import.py [--threads 1]
    # -> benchmarks/results/import.{json,md}

A user who generates with vLLM, SGLang or an API pays hsrm only the teacher-forced pass that
``hsrm import --model`` runs over the engine's answers (the prompt once, its cache shared by the
answers: ``hsrm.capture.teacher_force``). This script measures that pass against hsrm's own sampler
on the same answers: for each case it samples a store with capture and ``--api-log`` (the engine's
output, here hsrm's), then imports that log with teacher forcing, on the embedded
SmolLM2-135M-Instruct (float32, the CPU default, every hidden state kept). It reports answers/s and
answer tokens/s of

* ``sample``: ``hsrm.sampling.sample`` end to end (decoding with capture, grading, writing);
* ``import``: ``hsrm.importing.import_generations`` end to end (reading and checking the log,
  the teacher-forced pass, grading, writing);
* ``teacher-forced pass``: the pass alone (``forced_answers`` over the parsed log), median of 3
  after one warm-up;

and checks the imported store against the sampled one (same texts and labels; the largest
relative difference of states and of log-probs). A warm-up sample of one prompt runs first; the
sample and import runs are timed once each (a store cannot be sampled twice into one folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hsrm import lm as lmx
from hsrm.capture import parse_layers
from hsrm.engines import sample
from hsrm.importing import ImportConfig, forced_answers, import_generations, read_generations
from hsrm.models import DEFAULT_MODEL, load_model
from hsrm.sampling import SampleRunConfig, make_task

RESULTS = Path(__file__).parent / "results"

# (case, task, prompts, answers per prompt, max new tokens, few-shot draw). "fixed": every prompt
# opens with the same few-shot turns, whose prefill the sampler shares across the prompts of a batch
# (``capture.prefix_groups``) while teacher forcing prefills each prompt whole; "per_prompt": each
# prompt its own exemplars, so neither shares more than the chat template's opening.
CASES = (
    ("demo-like", "synthetic", 16, 8, 6, "fixed"),
    ("demo-like, own few-shot per prompt", "synthetic", 16, 8, 6, "per_prompt"),
    ("longer answers (cot)", "synthetic:cot", 4, 8, 48, "fixed"),
)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def run_case(
    lm, tmp: Path, case: str, task: str, n_prompts: int, n: int, max_new: int, fewshot: str
) -> dict:
    d = tmp / "".join(c if c.isalnum() else "_" for c in case)
    log = d / "log.jsonl"
    scfg = SampleRunConfig(
        out=str(d / "sampled"),
        model=DEFAULT_MODEL,
        task=task,
        n_prompts=n_prompts,
        n=n,
        max_new_tokens=max_new,
        fewshot=fewshot,
        api_log=str(log),
        dtype="float32",
        device="cpu",
    )
    load_sample = os.getloadavg()[0]  # the machine is shared: how busy it was as each run began
    t0 = time.perf_counter()
    sampled = sample(scfg, lm=lm, progress=False)
    t_sample = time.perf_counter() - t0
    icfg = ImportConfig(
        input=str(log),
        out=str(d / "imported"),
        model=DEFAULT_MODEL,
        task=task,
        n_prompts=n_prompts,
        fewshot=fewshot,
        dtype="float32",
        device="cpu",
    )
    load_import = os.getloadavg()[0]
    t0 = time.perf_counter()
    imported = import_generations(icfg, lm=lm, progress=False)
    t_import = time.perf_counter() - t0

    # the teacher-forced pass alone, over the parsed log
    prompts = {p.id: p for p in make_task(scfg).prompts()}
    _, reqs = read_generations(log, prompts=prompts)
    layers = parse_layers("all", lm.fingerprint.n_layers)
    ids = [[c.token_ids or [] for c in r.choices] for r in reqs]

    def tf_pass() -> None:
        for r, row in zip(reqs, ids):
            forced_answers(lm, r.prompt, row, layers, icfg.batch_size)

    tf_pass()  # warm-up
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        tf_pass()
        ts.append(time.perf_counter() - t0)
    t_tf = statistics.median(ts)

    same_text = all(
        a["text"] == b["text"] and a["label"] == b["label"]
        for a, b in zip(sampled.records, imported.records)
    )
    worst_h = worst_lp = 0.0
    for i in range(len(sampled)):
        if sampled.records[i]["n_tokens"]:
            worst_h = max(worst_h, _rel(imported.hidden(i), sampled.hidden(i)))
            worst_lp = max(worst_lp, _rel(imported.logprobs(i), sampled.logprobs(i)))
    answers = len(sampled)
    tokens = int(sum(r["n_tokens"] for r in sampled.records))
    p_tok = [len(lmx.prompt_ids(lm.tokenizer, r.prompt)) for r in reqs if r.prompt is not None]
    return {
        "case": case,
        "task": task,
        "prompts": n_prompts,
        "answers_per_prompt": n,
        "max_new_tokens": max_new,
        "fewshot": fewshot,
        "mean_prompt_tokens": statistics.mean(p_tok),
        "answers": answers,
        "answer_tokens": tokens,
        "seconds_sample": t_sample,
        "seconds_import": t_import,
        "seconds_teacher_forced_pass": t_tf,
        "answers_per_s_sample": answers / t_sample,
        "answers_per_s_import": answers / t_import,
        "answers_per_s_teacher_forced_pass": answers / t_tf,
        "tokens_per_s_sample": tokens / t_sample,
        "tokens_per_s_import": tokens / t_import,
        "tokens_per_s_teacher_forced_pass": tokens / t_tf,
        "import_speedup_vs_sample": t_sample / t_import,
        "same_texts_and_labels": same_text and len(imported) == answers,
        "max_rel_diff_hidden": worst_h,
        "max_rel_diff_logprobs": worst_lp,
        "load_avg_1min_at_sample": load_sample,
        "load_avg_1min_at_import": load_import,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lm = load_model(DEFAULT_MODEL, dtype="float32", device="cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: one prompt sampled and imported (first-call allocations, kernel selection)
        run_case(lm, Path(tmp) / "warm", "warm-up", "synthetic", 1, 2, 4, "fixed")
        for case in CASES:
            rows.append(run_case(lm, Path(tmp), *case))
            print(json.dumps(rows[-1]), flush=True)
    meta = {
        "command": "PYTHONPATH=src .venv/bin/python benchmarks/bench_import.py "
        f"--threads {a.threads}",
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": a.threads,
        "model": DEFAULT_MODEL,
        "dtype": "float32",
        "layers_captured": len(parse_layers("all", lm.fingerprint.n_layers)),
        "cpus": os.cpu_count(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "import.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    L = [
        "# `hsrm import` (teacher-forced pass) vs `hsrm sample` with capture (`bench_import.py`)",
        "",
        f"`{meta['command']}` (embedded {DEFAULT_MODEL}, float32, CPU, {a.threads} thread(s), all "
        f"{meta['layers_captured']} hidden states kept). Each case samples a store with capture "
        "and `--api-log`, then imports that log with `--model` (the same answers). `sample` and "
        "`import` are end to end (reading, grading and writing the store included), timed once; "
        "the teacher-forced pass alone is the median of 3 after a warm-up. The machine "
        f"({meta['cpus']} CPUs) was shared with other jobs: the last column is its 1-minute load "
        "average as the sample / import run began.",
        "",
        "| case | prompts x answers (answer tokens; mean prompt tokens) | sample: answers/s, "
        "tokens/s | import: answers/s, tokens/s | teacher-forced pass: answers/s, tokens/s | "
        "import speed-up | same texts & labels | max rel. diff states / log-probs | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        L.append(
            f"| {r['case']} | {r['prompts']} x {r['answers_per_prompt']} ({r['answer_tokens']}; "
            f"{r['mean_prompt_tokens']:.0f}) | "
            f"{r['answers_per_s_sample']:.1f}, {r['tokens_per_s_sample']:.0f} | "
            f"{r['answers_per_s_import']:.1f}, {r['tokens_per_s_import']:.0f} | "
            f"{r['answers_per_s_teacher_forced_pass']:.1f}, "
            f"{r['tokens_per_s_teacher_forced_pass']:.0f} | "
            f"{r['import_speedup_vs_sample']:.1f}x | {r['same_texts_and_labels']} | "
            f"{r['max_rel_diff_hidden']:.1e} / {r['max_rel_diff_logprobs']:.1e} | "
            f"{r['load_avg_1min_at_sample']:.1f} / {r['load_avg_1min_at_import']:.1f} |"
        )
    (RESULTS / "import.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
