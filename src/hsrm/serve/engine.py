"""The micro-batcher: one worker thread owns the model; requests queue up and are sampled together.

Handlers (on the event loop) put jobs in a bounded queue and await a future. The worker takes the
oldest job, waits ``batch_wait`` for company, gathers every queued job with the same sampling
settings (up to ``max_batch`` prompts) and calls ``sample_prompts`` once for all their prompts,
then scores every answer with the head in one call. Scoring jobs (``/v1/score``, ``/get_reward``)
run one at a time on the same thread, since the model is not safe to share between threads.

A job whose client disconnected is dropped before it is sampled, so it stops costing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hsrm.capture import Answer, SampleConfig, sample_prompts
from hsrm.errors import HsrmError
from hsrm.scoring import Scorer
from hsrm.serve.metrics import Metrics
from hsrm.tasks.base import Prompt

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The bounded queue is full; the handler answers 429."""


@dataclass
class Sample:
    """One drawn answer after stop strings: ``answer`` holds the kept tokens and their states."""

    answer: Answer
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    generated_tokens: int  # tokens the model generated for it (EOS and cut tokens included)
    score: float = 0.0


@dataclass
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class SampleJob(_Job):
    prompts: list[Prompt] = field(default_factory=list)
    cfg: SampleConfig = field(default_factory=SampleConfig)

    @property
    def key(self) -> tuple:
        c = self.cfg
        return (c.n, c.temperature, c.top_p, c.max_new_tokens, c.top_logprobs, c.stop)


@dataclass
class CallJob(_Job):
    fn: Callable[[], Any] = lambda: None


def _resolve(fut: asyncio.Future, value: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():  # cancelled by a client that left
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


def as_sample(tok: Any, a: Answer) -> Sample:
    """A drawn answer as the API returns it. Capture made the stop-string cut (``SampleConfig.stop``:
    the text ends before the stop string, the tokens run to the one that completed it); the kept
    tokens here are those whose text ends at or before the cut, so the log-probs spell the text and
    the head scores what ``/v1/score`` would score for it."""
    why = a.extra.get("stop")
    generated = len(a.token_ids) + (1 if why == "eos" else 0)  # EOS and cut tokens included
    if why != "stop":
        return Sample(a, a.text, "stop" if why == "eos" else "length", generated)
    k = len(a.token_ids) - 1  # the stop string is usually one or two tokens: count down
    while k > 0 and len(tok.decode(a.token_ids[:k], skip_special_tokens=True)) > len(a.text):
        k -= 1
    extra = {key: v[:k] if hasattr(v, "shape") else v for key, v in a.extra.items()}
    kept = Answer(
        token_ids=a.token_ids[:k],
        text=a.text,
        hidden=a.hidden[:k] if a.hidden is not None else None,
        logprobs=a.logprobs[:k],
        entropy=a.entropy[:k],
        self_certainty=a.self_certainty[:k] if a.self_certainty is not None else None,
        confidence=a.confidence[:k] if a.confidence is not None else None,
        extra=extra,
    )
    return Sample(kept, a.text, "stop", generated)


class Engine:
    """Owns the model on one worker thread; see the module docstring."""

    def __init__(
        self,
        scorer: Scorer,
        metrics: Metrics,
        max_queue: int = 64,
        max_batch: int = 8,
        batch_wait: float = 0.002,
    ):
        self.scorer, self.metrics = scorer, metrics
        self.max_queue, self.max_batch, self.batch_wait = max_queue, max_batch, batch_wait
        self._q: deque[_Job] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batches = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hsrm-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the queued jobs, then end the worker."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def depth(self) -> int:
        return len(self._q)

    # -- submitting (event loop side) ------------------------------------------------------------
    def _submit(self, job: _Job) -> None:
        with self._cv:
            if self._stopping:
                raise QueueFull("shutting down")
            if len(self._q) >= self.max_queue:
                raise QueueFull(f"{len(self._q)} requests are waiting (max_queue {self.max_queue})")
            self._q.append(job)
            self.metrics.set_queue_depth(len(self._q))
            self._cv.notify_all()

    def submit_sample(self, prompts: list[Prompt], cfg: SampleConfig) -> SampleJob:
        loop = asyncio.get_running_loop()
        job = SampleJob(loop, loop.create_future(), prompts=prompts, cfg=cfg)
        self._submit(job)
        return job

    def submit_call(self, fn: Callable[[], Any]) -> CallJob:
        loop = asyncio.get_running_loop()
        job = CallJob(loop, loop.create_future(), fn=fn)
        self._submit(job)
        return job

    # -- the worker ------------------------------------------------------------------------------
    def _take(self) -> list[_Job] | None:
        with self._cv:
            while not self._q and not self._stopping:
                self._cv.wait()
            if not self._q:
                return None  # stopping and drained
            if self.batch_wait > 0 and isinstance(self._q[0], SampleJob):
                deadline = time.monotonic() + self.batch_wait
                while self._prompts_queued() < self.max_batch and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
            first = self._q.popleft()
            batch = [first]
            if isinstance(first, SampleJob):
                n_prompts = len(first.prompts)
                ids = {p.id for p in first.prompts}
                rest: deque[_Job] = deque()
                for job in self._q:
                    if (
                        isinstance(job, SampleJob)
                        and not job.cancelled.is_set()
                        and job.key == first.key
                        and n_prompts + len(job.prompts) <= self.max_batch
                        # equal prompt ids (a repeated seed) would share one random stream
                        and not ids & {p.id for p in job.prompts}
                    ):
                        batch.append(job)
                        n_prompts += len(job.prompts)
                        ids |= {p.id for p in job.prompts}
                    else:
                        rest.append(job)
                self._q = rest
            self.metrics.set_queue_depth(len(self._q))
            return batch

    def _prompts_queued(self) -> int:
        return sum(len(j.prompts) if isinstance(j, SampleJob) else 1 for j in self._q)

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            live = [j for j in batch if not j.cancelled.is_set()]
            dropped = len(batch) - len(live)
            if dropped:
                self.metrics.add("disconnects", dropped)
            if not live:
                continue
            try:
                if isinstance(live[0], CallJob):
                    res = live[0].fn()
                    live[0].loop.call_soon_threadsafe(_resolve, live[0].future, res)
                else:
                    self._sample([j for j in live if isinstance(j, SampleJob)])
            except BaseException as e:  # noqa: BLE001  (reported to every waiting request)
                if not isinstance(e, HsrmError):
                    log.exception("engine: batch failed")
                for j in live:
                    j.loop.call_soon_threadsafe(_resolve, j.future, None, e)

    def _sample(self, jobs: list[SampleJob]) -> None:
        """One ``sample_prompts`` call for every prompt of ``jobs``, one head call for all answers."""
        prompts = [p for j in jobs for p in j.prompts]
        results = sample_prompts(
            self.scorer.lm, prompts, jobs[0].cfg, layers=self.scorer.layers, capture=True
        )
        self.batches += 1
        tok = self.scorer.lm.tokenizer
        per_job: list[list[list[Sample]]] = []
        flat: list[Sample] = []
        it = iter(results)
        for j in jobs:
            groups = []
            for _ in j.prompts:
                samples = [as_sample(tok, a) for a in next(it).answers]
                groups.append(samples)
                flat.extend(samples)
            per_job.append(groups)
        scores = self.scorer.score_answers([s.answer for s in flat])
        for s, v in zip(flat, scores):
            s.score = float(v)
        self.metrics.batch(len(prompts), len(flat), sum(s.generated_tokens for s in flat))
        for j, groups in zip(jobs, per_job):
            j.loop.call_soon_threadsafe(_resolve, j.future, groups)
