"""What to do when reading an image fails, and how many bytes may be in flight.

Pure Python (no Beam, no cloud SDK imports), so the policy is tested on its own:

* ``classify_read_error`` names a storage failure (``Throttled``, ``ReadTimeout``,
  ``ConnectionError``, ``ServerError``, ``PermissionDenied``, ``FileNotFound`` …) and says whether
  it is transient. Exceptions of s3fs/aiobotocore, gcsfs, adlfs and the OS are recognised by
  their type names, HTTP status and error codes, not by importing those libraries.
* ``RetryPolicy`` / ``call_with_retries``: exponential backoff with full jitter and a bounded
  number of tries; permanent failures (403, 404, …) are raised at once.
* ``InFlightBudget``: a count-and-bytes bound on concurrent reads, so memory stays flat on huge
  images (an object larger than the whole budget is still read, but alone).
"""
from __future__ import annotations

import errno
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

THROTTLED = "Throttled"
READ_TIMEOUT = "ReadTimeout"
CONNECTION_ERROR = "ConnectionError"
SERVER_ERROR = "ServerError"
PERMISSION_DENIED = "PermissionDenied"
FILE_NOT_FOUND = "FileNotFound"
IS_A_DIRECTORY = "IsADirectory"
NOT_A_REGULAR_FILE = "NotARegularFile"

TRANSIENT = frozenset({THROTTLED, READ_TIMEOUT, CONNECTION_ERROR, SERVER_ERROR})

_THROTTLE_CODES = ("SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                   "RequestThrottled", "ServerBusy", "rateLimitExceeded", "reduce your request rate")
_NOT_FOUND_CODES = ("NoSuchKey", "NoSuchBucket", "NotFound", "BlobNotFound", "No such file")
_DENIED_CODES = ("AccessDenied", "Forbidden", "AuthorizationFailure", "InvalidAccessKeyId",
                 "SignatureDoesNotMatch", "Permission denied")
_TIMEOUT_NAMES = ("Timeout", "TimeoutError", "ReadTimeoutError", "ConnectTimeoutError", "FSTimeoutError",
                  "ServerTimeoutError")
_CONNECTION_NAMES = ("ConnectionResetError", "ConnectionAbortedError", "BrokenPipeError", "ConnectionRefusedError",
                     "ConnectionClosedError", "EndpointConnectionError", "ServerDisconnectedError",
                     "ClientConnectionError", "ClientConnectorError", "ClientOSError", "ClientPayloadError",
                     "IncompleteRead", "IncompleteReadError", "RemoteDisconnected", "ProtocolError",
                     "ResponseStreamingError", "ServiceRequestError", "ContentLengthError")


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes/contexts (s3fs wraps botocore errors in OSError)."""
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 8:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)  # botocore ClientError
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    for attr in ("status", "code", "status_code"):  # gcsfs HttpError, aiohttp, azure
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def _classify_one(exc: BaseException) -> str | None:
    name = type(exc).__name__
    text = str(exc)
    status = _http_status(exc)
    if name == "NotARegularFile":
        return NOT_A_REGULAR_FILE
    if status == 429 or any(code in text for code in _THROTTLE_CODES) or (status == 503 and "SlowDown" in text):
        return THROTTLED
    if status == 503 or (isinstance(exc, OSError) and exc.errno == errno.EBUSY):
        return THROTTLED
    if status == 404 or isinstance(exc, FileNotFoundError) or any(code in text for code in _NOT_FOUND_CODES):
        return FILE_NOT_FOUND
    if status in (401, 403) or isinstance(exc, PermissionError) or any(code in text for code in _DENIED_CODES):
        return PERMISSION_DENIED
    if isinstance(exc, IsADirectoryError):
        return IS_A_DIRECTORY
    if isinstance(exc, TimeoutError) or name in _TIMEOUT_NAMES or "timed out" in text.lower() \
            or "Read timeout" in text:
        return READ_TIMEOUT
    if isinstance(exc, ConnectionError) or name in _CONNECTION_NAMES or "Connection reset" in text \
            or "Server disconnected" in text or "Connection was closed" in text:
        return CONNECTION_ERROR
    if status is not None and 500 <= status < 600:
        return SERVER_ERROR
    return None


def classify_read_error(exc: BaseException) -> tuple[str, bool]:
    """(error_type for the error row, whether a retry may help)."""
    for link in _chain(exc):
        kind = _classify_one(link)
        if kind is not None:
            return kind, kind in TRANSIENT
    return type(exc).__name__, False


@dataclass(frozen=True)
class RetryPolicy:
    """``tries`` attempts in all; before try n+1 sleep a uniform random time in
    [0, min(max_delay, base_delay * 2**n)] ("full jitter": clients throttled together do not
    come back together)."""

    tries: int = 5
    base_delay: float = 0.2
    max_delay: float = 10.0

    def delay(self, failed_tries: int, rng: random.Random | None = None) -> float:
        cap = min(self.max_delay, self.base_delay * (2 ** max(0, failed_tries - 1)))
        return (rng or random).uniform(0.0, cap)


class ReadFailed(Exception):
    """A read that failed for good: its error_type, the number of tries and the last exception."""

    def __init__(self, error_type: str, tries: int, cause: BaseException) -> None:
        super().__init__(f"{error_type} after {tries} tr{'y' if tries == 1 else 'ies'}: "
                         f"{type(cause).__name__}: {cause}")
        self.error_type = error_type
        self.tries = tries
        self.cause = cause


def call_with_retries(fn: Callable[[], T], policy: RetryPolicy, *, sleep: Callable[[float], None] = time.sleep,
                      rng: random.Random | None = None,
                      classify: Callable[[BaseException], tuple[str, bool]] = classify_read_error) -> T:
    """``fn()``; transient failures are retried with backoff up to ``policy.tries`` tries in all,
    permanent ones fail at once. Raises ``ReadFailed`` naming the error type."""
    tries = 0
    while True:
        tries += 1
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            error_type, transient = classify(exc)
            if not transient or tries >= policy.tries:
                raise ReadFailed(error_type, tries, exc) from exc
            sleep(policy.delay(tries, rng))


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
