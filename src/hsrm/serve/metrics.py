"""Prometheus text-format metrics, kept by hand (a few counters and histograms need no client
library). Thread-safe: the engine thread and the event loop both update them."""

from __future__ import annotations

import threading
from collections import defaultdict

#: Latency buckets (seconds): a tiny model answers in milliseconds, a real one in seconds.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Prompts per sampled batch.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last is +Inf
        self.sum = 0.0
        self.n = 0

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.sum += v
        self.n += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, cum = [], 0
        sep = "," if labels else ""
        for b, c in zip((*self.buckets, float("inf")), self.counts):
            cum += c
            le = "+Inf" if b == float("inf") else repr(float(b))
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {cum}')
        lab = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{lab} {self.sum:.6f}", f"{name}_count{lab} {self.n}"]
        return out


class Metrics:
    """Requests by endpoint and status, latency, queue depth, samples and tokens generated."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, _Histogram] = {}
        self.batch_prompts = _Histogram(BATCH_BUCKETS)
        self.samples = 0
        self.tokens = 0
        self.prompt_tokens = 0
        self.disconnects = 0
        self.in_flight = 0
        self.queue_depth = 0

    def request_started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.in_flight -= 1
            self.requests[(endpoint, status)] += 1
            self.latency.setdefault(endpoint, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, prompts: int, samples: int, tokens: int) -> None:
        with self._lock:
            self.batch_prompts.observe(prompts)
            self.samples += samples
            self.tokens += tokens

    def add(self, name: str, k: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + k)

    def set_queue_depth(self, n: int) -> None:
        with self._lock:
            self.queue_depth = n

    def status_count(self, status: int) -> int:
        with self._lock:
            return sum(v for (_, s), v in self.requests.items() if s == status)

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            L = [
                "# HELP hsrm_requests_total HTTP requests by endpoint and status code.",
                "# TYPE hsrm_requests_total counter",
            ]
            for (ep, st), v in sorted(self.requests.items()):
                L.append(f'hsrm_requests_total{{endpoint="{ep}",status="{st}"}} {v}')
            L += [
                "# HELP hsrm_request_duration_seconds Request latency by endpoint.",
                "# TYPE hsrm_request_duration_seconds histogram",
            ]
            for ep, h in sorted(self.latency.items()):
                L += h.lines("hsrm_request_duration_seconds", f'endpoint="{ep}"')
            gauges = {
                "hsrm_queue_depth": ("Requests waiting for the model.", self.queue_depth),
                "hsrm_requests_in_flight": ("Requests being handled.", self.in_flight),
            }
            counters = {
                "hsrm_samples_generated_total": ("Answers sampled (all best_of).", self.samples),
                "hsrm_tokens_generated_total": ("Tokens generated (all best_of).", self.tokens),
                "hsrm_prompt_tokens_total": (
                    "Prompt tokens of sampled requests.",
                    self.prompt_tokens,
                ),
                "hsrm_client_disconnects_total": (
                    "Requests dropped because the client left.",
                    self.disconnects,
                ),
            }
            for name, (help_, v) in gauges.items():
                L += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {v}"]
            for name, (help_, v) in counters.items():
                L += [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name} {v}"]
            L += [
                "# HELP hsrm_batch_prompts Prompts per sampled micro-batch.",
                "# TYPE hsrm_batch_prompts histogram",
                *self.batch_prompts.lines("hsrm_batch_prompts"),
            ]
            return "\n".join(L) + "\n"
