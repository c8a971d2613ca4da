"""Reading inputs: an ``ImageRef`` -> its bytes (one bounded read), SHA-256 and decoded pixels, or
an error row.

Image bytes are read by ``beam_pipeline.object_reads`` (one GET per object) several at a time
(``read_ahead``), with the retry policy of ``read_policy``. Every failure becomes an error row on
the ``errors`` output, never an exception. Matching the inputs is ``beam_pipeline.matching``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from beam_pipeline.listing import ENTRY_MESSAGES
from beam_pipeline.metrics import NAMESPACE
from beam_pipeline.object_reads import ObjectReader, ReadSettings
from beam_pipeline.outcomes import failed
from beam_pipeline.read_ahead import ReadAhead
from beam_pipeline.records import STAGE_DECODE, STAGE_READ, ImageRecord, ImageRef, error_row, exception_row
from beam_pipeline.retries import GaveUp
from model.image_loading import ImageDecodeError, decode_image
from model.storage import read_limit, sha256_hex

log = logging.getLogger(__name__)
ERRORS = "errors"  # read_one's tag of an error row (ReadAndDecode wraps it with outcomes.failed)


def read_bytes(ref: ImageRef, reader: ObjectReader, max_bytes: int) -> tuple[bytes, dict[str, Any] | None]:
    """(the bytes, None), or (b"", the read-stage error row): an entry that is not a readable
    regular file (never opened), one over ``max_bytes`` by its listed size, or a failed read."""
    if ref.entry_error is not None:
        return b"", error_row(
            ref.uri,
            ref.image_id,
            STAGE_READ,
            ref.entry_error,
            f"{ref.uri} is {ENTRY_MESSAGES.get(ref.entry_error, ref.entry_error)}",
            None,
            ref,
        )
    if ref.size_bytes is not None and ref.size_bytes > max_bytes:
        return b"", error_row(
            ref.uri,
            ref.image_id,
            STAGE_READ,
            "TooLarge",
            f"file has {ref.size_bytes} bytes, over the limit of {max_bytes} (--max_image_bytes)",
            None,
            ref,
        )
    try:
        return reader.read(ref.uri, max_bytes, ref.size_bytes), None
    except GaveUp as exc:
        retried = f" (gave up after {exc.tries} tries)" if exc.tries > 1 else ""
        return b"", error_row(
            ref.uri, ref.image_id, STAGE_READ, exc.error_type, f"cannot read: {exc.cause}{retried}", None, ref
        )


def read_one(
    ref: ImageRef, reader: ObjectReader, image_size: tuple[int, int], max_bytes: int, max_pixels: int
) -> tuple[str, Any, int | None]:
    """Read and decode one image; never raises. Returns (tag, value, bytes read or None when
    nothing was read): tag "records" with an ImageRecord, or ERRORS with the error row (which
    carries the bytes' SHA-256 once they were read)."""
    data, error = read_bytes(ref, reader, max_bytes)
    if error is not None:
        return ERRORS, error, None
    sha256 = sha256_hex(data)  # the image_sha256 column of caption and error rows
    try:
        decoded = decode_image(data, image_size, max_bytes=max_bytes, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        return (
            ERRORS,
            error_row(ref.uri, ref.image_id, STAGE_DECODE, exc.error_type, exc.message, sha256, ref),
            len(data),
        )
    except Exception as exc:  # noqa: BLE001 - defensive: decode_image promises not to, but never crash
        return ERRORS, exception_row(ref, STAGE_DECODE, exc, sha256), len(data)
    return "records", ImageRecord(ref, decoded.pixels, decoded.width, decoded.height, sha256), len(data)


class ReadAndDecode(beam.DoFn):
    """ImageRef -> ImageRecord (RGB uint8 at the model's input size) or an error row.

    Up to ``--read_concurrency`` images (and ``--read_bytes_in_flight`` bytes) are read and
    decoded at once on a thread pool per DoFn instance (``ReadAhead``); results are emitted as
    they finish, with the window and timestamp of their own input, and ``finish_bundle`` drains
    the rest, as the Beam model allows on every runner. (Beam 2.77's Dask runner collects a
    bundle's outputs before it calls finish_bundle and so loses them, BatchElements' last batch
    too; with ``--read_concurrency 1`` this DoFn emits everything from ``process``.)"""

    def __init__(
        self, image_size: tuple[int, int], max_bytes: int, max_pixels: int, read_settings: ReadSettings | None = None
    ) -> None:
        self.image_size = tuple(image_size)
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.read_settings = read_settings or ReadSettings()
        self.read_counter = Metrics.counter(NAMESPACE, "images_read")
        self.failed_counter = Metrics.counter(NAMESPACE, "images_failed")
        self.bytes_counter = Metrics.counter(NAMESPACE, "bytes_read")
        self._reads: ReadAhead | None = None
        self._reader: ObjectReader | None = None

    def setup(self) -> None:
        self._reader = ObjectReader(self.read_settings)
        self._reads = ReadAhead(self.read_settings.concurrency, self.read_settings.bytes_in_flight)

    def start_bundle(self) -> None:
        if self._reads is not None and self._reads.discard():
            log.warning("dropped reads left over from a failed bundle (the runner retries its elements)")

    def _emit(self, done: Iterable[tuple[Any, tuple[str, Any, int | None]]]) -> Iterator[Any]:
        # Metrics are counted here, on the bundle's thread (Beam's metric containers are per thread).
        for (timestamp, window), (tag, value, nbytes) in done:
            if nbytes is not None:
                self.read_counter.inc()
                self.bytes_counter.inc(nbytes)
            if tag == ERRORS:  # error rows ride in the one output (see beam_pipeline.outcomes)
                self.failed_counter.inc()
                value = failed(value)
            yield WindowedValue(value, timestamp, (window,))

    def task(self, ref: ImageRef) -> Callable[[], tuple[str, Any, int | None]]:
        """The work on one image, run on the read-ahead pool: ``read_one`` (a subclass may read
        and inspect differently, e.g. ``beam_pipeline.inventory``)."""
        return functools.partial(read_one, ref, self._reader, self.image_size, self.max_bytes, self.max_pixels)

    def process(
        self, ref: ImageRef, timestamp: Any = beam.DoFn.TimestampParam, window: Any = beam.DoFn.WindowParam
    ) -> Iterator[Any]:
        assert self._reads is not None and self._reader is not None
        limit = read_limit(self.max_bytes)
        cost = min(ref.size_bytes if ref.size_bytes is not None else limit, limit)
        yield from self._emit(self._reads.submit(self.task(ref), max(cost, 1), (timestamp, window)))
        if self.read_settings.concurrency == 1:  # one at a time: nothing is left for finish_bundle
            yield from self._emit(self._reads.drain())

    def finish_bundle(self) -> Iterator[Any]:
        if self._reads is not None:
            yield from self._emit(self._reads.drain())

    def teardown(self) -> None:
        if self._reads is not None:
            self._reads.close()
            self._reads = None
