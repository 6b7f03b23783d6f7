"""What a scorer costs: trainable parameters, FLOPs counted by torch, and wall-clock seconds.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts every matmul,
convolution and attention op torch dispatches (2 FLOPs per multiply-add); element-wise ops
(norms, activations, softmax) are not counted, so numbers are a slight undercount for every scorer
alike. ``Timer`` uses ``time.perf_counter``; time the same work several times and take the median
on a shared machine (``timed``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from hsrm.errors import HsrmError


def count_parameters(module: Any, trainable_only: bool = True) -> int:
    """Parameters of a ``torch.nn.Module`` (only those with ``requires_grad`` by default). A fitted
    head counts the parameters of its network ``net_`` (buffers such as standardisation statistics
    are not parameters); other objects with ``n_parameters()`` (baselines) answer for themselves."""
    if not isinstance(module, torch.nn.Module):
        net = getattr(module, "net_", None)
        if isinstance(net, torch.nn.Module):
            return count_parameters(net, trainable_only)
        if hasattr(module, "n_parameters"):
            return int(module.n_parameters())
    if not isinstance(module, torch.nn.Module):
        raise HsrmError(f"cannot count parameters of {type(module).__name__}")
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only))


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """Run ``fn(*args, **kwargs)`` once under ``FlopCounterMode``: (its result, FLOPs counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        out = fn(*args, **kwargs)
    return out, int(fc.get_total_flops())


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds`` (wall clock) and ``t.cpu_seconds`` (this
    process's CPU time: with one torch thread, the compute spent, whatever else loads the machine)."""

    def __enter__(self) -> Timer:
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        self.seconds = self.cpu_seconds = float("nan")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.cpu_seconds = time.process_time() - self._c0


def timed(
    fn: Callable[..., Any], *args: Any, repeat: int = 1, cpu: bool = False, **kwargs: Any
) -> tuple[Any, float]:
    """(the last result, median seconds over ``repeat`` calls; CPU seconds when ``cpu``)."""
    if repeat < 1:
        raise HsrmError(f"repeat must be >= 1, got {repeat}")
    times, out = [], None
    for _ in range(repeat):
        with Timer() as t:
            out = fn(*args, **kwargs)
        times.append(t.cpu_seconds if cpu else t.seconds)
    return out, float(statistics.median(times))


@dataclass
class CostRow:
    """One scorer's cost, per sample. ``extra_*`` is what best-of-N pays on top of plain sampling
    (capture overhead, a second pass, a reward model's forward); ``bon_ratio`` is
    (sampling + extra) / sampling, in seconds and in FLOPs."""

    scorer: str
    trainable_params: int
    score_seconds: float  # scoring alone (features already there), per sample
    score_flops: float
    extra_seconds: float  # everything best-of-N adds to plain sampling, per sample
    extra_flops: float
    sample_seconds: float  # plain sampling (no capture), per sample
    sample_flops: float
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bon_ratio_seconds(self) -> float:
        return (self.sample_seconds + self.extra_seconds) / self.sample_seconds

    @property
    def bon_ratio_flops(self) -> float:
        return (self.sample_flops + self.extra_flops) / self.sample_flops

    def to_dict(self) -> dict[str, Any]:
        return {
            "scorer": self.scorer,
            "trainable_params": self.trainable_params,
            "score_seconds_per_sample": self.score_seconds,
            "score_flops_per_sample": self.score_flops,
            "extra_seconds_per_sample": self.extra_seconds,
            "extra_flops_per_sample": self.extra_flops,
            "sample_seconds_per_sample": self.sample_seconds,
            "sample_flops_per_sample": self.sample_flops,
            "bon_cost_ratio_seconds": self.bon_ratio_seconds,
            "bon_cost_ratio_flops": self.bon_ratio_flops,
            "notes": self.notes,
            **self.extra,
        }


def cost_markdown(rows: list[CostRow]) -> str:
    """The cost table as Markdown."""
    from hsrm.report.tables import markdown_table

    header = [
        "scorer",
        "trainable params",
        "score s/sample",
        "score FLOPs/sample",
        "BoN cost / sampling (time)",
        "BoN cost / sampling (FLOPs)",
        "notes",
    ]
    cells = [
        [
            r.scorer,
            f"{r.trainable_params:,}",
            f"{r.score_seconds:.2e}",
            f"{r.score_flops:.2e}",
            f"{r.bon_ratio_seconds:.3f}",
            f"{r.bon_ratio_flops:.4f}",
            r.notes,
        ]
        for r in rows
    ]
    return markdown_table(header, cells, align="lrrrrrl") + "\n"
