"""One retry loop for the pipeline's storage calls (image reads, commits of output files).

Pure Python, tested on its own (tests/test_read_policy.py, tests/test_commits.py). Each caller
brings its policy and its classification: reads retry only transient failures and wait with
full jitter (``read_policy``); commits retry every failure with plain doubling (``commits``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """``tries`` attempts in all. Before try n+1 wait ``base_delay * 2**(n-1)``, at most
    ``max_delay``; with ``jitter`` a uniform random time in [0, that] instead ("full jitter":
    clients throttled together do not come back together)."""

    tries: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0
    jitter: bool = False

    def cap(self, failed_tries: int) -> float:
        """The longest wait after ``failed_tries`` failed tries."""
        return min(self.max_delay, self.base_delay * (2 ** max(0, failed_tries - 1)))

    def delay(self, failed_tries: int, rng: random.Random | None = None) -> float:
        cap = self.cap(failed_tries)
        return (rng or random).uniform(0.0, cap) if self.jitter else cap


class GaveUp(Exception):
    """A call that failed for good: its error type, the number of tries and the last exception."""

    def __init__(self, error_type: str, tries: int, cause: BaseException) -> None:
        super().__init__(
            f"{error_type} after {tries} tr{'y' if tries == 1 else 'ies'}: {type(cause).__name__}: {cause}"
        )
        self.error_type = error_type
        self.tries = tries
        self.cause = cause


def every_error_transient(exc: BaseException) -> tuple[str, bool]:
    """The default classification: retry anything, name it by its class."""
    return type(exc).__name__, True


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    classify: Callable[[BaseException], tuple[str, bool]] = every_error_transient,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """``fn()``; failures that ``classify`` calls transient are retried with backoff up to
    ``policy.tries`` tries in all, others fail at once. ``on_retry(failed_tries, exc, delay)`` is
    called before each wait. Raises ``GaveUp`` naming the error type (never swallows it)."""
    tries = 0
    while True:
        tries += 1
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            error_type, transient = classify(exc)
            if not transient or tries >= policy.tries:
                raise GaveUp(error_type, tries, exc) from exc
            delay = policy.delay(tries, rng)
            if on_retry is not None:
                on_retry(tries, exc, delay)
            sleep(delay)
