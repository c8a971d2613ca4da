"""Batched captioning DoFn: the model is loaded once per worker process and shared by its
threads (``apache_beam.utils.shared.Shared``); a failing batch is retried image by image so one
bad image costs only itself.

Why not RunInference: our inference is two models plus a Python beam-search loop with per-row
outputs and per-image fallback; a DoFn holding a ``Shared`` handle gives exactly RunInference's
load-once behaviour with less indirection, and keeps error rows on a tagged output.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from beam_pipeline.records import STAGE_INFER, ImageRecord, caption_row, exception_row
from beam_pipeline.sources import ERRORS, NAMESPACE

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


class _LoadedModel:
    """What ``Shared`` keeps per process (a plain class: Shared needs weak-referenceable objects)."""

    def __init__(self, model: Any, settings: Any, progress: _Progress) -> None:
        self.model = model
        self.settings = settings
        self.progress = progress
        self.lock = threading.Lock()  # TF calls are thread-safe, but one batch at a time is faster on CPU


class CaptionBatches(beam.DoFn):
    """Batch of ImageRecords -> caption rows (main output) and error rows (``errors``)."""

    def __init__(self, model_uri: str, encoder_weights: str | None, expected_model_id: str | None,
                 decode_overrides: dict[str, Any], emit_embeddings: bool = False, precision: str = "float32",
                 runtime: str = "auto", model_cache_dir: str | None = None,
                 progress_seconds: float = 10.0) -> None:
        self.model_uri = model_uri
        self.encoder_weights = encoder_weights
        self.expected_model_id = expected_model_id
        self.decode_overrides = decode_overrides
        self.emit_embeddings = emit_embeddings
        self.precision = precision
        self.runtime = runtime
        self.model_cache_dir = model_cache_dir
        self.progress_seconds = progress_seconds
        self._shared = shared.Shared()
        self.loads = Metrics.counter(NAMESPACE, "model_loads")
        self.captioned = Metrics.counter(NAMESPACE, "images_captioned")
        self.failed = Metrics.counter(NAMESPACE, "images_failed")
        self.batches = Metrics.counter(NAMESPACE, "batches")
        self.batch_sizes = Metrics.distribution(NAMESPACE, "batch_size")
        self.load_ms = Metrics.distribution(NAMESPACE, "model_load_ms")

    def _load(self) -> _LoadedModel:
        from model.captioner import load_caption_model

        started = time.monotonic()
        model = load_caption_model(self.model_uri, encoder_weights=self.encoder_weights,
                                   expected_model_id=self.expected_model_id, precision=self.precision,
                                   runtime=self.runtime, cache=self.model_cache_dir)
        settings = model.default_settings
        overrides = {k: v for k, v in self.decode_overrides.items() if v is not None}
        if overrides:
            from dataclasses import replace

            settings = replace(settings, **overrides)
        self._load_ms = int(1000 * (time.monotonic() - started))
        self._loaded_here = True
        log.info("model %s loaded in process %d in %.1f s", model.model_id, os.getpid(), self._load_ms / 1000)
        return _LoadedModel(model, settings, _Progress(self.progress_seconds))

    def setup(self) -> None:
        self._loaded_here = False
        self._load_ms = 0
        self._reported_load = False
        self._loaded = self._shared.acquire(self._load)

    def _report_load(self) -> None:
        # Metrics updated in setup() are not attributed to a step on every runner, so the load is
        # counted on the first process() call of the DoFn instance that actually loaded.
        if self._loaded_here and not self._reported_load:
            self.loads.inc()
            self.load_ms.update(self._load_ms)
        self._reported_load = True

    def _rows(self, records: Sequence[ImageRecord]) -> list[dict[str, Any]]:
        loaded = self._loaded
        images = np.stack([r.pixels for r in records])
        with loaded.lock:
            features, results = loaded.model.caption_images(images, loaded.settings)
        decode = loaded.settings.describe()
        return [caption_row(rec, res.caption, res.score, decode, loaded.model.model_id, loaded.model.encoder_name,
                            features[i] if self.emit_embeddings else None)
                for i, (rec, res) in enumerate(zip(records, results))]

    def process(self, batch: Sequence[ImageRecord]) -> Iterator[Any]:
        self._report_load()
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
                    yield beam.pvalue.TaggedOutput(ERRORS, exception_row(record.ref, STAGE_INFER, single_exc, record.sha256))
        self.captioned.inc(len(rows))
        self._loaded.progress.add(len(rows))
        yield from rows
