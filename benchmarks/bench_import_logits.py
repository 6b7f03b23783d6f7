"""Logits-only heads from an API log against the same kind of head on hidden states.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_import_logits.py [--threads 1]
    # -> benchmarks/results/import_logits.{json,md}

One store sampled by hsrm with ``--api-log`` (top-20 log-probs, what an OpenAI-compatible API
returns) on the embedded SmolLM2-135M-Instruct; the log imported without a model (``hsrm import``:
the logged top-k features only, the closed-API path). The same prompts, answers, labels and
train/test split by prompt id feed ``elhsr`` on hidden states (``every:4``) and
``elhsr_toplogprobs`` on the log; ``hsrm evaluate`` reports BoN@N and AUROC on the held-out
prompts with bootstrap CIs, and the controls (random, majority vote, mean log-prob, DeepConf, the
text-only and answer-prior probes) from the sampled store. Small on purpose (a CPU shared with other
jobs): the CIs say how little a few dozen held-out prompts settle.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from hsrm.bon.evaluate import EvaluateConfig, evaluate
from hsrm.bon.train import TrainConfig, train
from hsrm.engines import sample
from hsrm.importing import ImportConfig, import_generations
from hsrm.models import DEFAULT_MODEL, load_model
from hsrm.sampling import SampleRunConfig

RESULTS = Path(__file__).parent / "results"
CONTROLS = ("random", "majority", "mean_logprob", "deepconf_tail", "text_only", "answer_prior")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--n", type=int, default=16)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lm = load_model(DEFAULT_MODEL, dtype="float32", device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        t0 = time.perf_counter()
        sample(
            SampleRunConfig(
                out=str(t / "sampled"),
                n_prompts=a.prompts,
                n=a.n,
                api_log=str(t / "log.jsonl"),
                dtype="float32",
                device="cpu",
            ),
            lm=lm,
            progress=False,
        )
        t_sample = time.perf_counter() - t0
        import_generations(
            ImportConfig(
                input=str(t / "log.jsonl"),
                out=str(t / "logits"),
                task="synthetic",
                n_prompts=a.prompts,
            ),
            progress=False,
        )
        train(
            TrainConfig(
                run=str(t / "sampled"), out=str(t / "h_hidden"), head_type="elhsr", layers="every:4"
            )
        )
        train(
            TrainConfig(
                run=str(t / "logits"), out=str(t / "h_logits"), head_type="elhsr_toplogprobs"
            )
        )
        hid = evaluate(
            EvaluateConfig(run=str(t / "sampled"), heads=[str(t / "h_hidden")], n_boot=500)
        )
        lgt = evaluate(
            EvaluateConfig(run=str(t / "logits"), heads=[str(t / "h_logits")], n_boot=500)
        )
    N = str(a.n)

    def row(rep: dict, name: str, label: str) -> dict:
        return {
            "method": label,
            f"bon@{N}": rep["bon"][name][N],
            f"bon@{N}_ci": rep["bon_ci"][name][N],
            "auroc": rep["auroc"][name],
            "auroc_ci": rep["auroc_ci"][name],
            "within_prompt_auroc": rep["within_prompt_auroc"].get(name),
        }

    rows = [
        row(hid, "elhsr", "elhsr on hidden states (every:4)"),
        row(lgt, "elhsr_toplogprobs", "elhsr_toplogprobs on the imported API log (top-20)"),
        *(row(hid, c, f"control: {c}") for c in CONTROLS if c in hid["bon"]),
    ]
    meta = {
        "command": "PYTHONPATH=src .venv/bin/python benchmarks/bench_import_logits.py "
        f"--threads {a.threads} --prompts {a.prompts} --n {a.n}",
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "model": DEFAULT_MODEL,
        "test_prompts": hid["n_prompts"],
        "mean_accuracy": hid["mean_accuracy"],
        f"pass@{N}": hid["pass_at_k"][N],
        "seconds_sample": t_sample,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "import_logits.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    L = [
        "# Logits-only head from an imported API log vs hidden states (`bench_import_logits.py`)",
        "",
        f"`{meta['command']}` (embedded {DEFAULT_MODEL}, float32, CPU): one store of "
        f"{a.prompts} synthetic prompts x {a.n} sampled with `--api-log` (top-20 log-probs), the "
        "log imported without a model; both heads trained on the same training prompts (the "
        f"default split) and evaluated on the same {meta['test_prompts']} held-out prompts "
        f"(accuracy {meta['mean_accuracy']:.3f}, pass@{N} {meta[f'pass@{N}']:.3f}); 95% bootstrap "
        "CIs over prompts. Controls from the sampled store. Where the CIs overlap, this run "
        "does not tell the heads apart.",
        "",
        f"| method | BoN@{N} [95% CI] | AUROC [95% CI] | within-prompt AUROC |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r[f"bon@{N}_ci"]
        alo, ahi = r["auroc_ci"]
        w = r["within_prompt_auroc"]
        L.append(
            f"| {r['method']} | {r[f'bon@{N}']:.3f} [{lo:.3f}, {hi:.3f}] | {r['auroc']:.3f} "
            f"[{alo:.3f}, {ahi:.3f}] | {'' if w is None else f'{w:.3f}'} |"
        )
    (RESULTS / "import_logits.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
