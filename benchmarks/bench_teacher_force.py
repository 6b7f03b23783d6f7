"""Teacher forcing with the prompt shared by its answers vs one full forward per answer.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_teacher_force.py [--threads 2]
    # -> benchmarks/results/teacher_force.{json,md}

``hsrm.capture.teacher_force`` scores given answers to a prompt (``hsrm score``, the GRPO reward,
``/v1/score``, pair building). It now runs the prompt once per chunk of answers and lets every
answer row read its keys and values, as the sampler shares a prompt's prefill. Before, every row
ran prompt + answer. This script times both on the embedded SmolLM2-135M-Instruct (float32, the
CPU default) over demo-task prompts, with a demo-like case (8 answers of ~3 tokens) and a GRPO-like
case (8 answers of 40 tokens). The old path is rebuilt here as it was, and the two results are
compared state by state. Median of 3 timed runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from hsrm import lm as lmx
from hsrm.capture import parse_layers, teacher_force
from hsrm.models import DEFAULT_MODEL, load_model
from hsrm.tasks import get_task

RESULTS = Path(__file__).parent / "results"


@torch.inference_mode()
def one_forward_per_answer(lm, prompt, answers, layers, batch_size=16):
    """The path teacher_force took before, and SWIFT's second pass takes: each row is prompt +
    answer, right-padded, uncached. Returns per answer ``.hidden`` (T, L, d) and ``.logprobs``
    (T,). ``bench_cost.py`` times SWIFT's pass with it."""
    _, head, softcap = lmx.lm_parts(lm.model)
    ptext = prompt if isinstance(prompt, str) else lmx.prompt_text(lm.tokenizer, prompt)
    p_ids = lmx.encode(lm.tokenizer, ptext)
    P, out_ = len(p_ids), []
    for b0 in range(0, len(answers), batch_size):
        chunk = answers[b0 : b0 + batch_size]
        T = max(len(s) for s in chunk)
        ids, mask, _ = lmx.pad([p_ids + s for s in chunk], lmx.pad_id(lm), "right", lm.device)
        out = lmx.forward(lm, ids, mask, layers=layers)
        logp = torch.log_softmax(lmx.head_logits(head, softcap, out.last[:, P - 1 : P + T - 1]), -1)
        hs = out.stack(layers, slice(P, P + T))
        for i, s in enumerate(chunk):
            lp = logp[i, : len(s)].gather(-1, torch.tensor(s)[:, None]).squeeze(-1)
            out_.append(SimpleNamespace(hidden=hs[i, : len(s)].float(), logprobs=lp.float()))
    return out_


def _time(fn, reps: int = 3) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lm = load_model(DEFAULT_MODEL, dtype="float32", device="cpu")
    layers = parse_layers("all", lm.fingerprint.n_layers)
    prompts = get_task("synthetic", n=a.prompts, fewshot="per_prompt").prompts()
    texts = [lmx.prompt_text(lm.tokenizer, p) for p in prompts]
    g = torch.Generator().manual_seed(0)
    rows = []
    for case, n_ans, length in (("demo-like", 8, 3), ("GRPO-like", 8, 40)):
        answers = [
            [torch.randint(100, 40000, (length,), generator=g).tolist() for _ in range(n_ans)]
            for _ in texts
        ]

        def old(answers=answers):
            return [one_forward_per_answer(lm, t, A, layers) for t, A in zip(texts, answers)]

        def new(answers=answers):
            return [teacher_force(lm, t, A, layers) for t, A in zip(texts, answers)]

        t_old, t_new = _time(old), _time(new)
        worst_h = worst_lp = 0.0
        for o_prompt, n_prompt in zip(old(), new()):
            for o, b in zip(o_prompt, n_prompt):
                worst_h = max(worst_h, float((b.hidden - o.hidden).norm() / o.hidden.norm()))
                worst_lp = max(worst_lp, float((b.logprobs - o.logprobs).abs().max()))
        P = statistics.mean(len(lmx.encode(lm.tokenizer, t)) for t in texts)
        rows.append(
            {
                "case": case,
                "prompts": len(texts),
                "answers_per_prompt": n_ans,
                "answer_tokens": length,
                "mean_prompt_tokens": P,
                "seconds_one_forward_per_answer": t_old,
                "seconds_shared_prompt": t_new,
                "speedup": t_old / t_new,
                "max_rel_diff_hidden": worst_h,
                "max_abs_diff_logprob": worst_lp,
            }
        )
        print(rows[-1], flush=True)
    meta = {
        "command": "PYTHONPATH=src .venv/bin/python benchmarks/bench_teacher_force.py "
        f"--threads {a.threads} --prompts {a.prompts}",
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": a.threads,
        "model": DEFAULT_MODEL,
        "layers_captured": len(layers),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "teacher_force.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    L = [
        "# Teacher forcing: the prompt shared by its answers (`bench_teacher_force.py`)",
        "",
        f"`{meta['command']}` (embedded {DEFAULT_MODEL}, float32, CPU, {a.threads} threads, all "
        f"{len(layers)} hidden states captured; median of 3 runs).",
        "",
        "| case | prompts x answers x answer tokens (mean prompt tokens) | one forward per answer "
        "(before) | prompt shared (now) | speed-up | max rel. diff of states | max diff of "
        "log-probs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        L.append(
            f"| {r['case']} | {r['prompts']} x {r['answers_per_prompt']} x {r['answer_tokens']} "
            f"({r['mean_prompt_tokens']:.0f}) | {r['seconds_one_forward_per_answer']:.2f} s | "
            f"{r['seconds_shared_prompt']:.2f} s | {r['speedup']:.1f}x | "
            f"{r['max_rel_diff_hidden']:.1e} | {r['max_abs_diff_logprob']:.1e} |"
        )
    (RESULTS / "teacher_force.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
