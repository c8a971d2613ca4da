"""Reading one image's bytes: local files with today's checks, object stores with one GET.

Remote objects (``s3://``, ``gs://``, ``az://`` … anything fsspec knows) are read with
``fs.cat_file(path, start=0, end=max_bytes + 1)``: exactly one ranged GET per object, no HEAD
(the size is known from the listing, and the range enforces ``--max_image_bytes`` while
reading even when it is not). The filesystem client comes from fsspec's instance cache, so a
worker process has one client (one connection pool) per protocol and settings, shared by all
reads and threads. Measured against the alternatives in docs/PERFORMANCE.md ("Object stores").

Retries are ours (``beam_pipeline.read_policy``): s3fs's and botocore's own retries are turned
down to a single try, so the number of requests per object is bounded by ``--read_retries``.
Local paths keep the FIFO/device refusal and the byte limit of the original reader.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

import fsspec
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_pipeline.read_policy import classify_read_error
from beam_pipeline.retries import RetryPolicy, call_with_retries
from model.storage import cat_prefix, is_local, local_path, read_limit


class NotARegularFile(OSError):
    """A local input that is a FIFO, socket or device (a glob matches those too)."""


@dataclass(frozen=True)
class ReadSettings:
    """How a worker reads images (from the ``--read_*`` flags)."""

    concurrency: int = 16
    bytes_in_flight: int = 256 << 20
    tries: int = 5
    backoff_seconds: float = 0.2
    timeout_seconds: float = 60.0

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(tries=self.tries, base_delay=self.backoff_seconds, max_delay=10.0, jitter=True)


def refuse_special_local_file(uri: str) -> None:
    """open() on a FIFO blocks until a writer appears (the job would hang forever) and a device
    such as /dev/zero never ends: refuse local non-regular files before opening them."""
    if not is_local(uri):
        return
    try:
        mode = os.stat(local_path(uri)).st_mode
    except OSError:
        return  # missing / not permitted: the open below reports it
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise NotARegularFile(f"{uri} is not a regular file (a FIFO, socket or device); not opened")


def read_local_limited(uri: str, max_bytes: int) -> bytes:
    """At most max_bytes + 1 bytes of a local file (one more than allowed shows it is too large)."""
    refuse_special_local_file(uri)
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read(read_limit(max_bytes))


def filesystem_options(protocol: str, settings: ReadSettings) -> dict[str, Any]:
    """fsspec storage options that make the client do one try per call (ours is the retry
    policy), time out after ``timeout_seconds`` and keep enough connections for the reads in flight."""
    if protocol in ("s3", "s3a"):
        return {
            "config_kwargs": {
                "retries": {"total_max_attempts": 1, "mode": "standard"},
                "connect_timeout": settings.timeout_seconds,
                "read_timeout": settings.timeout_seconds,
                "max_pool_connections": max(10, settings.concurrency),
            }
        }
    return {}  # gcsfs / adlfs: their defaults (see docs/RUNNING.md "Reading from object stores")


class ObjectReader:
    """Reads whole images (capped at max_bytes + 1) with retries; thread-safe."""

    def __init__(self, settings: ReadSettings) -> None:
        self.settings = settings
        self.policy = settings.retry_policy
        self._filesystems: dict[str, Any] = {}

    def _filesystem(self, uri: str) -> tuple[Any, str]:
        protocol = uri.split("://", 1)[0]
        fs = self._filesystems.get(protocol)
        if fs is None:  # fsspec caches instances: one client per process per protocol and options
            fs = fsspec.filesystem(protocol, **filesystem_options(protocol, self.settings))
            if hasattr(fs, "retries"):  # s3fs: a class attribute (5), not a constructor argument
                fs.retries = 1
            self._filesystems[protocol] = fs
        return fs, fs._strip_protocol(uri)

    def get_once(self, uri: str, max_bytes: int, size_hint: int | None = None) -> bytes:
        """One GET (one try) of at most max_bytes + 1 bytes."""
        if is_local(uri):
            return read_local_limited(uri, max_bytes)
        if size_hint == 0:
            return b""  # nothing to fetch; the decoder reports EmptyFile
        fs, path = self._filesystem(uri)  # our client (one try per call), not fsspec's default
        return cat_prefix(fs, path, max_bytes, remote=True)

    def read(self, uri: str, max_bytes: int, size_hint: int | None = None) -> bytes:
        """``get_once`` under the retry policy; raises ``retries.GaveUp`` with the read error type."""
        return call_with_retries(
            lambda: self.get_once(uri, max_bytes, size_hint), self.policy, classify=classify_read_error
        )
