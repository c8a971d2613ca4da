"""Batched captioning DoFn: the model is loaded once per worker process and shared by its
threads (``apache_beam.utils.shared.Shared``), or once per machine and shared by its processes
(``MultiProcessShared``, ``--share_model_across_processes``); a failing batch is retried image by
image so one bad image costs only itself.

Why not RunInference: our inference is two models plus a Python beam-search loop with per-row
outputs and per-image fallback; a DoFn holding a ``Shared`` / ``MultiProcessShared`` handle gives
exactly RunInference's load-once behaviour with less indirection, and keeps error rows in the
same single output (see ``outcomes``).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from beam_pipeline.outcomes import ModelLoaded, failed
from beam_pipeline.records import STAGE_INFER, ImageRecord, caption_row, exception_row
from beam_pipeline.sources import NAMESPACE

log = logging.getLogger(__name__)


class _Progress:
    """Per-process progress line with images/s every ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.lock = threading.Lock()
        self.start = time.monotonic()
        self.last = self.start
        self.count = 0

    def add(self, n: int) -> None:
        with self.lock:
            self.count += n
            now = time.monotonic()
            if self.interval > 0 and now - self.last >= self.interval:
                self.last = now
                rate = self.count / max(1e-9, now - self.start)
                log.info("progress (pid %d): %d images captioned, %.1f images/s", os.getpid(), self.count, rate)


class LoadedCaptioner:
    """A loaded caption model with its decode settings: what ``Shared`` (one copy per process) or
    ``MultiProcessShared`` (one copy per machine) holds. Only methods are used, so that a
    cross-process proxy can call it; a plain class, because Shared needs weak references."""

    def __init__(self, model: Any, settings: Any, seconds: float) -> None:
        self._model = model
        self._settings = settings
        self._lock = threading.Lock()  # TF calls are thread-safe, but one batch at a time is faster on CPU
        self._info = {"load_id": uuid.uuid4().hex, "seconds": round(seconds, 3), "pid": os.getpid(),
                      "host": socket.gethostname(), "model_id": model.model_id,
                      "encoder": model.encoder_name, "decode": settings.describe()}

    def info(self) -> dict[str, Any]:
        """Which load this is (``load_id``), how long it took, and what the rows should say."""
        return dict(self._info)

    def caption(self, images: np.ndarray) -> tuple[np.ndarray, list[Any]]:
        """(features, CaptionResults) of one batch of images."""
        with self._lock:
            return self._model.caption_images(images, self._settings)


def load_captioner(model_uri: str, encoder_weights: str | None, expected_model_id: str | None,
                   decode_overrides: dict[str, Any], precision: str, runtime: str,
                   model_cache_dir: str | None) -> LoadedCaptioner:
    """Load the model (the constructor given to Shared / MultiProcessShared)."""
    from dataclasses import replace

    from model.captioner import load_caption_model

    started = time.monotonic()
    model = load_caption_model(model_uri, encoder_weights=encoder_weights, expected_model_id=expected_model_id,
                               precision=precision, runtime=runtime, cache=model_cache_dir)
    overrides = {k: v for k, v in decode_overrides.items() if v is not None}
    settings = replace(model.default_settings, **overrides) if overrides else model.default_settings
    seconds = time.monotonic() - started
    log.info("model %s loaded in process %d in %.1f s", model.model_id, os.getpid(), seconds)
    return LoadedCaptioner(model, settings, seconds)


_PROGRESS: dict[float, _Progress] = {}
_COUNTED_LOADS: set[str] = set()
_PROCESS_LOCK = threading.Lock()


class CaptionBatches(beam.DoFn):
    """Batch of ImageRecords -> caption rows, ``Failed`` error rows, and one ``ModelLoaded`` per
    DoFn instance (so the summary counts model loads from the data on every runner).

    ``share_tag`` set: one model copy per machine, served to every SDK process on it by
    ``MultiProcessShared`` (the mechanism of RunInference's ``share_model_across_processes``);
    else one copy per process (``Shared``)."""

    def __init__(self, model_uri: str, encoder_weights: str | None, expected_model_id: str | None,
                 decode_overrides: dict[str, Any], emit_embeddings: bool = False, precision: str = "float32",
                 runtime: str = "auto", model_cache_dir: str | None = None,
                 progress_seconds: float = 10.0, share_tag: str | None = None) -> None:
        self._load_args = (model_uri, encoder_weights, expected_model_id, decode_overrides, precision, runtime,
                           model_cache_dir)
        self.emit_embeddings = emit_embeddings
        self.progress_seconds = progress_seconds
        self.share_tag = share_tag
        self._shared = shared.Shared()
        self.loads = Metrics.counter(NAMESPACE, "model_loads")
        self.captioned = Metrics.counter(NAMESPACE, "images_captioned")
        self.failed = Metrics.counter(NAMESPACE, "images_failed")
        self.batches = Metrics.counter(NAMESPACE, "batches")
        self.batch_sizes = Metrics.distribution(NAMESPACE, "batch_size")
        self.load_ms = Metrics.distribution(NAMESPACE, "model_load_ms")

    def _load(self) -> LoadedCaptioner:
        return load_captioner(*self._load_args)

    def setup(self) -> None:
        if self.share_tag:
            from apache_beam.utils.multi_process_shared import MultiProcessShared

            self._captioner = MultiProcessShared(self._load, tag=self.share_tag, always_proxy=True).acquire()
        else:
            self._captioner = self._shared.acquire(self._load)
        self._info = self._captioner.info()
        with _PROCESS_LOCK:
            self._progress = _PROGRESS.setdefault(self.progress_seconds, _Progress(self.progress_seconds))
        self._reported_load = False

    def _report_load(self) -> Iterator[ModelLoaded]:
        # Metrics updated in setup() are not attributed to a step on every runner, so the load is
        # counted on the first process() call: in the metrics once by the process holding the copy,
        # in the data by every instance (the summary counts distinct load ids).
        if self._reported_load:
            return
        self._reported_load = True
        info = self._info
        with _PROCESS_LOCK:
            first_here = info["pid"] == os.getpid() and info["load_id"] not in _COUNTED_LOADS
            _COUNTED_LOADS.add(info["load_id"])
        if first_here:
            self.loads.inc()
            self.load_ms.update(int(1000 * info["seconds"]))
        yield ModelLoaded(info["load_id"], info["seconds"], os.getpid(), socket.gethostname())

    def _rows(self, records: Sequence[ImageRecord]) -> list[dict[str, Any]]:
        features, results = self._captioner.caption(np.stack([r.pixels for r in records]))
        info = self._info
        return [caption_row(rec, res.caption, res.score, info["decode"], info["model_id"], info["encoder"],
                            features[i] if self.emit_embeddings else None)
                for i, (rec, res) in enumerate(zip(records, results))]

    def process(self, batch: Sequence[ImageRecord]) -> Iterator[Any]:
        yield from self._report_load()
        self.batches.inc()
        self.batch_sizes.update(len(batch))
        try:
            rows = self._rows(batch)
        except Exception as exc:  # noqa: BLE001 - isolate the failing image(s) below
            log.warning("batch of %d failed (%s: %s); retrying image by image", len(batch), type(exc).__name__, exc)
            rows = []
            for record in batch:
                try:
                    rows.extend(self._rows([record]))
                except Exception as single_exc:  # noqa: BLE001 - becomes an error row
                    self.failed.inc()
                    yield failed(exception_row(record.ref, STAGE_INFER, single_exc, record.sha256))
        self.captioned.inc(len(rows))
        yield from rows
        # Counted after the rows went downstream (the commit writer is fused with this step), so a
        # progress line never counts rows that have not reached the writer yet.
        self._progress.add(len(rows))
