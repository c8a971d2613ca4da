"""The read policy and the bounded read-ahead, tested on their own (no Beam, no network):
error classification, retries with backoff, and the count/bytes bound on reads in flight."""

from __future__ import annotations

import errno
import random
import threading
import time

import pytest

from beam_pipeline.read_ahead import InFlightBudget, ReadAhead
from beam_pipeline.read_policy import classify_read_error
from beam_pipeline.retries import GaveUp, RetryPolicy, call_with_retries


class FakeClientError(Exception):
    """Shaped like botocore's ClientError (a ``response`` dict), built here so this test needs no SDK."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"An error occurred ({code}) when calling the GetObject operation: {code}")
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


def _wrapped(inner: BaseException, outer: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:  # noqa: BLE001 - the helper returns whatever was raised
        return exc


class ReadTimeoutError(Exception):  # the name botocore gives it
    pass


class ServerDisconnectedError(Exception):  # the name aiohttp gives it
    pass


@pytest.mark.parametrize(
    "exc, expected",
    [
        (FakeClientError(503, "SlowDown"), ("Throttled", True)),
        (FakeClientError(429, "TooManyRequests"), ("Throttled", True)),
        (OSError(errno.EBUSY, "Please reduce your request rate."), ("Throttled", True)),  # s3fs's translation
        (FakeClientError(500, "InternalError"), ("ServerError", True)),
        (ReadTimeoutError("Read timeout on endpoint URL"), ("ReadTimeout", True)),
        (TimeoutError(), ("ReadTimeout", True)),
        (ConnectionResetError(104, "Connection reset by peer"), ("ConnectionError", True)),
        (ServerDisconnectedError("Server disconnected"), ("ConnectionError", True)),
        (FakeClientError(403, "AccessDenied"), ("PermissionDenied", False)),
        (PermissionError(13, "Permission denied"), ("PermissionDenied", False)),
        (FakeClientError(404, "NoSuchKey"), ("FileNotFound", False)),
        (FileNotFoundError(2, "No such file or directory"), ("FileNotFound", False)),
        (IsADirectoryError(21, "Is a directory"), ("IsADirectory", False)),
        (ValueError("something else"), ("ValueError", False)),
    ],
)
def test_classify_read_error(exc, expected):
    assert classify_read_error(exc) == expected


def test_classification_looks_through_wrapping_exceptions():
    wrapped = _wrapped(FakeClientError(503, "SlowDown"), OSError("s3fs could not read"))
    assert classify_read_error(wrapped) == ("Throttled", True)


def test_backoff_grows_exponentially_with_full_jitter_and_is_capped():
    policy = RetryPolicy(tries=10, base_delay=0.1, max_delay=1.0, jitter=True)
    rng = random.Random(0)
    for failed, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = [policy.delay(failed, rng) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > 0.8 * cap  # spread over the whole range (jitter), not a fixed sleep
        assert min(delays) < 0.2 * cap


def _flaky(failures: list[BaseException], result: str = "ok"):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return result

    return fn, calls


def test_transient_failures_are_retried_until_success():
    sleeps: list[float] = []
    fn, calls = _flaky([FakeClientError(503, "SlowDown"), ConnectionResetError("reset")])
    assert (
        call_with_retries(
            fn,
            RetryPolicy(tries=3, base_delay=0.5, jitter=True),
            classify=classify_read_error,
            sleep=sleeps.append,
            rng=random.Random(1),
        )
        == "ok"
    )
    assert len(calls) == 3 and len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.5 and 0 <= sleeps[1] <= 1.0


def test_retries_are_bounded_then_the_last_error_type_is_reported():
    sleeps: list[float] = []
    fn, calls = _flaky([FakeClientError(503, "SlowDown")] * 10)
    with pytest.raises(GaveUp) as info:
        call_with_retries(fn, RetryPolicy(tries=4, base_delay=0.01), classify=classify_read_error, sleep=sleeps.append)
    assert len(calls) == 4 and len(sleeps) == 3
    assert info.value.error_type == "Throttled" and info.value.tries == 4
    assert "SlowDown" in str(info.value)


@pytest.mark.parametrize(
    "exc, error_type",
    [(FakeClientError(403, "AccessDenied"), "PermissionDenied"), (FakeClientError(404, "NoSuchKey"), "FileNotFound")],
)
def test_permanent_failures_are_not_retried(exc, error_type):
    sleeps: list[float] = []
    fn, calls = _flaky([exc] * 5)
    with pytest.raises(GaveUp) as info:
        call_with_retries(fn, RetryPolicy(tries=5), classify=classify_read_error, sleep=sleeps.append)
    assert len(calls) == 1 and sleeps == [] and info.value.error_type == error_type


def test_budget_admits_an_object_larger_than_the_budget_alone():
    budget = InFlightBudget(max_count=4, max_bytes=100)
    budget.acquire(500)  # nothing else in flight: admitted
    admitted = threading.Event()
    t = threading.Thread(target=lambda: (budget.acquire(1), admitted.set()))
    t.start()
    assert not admitted.wait(0.2)  # a second read waits for the big one
    budget.release(500)
    assert admitted.wait(5)
    t.join()
    budget.release(1)
    assert budget.count == 0 and budget.bytes == 0


def test_read_ahead_keeps_bytes_and_count_in_flight_bounded_and_loses_nothing():
    """40 tasks of varying sizes with 8 threads and a 1,000-byte budget: the peak bytes held by
    running tasks (measured inside the tasks) never exceed the budget, no more than 8 run at
    once, and every task's result comes back exactly once."""
    sizes = [random.Random(i).randint(50, 400) for i in range(40)]
    lock = threading.Lock()
    running = {"bytes": 0, "count": 0, "peak_bytes": 0, "peak_count": 0}

    def task(i: int, size: int):
        with lock:
            running["bytes"] += size
            running["count"] += 1
            running["peak_bytes"] = max(running["peak_bytes"], running["bytes"])
            running["peak_count"] = max(running["peak_count"], running["count"])
        time.sleep(0.005 * (i % 4))
        with lock:
            running["bytes"] -= size
            running["count"] -= 1
        return i

    reads = ReadAhead(max_count=8, max_bytes=1000)
    results = []
    try:
        for i, size in enumerate(sizes):
            results += list(reads.submit(lambda i=i, size=size: task(i, size), size, tag=f"t{i}"))
            assert reads.in_flight <= 8
        results += list(reads.drain())
    finally:
        reads.close()
    assert sorted(results) == sorted((f"t{i}", i) for i in range(40))
    assert 400 < running["peak_bytes"] <= 1000
    assert 2 <= running["peak_count"] <= 8
    assert reads.budget.peak_bytes <= 1000 and reads.budget.bytes == 0 and reads.budget.count == 0


def test_read_ahead_overlaps_slow_reads():
    """16 reads of 0.1 s each with 8 in flight take ~0.2 s, not 1.6 s: latency is hidden."""
    reads = ReadAhead(max_count=8, max_bytes=1 << 20)
    started = time.perf_counter()
    try:
        out = [r for i in range(16) for r in reads.submit(lambda i=i: time.sleep(0.1) or i, 10, tag=i)]
        out += list(reads.drain())
    finally:
        reads.close()
    assert sorted(v for _, v in out) == list(range(16))
    assert time.perf_counter() - started < 1.0


def test_read_ahead_discards_what_a_failed_bundle_left_behind():
    reads = ReadAhead(max_count=4, max_bytes=100)
    try:
        for i in range(3):
            for _ in reads.submit(lambda i=i: time.sleep(0.05) or i, 10, tag=i):
                pass
        leftover = reads.in_flight
        assert reads.discard() == leftover and reads.in_flight == 0
        assert list(reads.drain()) == [] and reads.budget.count == 0
    finally:
        reads.close()
