"""Throughput of the Ray engine against the local one, on the same work, on this machine's CPUs.

Each variant samples the same prompts with capture into a fresh store, end to end (model load,
sampling, writing): the local engine with 1 torch thread, and the Ray engine with 1 and 2 workers
of 1 CPU (1 thread) each, on one local Ray cluster started once (its start-up time is
reported apart: it is paid once per job, or never when joining a running cluster). Variants are
interleaved over the repeats and the fastest run of each is kept (the machine is shared, so the
minimum is the least disturbed). The Ray stores are checked byte-identical to the local one.

    .venv/bin/python benchmarks/bench_scale.py              # ~10 min on a loaded 2-core machine
    .venv/bin/python benchmarks/bench_scale.py --quick      # smoke test
    .venv/bin/python benchmarks/bench_scale.py --fixed-cost # then: the per-job fixed cost

``--fixed-cost`` times a one-sample job per engine (worker start, imports, model load, store set-up:
what a job pays whatever its size) and adds it to the results, with the sampling time left when it
is taken off: the overhead of the Ray path on large jobs, where the fixed cost is paid once.

Writes ``benchmarks/results/scale.json`` and ``scale.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

from hsrm.engines import sample
from hsrm.io import atomic_write_json, atomic_write_text
from hsrm.sampling import SampleRunConfig

RESULTS = Path(__file__).parent / "results"


def _same_shards(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("shard-*"))
    return names == sorted(p.name for p in b.glob("shard-*")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n-prompts", type=int, default=24)
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--shard-prompts", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="tiny run, results not written")
    ap.add_argument("--fixed-cost", action="store_true", help="add the per-job fixed cost")
    args = ap.parse_args(argv)
    if args.fixed_cost:
        return fixed_cost(args)
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.n_prompts, args.n, args.repeats = 8, 2, 1
    torch.set_num_threads(1)
    base = dict(
        model=args.model,
        n_prompts=args.n_prompts,
        n=args.n,
        shard_prompts=args.shard_prompts,
        layers="all",
    )
    variants = {
        "local, 1 thread": dict(engine="local", threads=1),
        "ray, 1 worker": dict(engine="ray", workers=1, threads=1),
        "ray, 2 workers": dict(engine="ray", workers=2, threads=1),
    }
    t0 = time.perf_counter()
    ray.init(
        num_cpus=2, include_dashboard=False, logging_level="ERROR", _node_ip_address="127.0.0.1"
    )
    ray_start = time.perf_counter() - t0
    load_before = os.getloadavg()
    runs: dict[str, list[float]] = {k: [] for k in variants}
    identical: dict[str, bool] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        for r in range(args.repeats):
            for name, over in variants.items():
                out = tmp / f"{name.replace(', ', '_').replace(' ', '')}-{r}"
                cfg = SampleRunConfig(out=str(out), **base, **over)  # type: ignore[arg-type]
                torch.set_num_threads(cfg.threads)
                t = time.perf_counter()
                sample(cfg, progress=False)
                runs[name].append(time.perf_counter() - t)
                print(f"{name}: {runs[name][-1]:.1f} s", flush=True)
                ref = tmp / f"local_1thread-{r}"
                if name.startswith("ray"):
                    identical[name] = identical.get(name, True) and _same_shards(ref, out)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    samples = args.n_prompts * args.n
    best = {k: min(v) for k, v in runs.items()}
    rows = {
        k: {
            "seconds": best[k],
            "all_seconds": runs[k],
            "samples_per_s": samples / best[k],
            "time_vs_local_1_thread": best[k] / best["local, 1 thread"],
        }
        for k in variants
    }
    rep = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        "(shared with other jobs at the time)",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "ray": ray.__version__,
        "torch": torch.__version__,
        "settings": {**base, "repeats": args.repeats, "samples": samples},
        "ray_cluster_start_s": ray_start,
        "variants": rows,
        "ray_stores_identical_to_local": identical,
        "command": "python benchmarks/bench_scale.py " + " ".join(argv or sys.argv[1:]),
    }
    md = [
        "# Ray engine vs local engine (sampling with capture, CPU)",
        "",
        f"{samples} samples ({args.n_prompts} prompts x {args.n}, shards of "
        f"{args.shard_prompts} prompts, all {args.model} layers captured); each time is end to "
        f"end (model load, sampling, writing), the best of {args.repeats}. Machine: "
        f"{rep['machine']}; load average {load_before[0]:.1f} before, "
        f"{rep['load_average_after'][0]:.1f} after. One-off Ray cluster start: {ray_start:.1f} s "
        "(not in the times).",
        "",
        "| engine | seconds | samples/s | time vs local, 1 thread |",
        "|---|---:|---:|---:|",
    ]
    for k, v in rows.items():
        md.append(
            f"| {k} | {v['seconds']:.1f} | {v['samples_per_s']:.1f} | "
            f"{v['time_vs_local_1_thread']:.2f}x |"
        )
    md += [
        "",
        "Ray stores byte-identical to the local store: "
        + ", ".join(f"{k}: {v}" for k, v in identical.items()),
        "",
        f"Command: `{rep['command']}`",
        "",
    ]
    if args.quick:
        print("\n".join(md))
        return 0
    atomic_write_json(RESULTS / "scale.json", rep)
    atomic_write_text(RESULTS / "scale.md", "\n".join(md))
    print("\n".join(md))
    return 0


def fixed_cost(args: argparse.Namespace) -> int:
    """Time a one-sample job per engine; add it, and the times without it, to scale.json/.md."""
    logging.basicConfig(level=logging.WARNING)
    rep = json.loads((RESULTS / "scale.json").read_text())
    base = dict(rep["settings"])
    for k in ("repeats", "samples"):
        base.pop(k)
    one = dict(base, n_prompts=1, n=1, max_new_tokens=1)
    variants = {"local, 1 thread": dict(engine="local"), "ray, 1 worker": dict(engine="ray")}
    torch.set_num_threads(1)
    ray.init(
        num_cpus=2, include_dashboard=False, logging_level="ERROR", _node_ip_address="127.0.0.1"
    )
    runs: dict[str, list[float]] = {k: [] for k in variants}
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_fixed_"))
    try:
        for r in range(args.repeats):
            for name, over in variants.items():
                cfg = SampleRunConfig(
                    out=str(tmp / f"{r}-{over['engine']}"), threads=1, **one, **over
                )  # type: ignore[arg-type]
                t = time.perf_counter()
                sample(cfg, progress=False)
                runs[name].append(time.perf_counter() - t)
                print(f"one-sample job, {name}: {runs[name][-1]:.1f} s", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    fixed = {k: min(v) for k, v in runs.items()}
    net = {k: rep["variants"][k]["seconds"] - fixed[k] for k in variants}
    rep["fixed_cost"] = {
        "one_sample_job_seconds": fixed,
        "all_seconds": runs,
        "load_average": os.getloadavg(),
        "sampling_seconds_without_fixed_cost": net,
        "ray_1_worker_vs_local_without_fixed_cost": net["ray, 1 worker"] / net["local, 1 thread"],
        "command": "python benchmarks/bench_scale.py --fixed-cost",
    }
    atomic_write_json(RESULTS / "scale.json", rep)
    md = (RESULTS / "scale.md").read_text().rstrip("\n").split("\n")
    md += [
        "",
        "Fixed cost per job (a one-sample job, best of "
        f"{args.repeats}; load average {os.getloadavg()[0]:.1f}): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in fixed.items())
        + ". Taken off the times above, the sampling itself took "
        + ", ".join(f"{k} {v:.1f} s" for k, v in net.items())
        + f": Ray 1 worker / local = {rep['fixed_cost']['ray_1_worker_vs_local_without_fixed_cost']:.2f}x.",
        "",
        "Command: `python benchmarks/bench_scale.py --fixed-cost`",
        "",
    ]
    atomic_write_text(RESULTS / "scale.md", "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
