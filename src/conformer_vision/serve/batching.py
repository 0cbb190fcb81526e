"""Dynamic batching: images from concurrent requests run through the model together.

The event loop submits jobs (one per image) and awaits their futures; one model thread takes the
first waiting image, keeps collecting until ``max_batch_size`` images are there or no image has
joined for ``max_wait_s``, runs them as one batch and hands each result back to the event loop
(``call_soon_threadsafe``). The window slides because images reach the queue one by one from the
decoding thread: clients that send together arrive a few milliseconds apart, and a fixed window
from the first image would cut their batch in two. Inference therefore never blocks the event loop, and there is one
thread touching the model, as Grad-CAM's hooks require (explain jobs run alone, in arrival order).

A job whose request gave up (timed out) is marked ``abandoned``: it is dropped from the queue and
from a batch still being collected, and skipped if its batch already runs. ``flush()`` (on shutdown) ends the wait for stragglers: what is queued runs at once.
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

import torch

__all__ = ["Batcher", "Job"]

log = logging.getLogger("conformer_vision.serve")


@dataclass(eq=False)
class Job:
    """One image waiting for the model. ``kind`` 'predict' joins batches; 'explain' runs alone."""

    image: torch.Tensor  # (3, H, W)
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    kind: str = "predict"
    abandoned: bool = False  # set from the event loop when the request stops waiting
    queued_at: float = field(default_factory=time.monotonic)


class Batcher:
    """The model thread and its queue.

    Args:
        run_batch: (B, 3, H, W) -> B results, in order.
        run_single: (3, H, W) -> one result (explain jobs).
        max_batch_size: most images per batch.
        max_wait_s: how long a batch waits for the next image to join (sliding).
        on_batch: called after every batch with (batch size, seconds of inference), for metrics.
        warm_up: run once in the model thread before the first job (``ready`` is set after it).
    """

    def __init__(
        self,
        run_batch: Callable[[torch.Tensor], list[Any]],
        run_single: Callable[[torch.Tensor], Any],
        max_batch_size: int,
        max_wait_s: float,
        *,
        on_batch: Callable[[int, float], None] | None = None,
        warm_up: Callable[[], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.run_batch, self.run_single = run_batch, run_single
        self.max_batch_size, self.max_wait_s = max_batch_size, max(0.0, max_wait_s)
        self.on_batch, self._warm_up = on_batch, warm_up
        self.ready = threading.Event()
        self.failed: BaseException | None = None  # the warm-up's error, if it failed
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._flushing = False
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="conformer-model", daemon=True)

    @property
    def depth(self) -> int:
        """Images waiting for the model (not yet in a running batch)."""
        return len(self._queue)

    def start(self) -> None:
        self._thread.start()

    def submit(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` (all at once, in order). Admission control is the caller's."""
        with self._cond:
            self._queue.extend(jobs)
            self._cond.notify()

    def flush(self) -> None:
        """Stop waiting for batches to fill: everything queued runs as soon as the model is free."""
        with self._cond:
            self._flushing = True
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Run what is queued, then end the model thread (waits up to ``timeout`` seconds)."""
        with self._cond:
            self._flushing = self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the model thread ------------------------------------------------------------------

    def _main(self) -> None:
        try:
            if self._warm_up is not None:
                self._warm_up()
        except BaseException as e:  # noqa: BLE001 - reported by /readyz and the log, the thread ends
            log.exception("model warm-up failed")
            self.failed = e
            return
        self.ready.set()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = [job for job in batch if not job.abandoned]
            if not live:
                continue
            if live[0].kind == "explain":
                self._run(live, lambda jobs=live: [self.run_single(jobs[0].image)])
            else:
                self._run(live, lambda jobs=live: self.run_batch(torch.stack([job.image for job in jobs])))

    def _next_batch(self) -> list[Job] | None:
        """Wait for a first job, then collect predict jobs until ``max_batch_size`` are there or none
        has joined for ``max_wait_s`` (so at most ``max_batch_size * max_wait_s`` after the first); an
        explain job runs alone. Jobs abandoned meanwhile are dropped, so a request that timed out frees
        its place. None when stopping with an empty queue."""
        batch: list[Job] = []
        deadline = 0.0
        with self._cond:
            while True:
                batch = [job for job in batch if not job.abandoned]
                while self._queue and len(batch) < self.max_batch_size:
                    job = self._queue[0]
                    if job.abandoned:
                        self._queue.popleft()
                    elif job.kind == "explain":
                        if batch:
                            break  # runs after this batch
                        return [self._queue.popleft()]
                    else:  # every image that joins gives the others max_wait_s more (a sliding window)
                        deadline = time.monotonic() + self.max_wait_s
                        batch.append(self._queue.popleft())
                if not batch:
                    if self._stopping:
                        return None
                    self._cond.wait()
                    continue
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch_size or self._queue or self._flushing or remaining <= 0:
                    return batch  # full, an explain job is next, shutting down, or waited long enough
                self._cond.wait(remaining)

    def _run(self, jobs: list[Job], compute: Callable[[], list[Any]]) -> None:
        start = time.perf_counter()
        try:
            results = compute()
        except Exception as e:  # noqa: BLE001 - the requests get a 500 with the reason; the thread lives on
            log.exception("inference failed on a batch of %d", len(jobs))
            for job in jobs:
                job.loop.call_soon_threadsafe(_set_exception, job.future, e)
            return
        if self.on_batch is not None:
            self.on_batch(len(jobs), time.perf_counter() - start)
        for job, result in zip(jobs, results):
            job.loop.call_soon_threadsafe(_set_result, job.future, result)


def _set_result(future: asyncio.Future, value: Any) -> None:
    if not future.done():  # the request may have timed out meanwhile
        future.set_result(value)


def _set_exception(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
