"""A bounded read-ahead: up to K tasks in flight on a thread pool, bounded by bytes too.

Pure Python (concurrent.futures), so it is tested without Beam. ``ReadAndDecode`` submits one
task per image from ``process`` and hands back whatever has finished; ``finish_bundle`` drains
the rest, so nothing crosses a bundle boundary (a retried bundle is redone whole).

Each task's byte cost (the object's size from the listing, or ``--max_image_bytes`` when it is
unknown) is reserved before the task is submitted and released when it finishes, so at most
``max_bytes`` of raw image data are held by reads at once (``InFlightBudget``: an object larger
than the whole budget is still read, but alone), and at most ``max_count`` finished results wait
to be emitted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any


class InFlightBudget:
    """At most ``max_count`` reads and ``max_bytes`` bytes in flight (thread-safe).

    ``acquire(n)`` blocks until both fit; a single read larger than ``max_bytes`` is admitted
    only when nothing else is in flight, so it can never deadlock and the peak is
    max(max_bytes, largest object)."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        if max_count < 1 or max_bytes < 1:
            raise ValueError("the in-flight bounds must be >= 1")
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.count = 0
        self.bytes = 0
        self.peak_bytes = 0
        self.peak_count = 0
        self._cond = threading.Condition()

    def _fits(self, n: int) -> bool:
        if self.count == 0:
            return True
        return self.count < self.max_count and self.bytes + n <= self.max_bytes

    def acquire(self, n: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._fits(n))
            self.count += 1
            self.bytes += n
            self.peak_bytes = max(self.peak_bytes, self.bytes)
            self.peak_count = max(self.peak_count, self.count)

    def release(self, n: int) -> None:
        with self._cond:
            self.count -= 1
            self.bytes -= n
            self._cond.notify_all()


class ReadAhead:
    """Run ``fn()`` tasks concurrently, results in completion order, each paired with its tag."""

    def __init__(self, max_count: int, max_bytes: int, thread_name: str = "image-read") -> None:
        self.budget = InFlightBudget(max_count, max_bytes)
        self.max_count = max_count
        self._pool = ThreadPoolExecutor(max_workers=max_count, thread_name_prefix=thread_name)
        self._pending: set[Future] = set()

    def _run(self, fn: Callable[[], Any], cost: int) -> Any:
        try:
            return fn()
        finally:
            self.budget.release(cost)

    def submit(self, fn: Callable[[], Any], cost: int, tag: Any = None) -> Iterator[tuple[Any, Any]]:
        """Start ``fn`` (waiting first, if K results are pending or the bytes do not fit) and
        yield the (tag, result) pairs that are done by now. ``fn`` must not raise."""
        if len(self._pending) >= self.max_count:
            yield from self._collect(block=True)
        self.budget.acquire(cost)
        future = self._pool.submit(self._run, fn, cost)
        future.tag = tag  # type: ignore[attr-defined]
        self._pending.add(future)
        yield from self._collect(block=False)

    def _collect(self, block: bool) -> Iterator[tuple[Any, Any]]:
        if block and self._pending:
            done, _ = wait(self._pending, return_when=FIRST_COMPLETED)
        else:
            done = {f for f in self._pending if f.done()}
        for future in done:
            self._pending.discard(future)
            yield future.tag, future.result()  # type: ignore[attr-defined]

    def drain(self) -> Iterator[tuple[Any, Any]]:
        """Wait for every pending task; yield its (tag, result) as each finishes."""
        while self._pending:
            yield from self._collect(block=True)

    def discard(self) -> int:
        """Wait for and drop every pending task (left over from a bundle that failed downstream,
        whose elements the runner will process again); returns how many were dropped."""
        dropped = len(self._pending)
        wait(self._pending)
        self._pending.clear()
        return dropped

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
