"""A background shard writer: one thread, a bounded queue, so writing overlaps the next sampling.

Why it is safe to kill: each shard is written by ``StoreWriter.write_shard`` (atomic renames, the
shard's JSON last), and shard k always holds the same prompts. A kill -9 at any moment leaves every
shard either complete or absent; queued-but-unwritten shards are simply sampled again on resume.
The queue is bounded so a slow disk throttles sampling instead of filling memory.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any


class BackgroundWriter:
    """Run ``write(*args)`` calls in one background thread, in submission order.

    ``depth`` = how many jobs may wait (0 = write in the caller's thread, synchronously). An
    exception in the writer is raised in the caller at the next ``submit`` or at ``close``.
    ``idle_s``: seconds the caller spent blocked in ``submit`` (queue full) or ``close`` (draining),
    i.e. the time sampling waited for the disk."""

    def __init__(self, write: Callable[..., Any], depth: int = 2):
        self._write = write
        self.depth = depth
        self.idle_s = 0.0
        self.busy_s = 0.0  # seconds the writer spent writing
        self._err: BaseException | None = None
        self._q: queue.Queue[tuple[Any, ...] | None] | None = None
        self._t: threading.Thread | None = None
        if depth > 0:
            self._q = queue.Queue(maxsize=depth)
            self._t = threading.Thread(target=self._run, name="hsrm-shard-writer", daemon=True)
            self._t.start()

    def _run(self) -> None:
        assert self._q is not None
        while True:
            job = self._q.get()
            if job is None:
                return
            if self._err is not None:
                continue  # drain without writing once something failed
            t0 = time.perf_counter()
            try:
                self._write(*job)
            except BaseException as e:  # re-raised in the caller
                self._err = e
            self.busy_s += time.perf_counter() - t0

    def _raise(self) -> None:
        if self._err is not None:
            err, self._err = self._err, None
            raise err

    def submit(self, *args: Any) -> None:
        self._raise()
        if self._q is None:
            t0 = time.perf_counter()
            self._write(*args)
            dt = time.perf_counter() - t0
            self.busy_s += dt
            self.idle_s += dt
            return
        t0 = time.perf_counter()
        self._q.put(args)
        self.idle_s += time.perf_counter() - t0

    def close(self) -> None:
        """Wait for every submitted job; raise the writer's error if one failed."""
        if self._q is not None and self._t is not None:
            t0 = time.perf_counter()
            self._q.put(None)
            self._t.join()
            self.idle_s += time.perf_counter() - t0
            self._q, self._t = None, None
        self._raise()
