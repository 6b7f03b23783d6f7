"""float32 vs bfloat16 sampling of the demo's task on this CPU (embedded model, real `hsrm sample`).

The demo samples in bfloat16 where the CPU computes it natively (``hsrm.placement.cpu_bf16_native``:
x86 ``avx512_bf16`` or AMX-BF16) and in float32 elsewhere. This measures what that buys and what
it costs: samples/s of full stores (every hidden state captured, the background writer on, as
``hsrm demo`` runs them) at the demo's two shapes, 16 samples a prompt (8 prompts a batch, the
tested store) and 4 (32 a batch, the training-only store), and each dtype's accuracy on the same
prompts. Each (dtype, shape) store is sampled ``--repeats`` times in alternation with the other
dtype, so a machine shared with other jobs slows both alike; the model is loaded once per dtype,
outside the timings.

    PYTHONPATH=src python benchmarks/bench_cpu_dtype.py

Writes benchmarks/results/cpu_dtype.json and .md.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hsrm.engines import sample
from hsrm.io import atomic_write_json, atomic_write_text
from hsrm.models import load_model
from hsrm.placement import cpu_bf16_native
from hsrm.sampling import SampleRunConfig

RESULTS = Path(__file__).parent / "results"
DTYPES = ("float32", "bfloat16")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=64, help="prompts per store")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--tag", default="cpu_dtype")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # (name, samples per prompt, prompts a batch): the demo's tested and training-only stores
    shapes = [("n16", 16, 8), ("n4", 4, 32)]
    lms = {dt: load_model(dtype=dt, device="cpu") for dt in DTYPES}
    runs: dict[str, dict[str, list[float]]] = {}
    acc: dict[str, dict[str, float]] = {}
    scratch = Path(tempfile.mkdtemp(prefix="hsrm_cpu_dtype_"))
    try:
        for rep in range(args.repeats):
            for name, n, bp in shapes:
                for dt in DTYPES if rep % 2 == 0 else DTYPES[::-1]:
                    out = scratch / f"{dt}_{name}_{rep}"
                    cfg = SampleRunConfig(
                        out=str(out),
                        n_prompts=args.prompts,
                        n=n,
                        fewshot="per_prompt",
                        layers="all",
                        dtype=dt,
                        device="cpu",
                        batch_prompts=bp,
                    )
                    t = time.perf_counter()
                    store = sample(cfg, lm=lms[dt], progress=False)
                    secs = time.perf_counter() - t
                    runs.setdefault(name, {}).setdefault(dt, []).append(len(store) / secs)
                    acc.setdefault(name, {})[dt] = float(store.labels.mean())
                    shutil.rmtree(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    res = {
        "cpu": _cpu_name(),
        "cpu_bf16_native": cpu_bf16_native(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "prompts": args.prompts,
        "repeats": args.repeats,
        "shapes": {
            name: {
                "n": n,
                "batch_prompts": bp,
                "samples_per_s": {dt: statistics.median(runs[name][dt]) for dt in DTYPES},
                "samples_per_s_runs": runs[name],
                "accuracy": acc[name],
                "speedup": statistics.median(runs[name]["bfloat16"])
                / statistics.median(runs[name]["float32"]),
            }
            for name, n, bp in shapes
        },
    }
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / f"{args.tag}.json", res)
    lines = [
        "# float32 vs bfloat16 sampling on this CPU (embedded model, the demo's task)",
        "",
        f"`PYTHONPATH=src python benchmarks/bench_cpu_dtype.py` on {res['cpu']} "
        f"({res['threads']} threads, torch {res['torch']}; native bf16: "
        f"{'yes' if res['cpu_bf16_native'] else 'no'}). {args.prompts} prompts per store, every "
        f"hidden state captured, median of {args.repeats} alternating runs.",
        "",
        "| store | samples/prompt | prompts/batch | float32 samples/s | bfloat16 samples/s | "
        "speed-up | accuracy float32 | accuracy bfloat16 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in res["shapes"].items():
        sp, a = s["samples_per_s"], s["accuracy"]
        lines.append(
            f"| {name} | {s['n']} | {s['batch_prompts']} | {sp['float32']:.1f} | "
            f"{sp['bfloat16']:.1f} | {s['speedup']:.2f}x | {a['float32']:.3f} | "
            f"{a['bfloat16']:.3f} |"
        )
    lines += [
        "",
        "Accuracy is the share of right answers on the same prompts: the two dtypes draw "
        "different samples (the logits differ in their last bits), so it differs by sampling "
        "noise, not by a loss of the model's skill.",
    ]
    atomic_write_text(RESULTS / f"{args.tag}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
