"""Sampling throughput, capture overhead, store size per answer, and head training time.

    .venv/bin/python benchmarks/bench_bon.py [--prompts 24] [--n 16] [--repeats 3]

Capture overhead: the same prompts and seed sampled with and without capture, alternating the order
over repeats, so that drift in machine load hits both arms alike. Writes
benchmarks/results/bon_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hsrm.capture import SampleConfig, parse_layers, sample_prompt
from hsrm.heads import make_head
from hsrm.models import load_model
from hsrm.store import Store, StoreWriter
from hsrm.tasks import get_task

RESULTS = Path(__file__).parent / "results"


def _hf_generate_rate(lm, prompts, n, max_new):
    """Plain batched `generate` (prompt repeated N times, no shared prefill), for comparison."""
    from hsrm.capture import prompt_text

    tok = lm.tokenizer
    t0 = time.perf_counter()
    for p in prompts:
        ids = tok([prompt_text(tok, p)] * n, return_tensors="pt", add_special_tokens=False)
        lm.model.generate(
            **ids,
            do_sample=True,
            temperature=0.8,
            max_new_tokens=max_new,
            pad_token_id=tok.pad_token_id,
        )
    return len(prompts) * n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model()
    task = get_task("synthetic", n=args.prompts, families="arith,compare")
    prompts = task.prompts()
    layers = parse_layers("all", lm.fingerprint.n_layers)
    cfg = SampleConfig(n=args.n, max_new_tokens=6, seed=0)
    for p in prompts[:2]:  # warm-up
        sample_prompt(lm, p, cfg, layers)
    times = {"capture": [], "no_capture": []}
    results = None
    for r in range(args.repeats):
        order = ["capture", "no_capture"] if r % 2 == 0 else ["no_capture", "capture"]
        for arm in order:
            t0 = time.perf_counter()
            res = [sample_prompt(lm, p, cfg, layers, capture=arm == "capture") for p in prompts]
            times[arm].append(time.perf_counter() - t0)
            if arm == "capture":
                results = res
    n_samples = len(prompts) * args.n
    ratio = float(np.median(np.array(times["capture"]) / np.array(times["no_capture"])))
    hf_rate = _hf_generate_rate(lm, prompts[:8], args.n, 6)

    # store sizes per answer for each storage option
    sizes = {}
    n_tokens = sum(len(a.token_ids) for r in results for a in r.answers)
    with tempfile.TemporaryDirectory() as tmp:
        for dtype, pool in [
            ("float16", "none"),
            ("int8", "none"),
            ("fp8", "none"),
            ("float16", "mean"),
        ]:
            d = Path(tmp) / f"{dtype}-{pool}"
            w = StoreWriter(
                d,
                {
                    "fingerprint": lm.fingerprint.to_dict(),
                    "layers": list(layers),
                    "task": {},
                    "sampling": {},
                    "dtype": dtype,
                    "pool": pool,
                    "shard_prompts": len(prompts),
                },
            )
            w.write_shard(0, results, task.grade(results))
            b = Store(d).bytes_on_disk()
            sizes[f"{dtype}/{pool}"] = {
                "bytes_per_answer": b / n_samples,
                "bytes_per_token": b / n_tokens,
            }
        st = Store(Path(tmp) / "float16-none")
        y = st.labels
        if len(np.unique(y)) == 2:
            t0 = time.perf_counter()
            head = make_head("elhsr", layers=list(parse_layers("every:4", 30))).fit(
                st.features(), y, st.prompt_ids
            )
            train_s = time.perf_counter() - t0
            n_params = head.n_parameters()
        else:
            train_s, n_params = float("nan"), 0

    # what an 8B model (32 layers + embeddings, d=4096) would need for 48k answers x 500 tokens
    d8, L8, ans, toks = 4096, 33, 48_000, 500
    projections = {
        "all 33 layers, fp16, per token": ans * toks * L8 * d8 * 2,
        "every 4th layer (9), int8, per token": ans * toks * 9 * (d8 + 2),
        "1 layer, int8, per token": ans * toks * 1 * (d8 + 2),
        "all 33 layers, fp16, mean-pooled per answer": ans * L8 * d8 * 2,
        "all 33 layers, int8, mean + last token per answer": ans * 2 * L8 * (d8 + 2),
    }
    out = {
        "machine": {
            "cpu_threads": args.threads,
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "model": lm.fingerprint.to_dict(),
        "prompts": len(prompts),
        "n": args.n,
        "layers_captured": len(layers),
        "answer_tokens": n_tokens,
        "seconds": times,
        "samples_per_s_capture": n_samples / float(np.median(times["capture"])),
        "samples_per_s_no_capture": n_samples / float(np.median(times["no_capture"])),
        "samples_per_s_hf_generate": hf_rate,
        "capture_overhead_ratio": ratio,
        "store": sizes,
        "elhsr_train_seconds": train_s,
        "elhsr_parameters": n_params,
        "elhsr_train_samples": n_samples,
        "projection_8b_48k_answers_500_tokens_GB": {k: v / 1e9 for k, v in projections.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bon_speed.json").write_text(json.dumps(out, indent=2))
    md = [
        "| measure | value |",
        "|---|---|",
        f"| samples/s, sampling with capture (shared prefill) | {out['samples_per_s_capture']:.1f} |",
        f"| samples/s, same loop without capture | {out['samples_per_s_no_capture']:.1f} |",
        f"| samples/s, plain batched `generate` | {hf_rate:.1f} |",
        f"| capture overhead (median ratio of {args.repeats} alternating repeats) | {ratio:.3f}x |",
    ]
    for k, v in sizes.items():
        md.append(
            f"| store {k}: bytes per answer / per token ({len(layers)} layers, d={lm.fingerprint.hidden_size}) | {v['bytes_per_answer']:.0f} / {v['bytes_per_token']:.0f} |"
        )
    md.append(
        f"| ELHSR training (every 4th layer, {n_samples} samples, {n_params} params) | {train_s:.1f} s |"
    )
    for k, v in out["projection_8b_48k_answers_500_tokens_GB"].items():
        md.append(f"| 8B model, 48k answers x 500 tokens, {k} | {v:,.0f} GB |")
    (RESULTS / "bon_speed.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
