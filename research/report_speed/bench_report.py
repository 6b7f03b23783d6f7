"""How long a best-of-N report takes at thousands of prompts, and what the vectorised metrics buy.

    PYTHONPATH=src .venv/bin/python research/report_speed/bench_report.py [--prompts 512,4096]

A report (`hsrm.bon.report.bon_report`) computes, for every scorer and family, best-of-k at each k,
within-prompt AUROC, the pooled AUROC and bootstrap CIs. Three of these ran as Python loops over
prompts (or over resamples): `per_prompt_bon`, `within_prompt_auroc_per_group` and the pooled
AUROC's bootstrap CI. They now run over all prompts of one size at once (`hsrm.metrics`, tested
equal to the per-prompt references in tests/test_metrics.py). This times, on random scores shaped
like the demo's (16 samples a prompt, two families, 23 scorers, 200 resamples), the whole report
and each of the three metrics both ways: vectorised, and through the per-prompt reference
functions (`bon_prompt`, `auroc`, `bootstrap_metric_ci`) that the library kept.

Writes research/report_speed/results/report_speed.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hsrm import metrics as M
from hsrm.bon.report import bon_report

RESULTS = Path(__file__).parent / "results"
N, SCORERS, BOOT = 16, 23, 200


def _inputs(P: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    pids = np.repeat([f"p{i:05d}" for i in range(P)], N)
    return {
        "pids": pids,
        "y": (rng.random(P * N) < 0.35).astype(int),
        "ex": [str(v) for v in rng.integers(0, 6, P * N)],
        "fams": np.repeat(np.where(np.arange(P) % 2, "arith", "compare"), N),
        # majority's array is a placeholder: the report counts votes from the answers
        "scores": {f"s{j}": rng.random(P * N) for j in range(SCORERS - 1)}
        | {"majority": np.zeros(P * N)},
        "s": rng.random(P * N),
    }


def _by_group_scan(groups: np.ndarray) -> dict[object, np.ndarray]:
    """The library's former ``by_group``: one scan of every sample per group (quadratic)."""
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    return {u: np.flatnonzero(inv == i) for i, u in enumerate(uniq)}


@contextlib.contextmanager
def per_prompt_metrics() -> Iterator[None]:
    """The report as it was: the three metrics through their per-prompt references, the
    quadratic ``by_group``."""
    saved = {
        k: getattr(M, k)
        for k in (
            "by_group",
            "per_prompt_bon",
            "within_prompt_auroc_per_group",
            "bootstrap_auroc_ci",
        )
    }

    def bon(s: Any, y: Any, g: Any, k: int, protocol: str = "random") -> dict[object, float]:
        s, y = np.asarray(s, float), np.asarray(y, float)
        return {u: M.bon_prompt(s[i], y[i], k) for u, i in M.by_group(g).items()}

    def wauroc(s: Any, y: Any, g: Any) -> dict[object, float]:
        s, y = np.asarray(s, float), np.asarray(y)
        return {u: M.auroc(s[i], y[i]) for u, i in M.by_group(g).items()}

    def boot(s: Any, y: Any, g: Any, n_boot: int = 500, seed: int = 0) -> tuple[float, float]:
        s, y = np.asarray(s, float), np.asarray(y)
        return M.bootstrap_metric_ci(lambda i: M.auroc(s[i], y[i]), g, n_boot=n_boot, seed=seed)

    for name, f in (
        ("by_group", _by_group_scan),
        ("per_prompt_bon", bon),
        ("within_prompt_auroc_per_group", wauroc),
        ("bootstrap_auroc_ci", boot),
    ):
        setattr(M, name, f)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(M, k, v)


def _time(f: Any) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def measure(P: int) -> dict[str, Any]:
    d = _inputs(P)
    s, y, g, scores = d["s"], d["y"], d["pids"], d["scores"]
    by = M.by_group(g)

    def report() -> None:
        bon_report(scores, y, g, extracted=d["ex"], families=d["fams"], n_boot=BOOT, seed=0)

    with per_prompt_metrics():
        before = _time(report)
    row = {
        "prompts": P,
        "samples": P * N,
        "report_s": _time(report),
        "report_per_prompt_s": before,
        "bon16": {
            "vectorised_s": _time(lambda: M.per_prompt_bon(s, y, g, N)),
            "per_prompt_s": _time(lambda: [M.bon_prompt(s[i], y[i], N) for i in by.values()]),
        },
        "within_prompt_auroc": {
            "vectorised_s": _time(lambda: M.within_prompt_auroc_per_group(s, y, g)),
            "per_prompt_s": _time(lambda: [M.auroc(s[i], y[i]) for i in by.values()]),
        },
        "auroc_bootstrap_ci": {
            "vectorised_s": _time(lambda: M.bootstrap_auroc_ci(s, y, g, n_boot=BOOT)),
            "per_prompt_s": _time(
                lambda: M.bootstrap_metric_ci(lambda i: M.auroc(s[i], y[i]), g, n_boot=BOOT)
            ),
        },
    }
    return row


def markdown(rows: list[dict[str, Any]], cmd: str) -> str:
    L = [
        "# Best-of-N report speed (`bench_report.py`)",
        "",
        "```",
        cmd,
        "```",
        "",
        f"Random scores, {N} samples a prompt, two families, {SCORERS} scorers, {BOOT} resamples; "
        f"{platform.processor() or platform.machine()}, one process (the 2-core box, other jobs "
        "running). Seconds, one run each.",
        "",
        "| prompts | whole report: vectorised / per prompt | BoN@16 | within-prompt AUROC | "
        "pooled AUROC's bootstrap CI |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            f"{r[m]['vectorised_s']:.2f} / {r[m]['per_prompt_s']:.2f} "
            f"({r[m]['per_prompt_s'] / max(r[m]['vectorised_s'], 1e-9):.0f}x)"
            for m in ("bon16", "within_prompt_auroc", "auroc_bootstrap_ci")
        ]
        whole = f"{r['report_s']:.1f} / {r['report_per_prompt_s']:.1f}"
        L.append(f"| {r['prompts']} | {whole} | " + " | ".join(cells) + " |")
    L += [
        "",
        "A report calls each metric once per scorer and family (23 x 3 here), best-of-k once per "
        "k as well. *per prompt*: the report with the three metrics through their per-prompt "
        "references and the former `by_group` (a scan of every sample per prompt), as before "
        "this change; the report's own vote counting (majority and weighted votes, Monte Carlo "
        "per prompt) is the same in both.",
    ]
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default="512,4096")
    a = ap.parse_args()
    rows = [measure(int(p)) for p in a.prompts.split(",")]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "report_speed.json").write_text(json.dumps(rows, indent=1))
    cmd = f"PYTHONPATH=src python research/report_speed/bench_report.py --prompts {a.prompts}"
    md = markdown(rows, cmd)
    (RESULTS / "report_speed.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
