"""One inference worker fed by a bounded queue: the HTTP layer never runs the model on its event loop,
and when the queue is full a request is refused at once (the caller answers 503), never left waiting in
an unbounded backlog."""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future


class QueueFull(Exception):
    """The queue holds ``size`` waiting jobs already; ``retry_after`` is a guess in whole seconds."""

    def __init__(self, size: int, retry_after: int):
        super().__init__(f"the inference queue is full ({size} requests waiting); retry in {retry_after} s")
        self.retry_after = retry_after


class InferenceQueue:
    """Runs ``job()`` callables one at a time on one thread, in the order submitted; at most ``size`` wait."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"the queue size must be at least 1, got {size}")
        self.size = size
        self._jobs: queue.Queue = queue.Queue(maxsize=size)
        self._seconds_per_job = 1.0  # running mean of recent job times, for Retry-After
        self._thread = threading.Thread(target=self._work, name="structcore-inference", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Jobs submitted and not yet started."""
        return self._jobs.qsize()

    def submit(self, job: Callable[[], object]) -> Future:
        """Queue ``job``; its Future gets the result or the exception. Raises QueueFull at once if full."""
        future: Future = Future()
        try:
            self._jobs.put_nowait((job, future))
        except queue.Full:
            raise QueueFull(self.size, self.retry_after()) from None
        return future

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the jobs ahead times the recent time per job (at least 1)."""
        return max(1, math.ceil((self.waiting + 1) * self._seconds_per_job))

    def close(self):
        """Let the queued jobs finish, then stop the worker."""
        self._jobs.put((None, None))
        self._thread.join()

    def _work(self):
        while True:
            job, future = self._jobs.get()
            if job is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            started = time.perf_counter()
            try:
                future.set_result(job())
            except BaseException as e:  # noqa: BLE001 - handed to the waiting request, the worker goes on
                future.set_exception(e)
            self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * (time.perf_counter() - started)
