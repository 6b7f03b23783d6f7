"""What the two HiddenStateReward modes cost in a real GRPO run: a separate frozen copy of the model
(``mode="copy"``) vs the LoRA policy itself with its adapters disabled (``mode="adapters_off"``).

    python benchmarks/bench_rl_modes.py            # -> benchmarks/results/rl_modes.{json,md}

One ELHSR head is fit once (examples/grpo_hsrm.py's recipe: 32 synthetic prompts x 4 answers);
then each mode runs examples/grpo_hsrm.py in its own process (so peak RSS is that run's), the same
GRPO settings and seed: LoRA r=8 on q/k/v/o of the top 4 blocks of the embedded
SmolLM2-135M-Instruct, 2 prompts x 4 completions of <= 6 tokens per step, one torch thread. The two
modes run at the same time (two processes), so that both see the same load of a shared machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "grpo_hsrm.py"


def _example():
    spec = importlib.util.spec_from_file_location("grpo_hsrm", EXAMPLE)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_results(runs: list[dict], args: argparse.Namespace) -> None:
    summary = {}
    for mode in ("copy", "adapters_off"):
        cs = [x["cost"] for x in runs if x["cost"]["mode"] == mode]
        if not cs:
            continue
        summary[mode] = {
            k: sorted(c[k] for c in cs)[len(cs) // 2]  # median (upper for even counts)
            for k in (
                "seconds_per_step",
                "reward_seconds_per_step",
                "param_bytes",
                "peak_rss_bytes",
            )
        }
        summary[mode]["runs"] = len(cs)
    steps = runs[0]["cost"]["steps"] if runs else args.steps
    repeats = max((v["runs"] for v in summary.values()), default=0)
    out = {
        "command": "python benchmarks/bench_rl_modes.py "
        + " ".join(f"--{k} {v}" for k, v in (("steps", steps), ("repeats", repeats))),
        "machine": f"{platform.machine()} CPU, {platform.node()}; 1 torch thread each; a shared "
        "2-core box with other jobs running (load average about 20), both modes at once",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "summary": summary,
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    if len(summary) < 2:
        return
    c, a = summary["copy"], summary["adapters_off"]
    mib = 2**20
    md = [
        "# HiddenStateReward: frozen copy vs adapters off (GRPO, LoRA, embedded SmolLM2-135M)",
        "",
        f"`{out['command']}`; {out['machine']}; {out['date']}. Median of {c['runs']} runs per mode,"
        f" {steps} GRPO steps each (2 prompts x 4 completions, <= 6 new tokens).",
        "",
        "| mode | parameters in memory | peak RSS | s / step | of which reward |",
        "|---|---|---|---|---|",
    ]
    for name, s in (("copy (separate frozen model)", c), ("adapters_off (policy, LoRA off)", a)):
        md.append(
            f"| {name} | {s['param_bytes'] / mib:.0f} MiB | {s['peak_rss_bytes'] / mib:.0f} MiB | "
            f"{s['seconds_per_step']:.2f} | {s['reward_seconds_per_step']:.2f} |"
        )
    Path(args.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="runs per mode (alternating)")
    ap.add_argument(
        "--head", default="", help="a saved ELHSR head of the embedded model (default: fit)"
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rl_modes"))
    ap.add_argument(
        "--summarize",
        default="",
        help="only (re)write the results from the per-run JSON files in this folder",
    )
    args = ap.parse_args()
    if args.summarize:
        runs = [json.loads(f.read_text()) for f in sorted(Path(args.summarize).glob("*-*.json"))]
        write_results(runs, args)
        return 0

    import torch

    from hsrm.models import load_model

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_rl_"))
    head = args.head or str(tmp / "head")
    if not args.head:
        _example().fit_head(load_model(device="cpu"), tmp, 1)
    runs = []
    for r in range(args.repeats):
        # both modes at once: on a shared machine they then see the same background load
        procs = {}
        for mode in ("copy", "adapters_off"):
            js = tmp / f"{mode}-{r}.json"
            cmd = [sys.executable, str(EXAMPLE), "--head", head, "--mode", mode]
            cmd += ["--steps", str(args.steps), "--threads", "1", "--json", str(js)]
            procs[mode] = (
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
                js,
            )
        t = time.perf_counter()
        for mode, (p, js) in procs.items():
            _, err = p.communicate()
            if p.returncode:
                raise SystemExit(f"{mode} run failed:\n{err.decode()[-3000:]}")
            res = json.loads(js.read_text())
            res["cost"]["wall_s"] = time.perf_counter() - t
            runs.append(res)
            print(mode, r, json.dumps(res["cost"]), flush=True)
        write_results(runs, args)  # after every repeat: a cut-off run still leaves results
    return 0


if __name__ == "__main__":
    sys.exit(main())
