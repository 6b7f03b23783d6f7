"""``hsrm serve`` under concurrent load, on loopback only: micro-batching vs one request at a time.

A probe head is trained on a small store of the embedded model's own answers (the demo task);
then, for each arm, ``hsrm serve`` runs as a subprocess on 127.0.0.1 and C concurrent clients
each send one ``/v1/completions`` request (best_of draws, n = 1) with a distinct task prompt.
Arms: ``batched`` (micro-batches of up to ``--max-batch`` prompts), ``single`` (``--max-batch 1``:
one request at a time), and ``overload`` (batched with a queue smaller than the crowd: how many
429s, and that nothing answers 5xx). Reported: requests/s, samples/s, p50/p95/p99 latency of
answered requests, 429s, 5xx, transport errors, the server's RSS before and after, and prompts
per micro-batch (from ``/metrics``). Bounded: one request per client, ``--max-seconds`` per arm.

    .venv/bin/python benchmarks/bench_serve.py                 # 200 clients (a few minutes)
    .venv/bin/python benchmarks/bench_serve.py --clients 16 --quick

Writes ``benchmarks/results/serve.json`` and ``serve.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import torch

from hsrm.bon.train import TrainConfig, train
from hsrm.capture import prompt_text, sample_prompts
from hsrm.engines import sample
from hsrm.io import atomic_write_json, atomic_write_text
from hsrm.models import load_model
from hsrm.sampling import SampleRunConfig, make_task

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def start_server(head: Path, max_batch: int, max_queue: int, args) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [
        sys.executable, "-m", "hsrm", "serve", "--model", MODEL, "--head", str(head),
        "--port", str(port), "--max-batch", str(max_batch), "--max-queue", str(max_queue),
        "--batch-wait-ms", str(args.batch_wait_ms), "--threads", str(args.threads),
        "--log-level", "warning",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start in 120 s")


async def crowd(url: str, prompts: list[str], args) -> list[dict[str, Any]]:
    """One request per client, all started together; a client not started by the deadline skips."""
    deadline = time.perf_counter() + args.max_seconds
    limits = httpx.Limits(max_connections=len(prompts), max_keepalive_connections=len(prompts))
    async with httpx.AsyncClient(base_url=url, timeout=args.max_seconds + 60, limits=limits) as c:

        async def one(p: str) -> dict[str, Any]:
            if time.perf_counter() > deadline:
                return {"status": None, "latency": None}
            t0 = time.perf_counter()
            try:
                r = await c.post(
                    "/v1/completions",
                    json={
                        "model": MODEL,
                        "prompt": p,
                        "n": 1,
                        "best_of": args.best_of,
                        "max_tokens": args.max_tokens,
                        "temperature": 0.8,
                    },
                )
                return {"status": r.status_code, "latency": time.perf_counter() - t0}
            except httpx.HTTPError as e:
                return {"status": -1, "latency": None, "error": type(e).__name__}

        return await asyncio.gather(*[one(p) for p in prompts])


def run_arm(name: str, head: Path, prompts: list[str], max_batch: int, max_queue: int, args):
    proc, url = start_server(head, max_batch, max_queue, args)
    ps = psutil.Process(proc.pid)
    try:
        # warm-up: one request so first-call costs are not in the numbers
        httpx.post(
            f"{url}/v1/completions",
            json={"model": MODEL, "prompt": prompts[0], "best_of": 2, "max_tokens": 2},
            timeout=120,
        )
        rss0 = ps.memory_info().rss
        m0 = httpx.get(f"{url}/metrics").text
        t0 = time.perf_counter()
        res = asyncio.run(crowd(url, prompts, args))
        wall = time.perf_counter() - t0
        rss1 = ps.memory_info().rss
        m1 = httpx.get(f"{url}/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = None
    codes = [r["status"] for r in res]
    ok = [r for r in res if r["status"] == 200]
    lat = np.array([r["latency"] for r in ok]) if ok else np.zeros(0)
    batches = _metric(m1, "hsrm_batch_prompts_count") - _metric(m0, "hsrm_batch_prompts_count")
    bprompts = _metric(m1, "hsrm_batch_prompts_sum") - _metric(m0, "hsrm_batch_prompts_sum")

    def pct(q: float) -> float | None:
        return float(np.percentile(lat, q)) if len(lat) else None

    return {
        "arm": name,
        "max_batch": max_batch,
        "max_queue": max_queue,
        "clients": len(prompts),
        "answered": len(ok),
        "http_429": codes.count(429),
        "http_5xx": sum(1 for c in codes if c is not None and c >= 500),
        "transport_errors": codes.count(-1),
        "not_sent": codes.count(None),
        "wall_s": wall,
        "requests_per_s": len(ok) / wall,
        "samples_per_s": len(ok) * args.best_of / wall,
        "latency_p50_s": pct(50),
        "latency_p95_s": pct(95),
        "latency_p99_s": pct(99),
        "rss_before_mb": rss0 / 2**20,
        "rss_after_mb": rss1 / 2**20,
        "prompts_per_batch": bprompts / batches if batches else None,
        "server_exit_code": rc,
    }


def build_head(tmp: Path, args) -> Path:
    lm = load_model(MODEL)
    run, out = tmp / "store", tmp / "head"
    sample(
        SampleRunConfig(
            out=str(run), n_prompts=args.store_prompts, n=4, layers="mid", threads=args.threads
        ),
        lm=lm,
        progress=False,
    )
    train(TrainConfig(run=str(run), out=str(out), head_type="probe", layers="mid", test_frac=0.0))
    return out


def markdown(rep: dict[str, Any]) -> str:
    a = rep["args"]
    L = [
        "# hsrm serve under load",
        "",
        f"{rep['command']}",
        "",
        f"Machine: {rep['machine']}. Model {MODEL} (CPU, {a['threads']} torch thread(s) in the "
        f"server), probe head on the middle layer; each client sends one /v1/completions request "
        f"with best_of={a['best_of']}, n=1, max_tokens={a['max_tokens']}. Loopback only.",
        "",
        "| arm | max batch | max queue | clients | answered | 429 | 5xx | req/s | samples/s "
        "| p50 s | p95 s | p99 s | prompts/batch | RSS before MB | RSS after MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v: Any, d: int = 2) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    for r in rep["arms"]:
        L.append(
            f"| {r['arm']} | {r['max_batch']} | {r['max_queue']} | {r['clients']} | "
            f"{r['answered']} | {r['http_429']} | {r['http_5xx']} | {f(r['requests_per_s'])} | "
            f"{f(r['samples_per_s'])} | {f(r['latency_p50_s'])} | {f(r['latency_p95_s'])} | "
            f"{f(r['latency_p99_s'])} | {f(r['prompts_per_batch'], 1)} | "
            f"{f(r['rss_before_mb'], 0)} | {f(r['rss_after_mb'], 0)} |"
        )
    if rep.get("speedup") is not None:
        L += ["", f"Micro-batching vs one request at a time: **{rep['speedup']:.2f}x** requests/s."]
    L += ["", rep["note"], ""]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--clients", type=int, default=200, help="concurrent clients (one request each)"
    )
    ap.add_argument("--best-of", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument(
        "--max-batch", type=int, default=16, help="prompts per micro-batch (batched arm)"
    )
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument(
        "--overload-queue", type=int, default=0, help="max queue of the overload arm (0: clients/4)"
    )
    ap.add_argument("--store-prompts", type=int, default=24, help="prompts in the head's store")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="per-arm bound")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke test: 16 clients, 4 tokens")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve"))
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.max_tokens, args.store_prompts = min(args.clients, 16), 4, 12
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        head = build_head(Path(tmp), args)
        lm = load_model(MODEL)
        task = make_task(SampleRunConfig(n_prompts=args.clients, task_seed=1))
        prompts = [prompt_text(lm.tokenizer, p) for p in task.prompts()][: args.clients]
        del lm
        overload_q = args.overload_queue or max(1, args.clients // 4)
        q = args.clients + 8  # the load arms queue everyone: they measure throughput, not refusals
        arms = [
            run_arm("batched", head, prompts, args.max_batch, q, args),
            run_arm("single", head, prompts, 1, q, args),
            run_arm("overload", head, prompts, args.max_batch, overload_q, args),
        ]
    b, s = arms[0]["requests_per_s"], arms[1]["requests_per_s"]
    rep = {
        "command": "`"
        + " ".join(["python", "benchmarks/bench_serve.py", *(argv or sys.argv[1:])])
        + "`",
        "machine": f"{platform.node()}: {os.cpu_count()} CPUs, shared with other jobs at the time "
        f"(load average {os.getloadavg()[0]:.1f} at the end), {platform.processor() or platform.machine()}",
        "args": vars(args),
        "arms": arms,
        "speedup": b / s if s else None,
        "total_s": time.perf_counter() - t_all,
        # which sampler was measured: micro-batching gains only if it decodes prompts together
        "sampler": (sample_prompts.__doc__ or "").strip().splitlines()[0],
        "note": (
            "Micro-batching hands a batch's prompts to `hsrm.capture.sample_prompts` in one call; "
            "it pays as far as that sampler decodes them together (sampler measured: "
            + (sample_prompts.__doc__ or "").strip().splitlines()[0]
            + ")."
        ),
    }
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), rep)
    atomic_write_text(out.with_suffix(".md"), markdown(rep))
    print(markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
