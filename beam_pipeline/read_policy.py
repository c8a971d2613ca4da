"""What to do when reading an image fails.

Pure Python (no Beam, no cloud SDK imports), so the policy is tested on its own:

* ``classify_read_error`` names a storage failure (``Throttled``, ``ReadTimeout``,
  ``ConnectionError``, ``ServerError``, ``PermissionDenied``, ``FileNotFound`` …) and says whether
  it is transient. Exceptions of s3fs/aiobotocore, gcsfs, adlfs and the OS are recognised by
  their type names, HTTP status and error codes, not by importing those libraries.
* ``READ_RETRIES``: reads use the pipeline's one retry loop (``beam_pipeline.retries``) with full
  jitter and a bounded number of tries; permanent failures (403, 404, …) are raised at once.
"""

from __future__ import annotations

import errno

THROTTLED = "Throttled"
READ_TIMEOUT = "ReadTimeout"
CONNECTION_ERROR = "ConnectionError"
SERVER_ERROR = "ServerError"
PERMISSION_DENIED = "PermissionDenied"
FILE_NOT_FOUND = "FileNotFound"
IS_A_DIRECTORY = "IsADirectory"
NOT_A_REGULAR_FILE = "NotARegularFile"

TRANSIENT = frozenset({THROTTLED, READ_TIMEOUT, CONNECTION_ERROR, SERVER_ERROR})

_THROTTLE_CODES = (
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestThrottled",
    "ServerBusy",
    "rateLimitExceeded",
    "reduce your request rate",
)
_NOT_FOUND_CODES = ("NoSuchKey", "NoSuchBucket", "NotFound", "BlobNotFound", "No such file")
_DENIED_CODES = (
    "AccessDenied",
    "Forbidden",
    "AuthorizationFailure",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "Permission denied",
)
_TIMEOUT_NAMES = (
    "Timeout",
    "TimeoutError",
    "ReadTimeoutError",
    "ConnectTimeoutError",
    "FSTimeoutError",
    "ServerTimeoutError",
)
_CONNECTION_NAMES = (
    "ConnectionResetError",
    "ConnectionAbortedError",
    "BrokenPipeError",
    "ConnectionRefusedError",
    "ConnectionClosedError",
    "EndpointConnectionError",
    "ServerDisconnectedError",
    "ClientConnectionError",
    "ClientConnectorError",
    "ClientOSError",
    "ClientPayloadError",
    "IncompleteRead",
    "IncompleteReadError",
    "RemoteDisconnected",
    "ProtocolError",
    "ResponseStreamingError",
    "ServiceRequestError",
    "ContentLengthError",
)


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
    if isinstance(exc, TimeoutError) or name in _TIMEOUT_NAMES or "timed out" in text.lower() or "Read timeout" in text:
        return READ_TIMEOUT
    if (
        isinstance(exc, ConnectionError)
        or name in _CONNECTION_NAMES
        or "Connection reset" in text
        or "Server disconnected" in text
        or "Connection was closed" in text
    ):
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
