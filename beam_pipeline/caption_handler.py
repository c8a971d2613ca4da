"""Our ``ModelHandler`` for Beam's ``RunInference``: it owns loading the caption model (artifact,
encoder weights, precision, runtime, compiled-graph cache), the batch limits and inference.

RunInference does the rest, as for any framework: ``Shared`` (one copy per process) or
``MultiProcessShared`` (one copy per machine, ``--share_model_across_processes``), batching,
load and batch metrics. ``run_inference`` keeps the pipeline's rules: a failing batch is retried
image by image, and each image yields a caption row or a ``Failed`` error row, in one output
(see ``outcomes``). The first call of each handler copy also yields one ``ModelLoaded``, and each
batch one ``Captioned`` (how many images this process captioned), so the summary counts model
loads and images per process from the data on runners that report no metrics.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from beam_pipeline.metrics import NAMESPACE
from beam_pipeline.outcomes import Captioned, ModelLoaded, failed
from beam_pipeline.records import STAGE_INFER, ImageRecord, caption_row, exception_row

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how: everything a worker needs, decided in the driver."""

    model_uri: str
    encoder_weights: str | None = None
    expected_model_id: str | None = None
    method: str | None = None  # decode overrides; None keeps the artifact's default
    beam_width: int | None = None
    length_alpha: float | None = None
    precision: str = "float32"
    runtime: str = "auto"
    cache_dir: str | None = None


class LoadedCaptioner:
    """A loaded caption model with its decode settings: what RunInference shares. Only methods are
    used, so that a cross-process proxy can call it; a plain class, because ``Shared`` needs weak
    references."""

    def __init__(self, model: Any, settings: Any, seconds: float) -> None:
        self._model = model
        self._settings = settings
        self._lock = threading.Lock()  # one batch at a time is faster on CPU than interleaved calls
        self._info = {
            "load_id": uuid.uuid4().hex,
            "seconds": round(seconds, 3),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "model_id": model.model_id,
            "encoder": model.encoder_name,
            "decode": settings.describe(),
        }

    def info(self) -> dict[str, Any]:
        """Which load this is (``load_id``), how long it took, and what the rows should say."""
        return dict(self._info)

    def caption(self, images: np.ndarray) -> tuple[np.ndarray, list[Any]]:
        """(features, CaptionResults) of one batch of images."""
        with self._lock:
            return self._model.caption_images(images, self._settings)


def load_captioner(spec: ModelSpec) -> LoadedCaptioner:
    """Load the model and resolve its decode settings (runs once per process or machine)."""
    from model.captioner import load_caption_model

    started = time.monotonic()
    model = load_caption_model(
        spec.model_uri,
        encoder_weights=spec.encoder_weights,
        expected_model_id=spec.expected_model_id,
        precision=spec.precision,
        runtime=spec.runtime,
        cache=spec.cache_dir,
    )
    overrides = {
        k: v
        for k, v in (("method", spec.method), ("beam_width", spec.beam_width), ("length_alpha", spec.length_alpha))
        if v is not None
    }
    settings = replace(model.default_settings, **overrides) if overrides else model.default_settings
    seconds = time.monotonic() - started
    log.info("model %s loaded in process %d in %.1f s", model.model_id, os.getpid(), seconds)
    return LoadedCaptioner(model, settings, seconds)


_COUNTED_LOADS: set[str] = set()
_LOADS_LOCK = threading.Lock()


class CaptionModelHandler(ModelHandler[ImageRecord, Any, LoadedCaptioner]):
    """ImageRecords -> caption rows and ``Failed`` error rows (plus one ``ModelLoaded`` per copy
    of the handler, that is per DoFn instance, and one ``Captioned`` per batch with captions)."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        max_batch_size: int,
        min_batch_size: int | None = None,
        emit_embeddings: bool = False,
        share_across_processes: bool = False,
    ) -> None:
        super().__init__(min_batch_size=min_batch_size or max_batch_size, max_batch_size=max_batch_size)
        self.spec = spec
        self.emit_embeddings = emit_embeddings
        self._share_across_processes = share_across_processes
        self._reported_loads: set[str] = set()
        self._info_of: Any = None  # the model whose info() is cached in self._info
        self._info: dict[str, Any] = {}
        self._captioned = Metrics.counter(NAMESPACE, "images_captioned")
        self._failed = Metrics.counter(NAMESPACE, "images_failed")
        self._batches = Metrics.counter(NAMESPACE, "batches")
        self._loads = Metrics.counter(NAMESPACE, "model_loads")
        self._load_ms = Metrics.distribution(NAMESPACE, "model_load_ms")

    def load_model(self) -> LoadedCaptioner:
        return load_captioner(self.spec)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE

    def get_num_bytes(self, batch: Sequence[ImageRecord]) -> int:
        """Pixel bytes of the batch (the default pickles the whole batch to measure it)."""
        return int(sum(r.pixels.nbytes for r in batch))

    def run_inference(
        self, batch: Sequence[ImageRecord], model: LoadedCaptioner, inference_args: dict[str, Any] | None = None
    ) -> Iterable[Any]:
        if model is not self._info_of:  # once per model, not per batch (a shared model is a proxy: a round trip)
            self._info, self._info_of = model.info(), model
        info = self._info
        out: list[Any] = list(self._report_load(info))
        self._batches.inc()
        try:
            rows = self._rows(batch, model, info)
        except Exception as exc:  # noqa: BLE001 - isolate the failing image(s) below
            log.warning("batch of %d failed (%s: %s); retrying image by image", len(batch), type(exc).__name__, exc)
            rows = []
            for record in batch:
                try:
                    rows.extend(self._rows([record], model, info))
                except Exception as single_exc:  # noqa: BLE001 - becomes an error row
                    self._failed.inc()
                    out.append(failed(exception_row(record.ref, STAGE_INFER, single_exc, record.sha256)))
        self._captioned.inc(len(rows))
        if rows:
            out.append(Captioned(len(rows), os.getpid(), socket.gethostname()))
        return out + rows

    def _rows(
        self, records: Sequence[ImageRecord], model: LoadedCaptioner, info: dict[str, Any]
    ) -> list[dict[str, Any]]:
        features, results = model.caption(np.stack([r.pixels for r in records]))
        return [
            caption_row(
                rec,
                res.caption,
                res.score,
                info["decode"],
                info["model_id"],
                info["encoder"],
                features[i] if self.emit_embeddings else None,
            )
            for i, (rec, res) in enumerate(zip(records, results))
        ]

    def _report_load(self, info: dict[str, Any]) -> Iterator[ModelLoaded]:
        # Once per handler copy and load: in the data always (the summary counts distinct load
        # ids), in the metrics once by the process that holds the copy.
        load_id = info["load_id"]
        if load_id in self._reported_loads:
            return
        self._reported_loads.add(load_id)
        with _LOADS_LOCK:
            first_here = info["pid"] == os.getpid() and load_id not in _COUNTED_LOADS
            _COUNTED_LOADS.add(load_id)
        if first_here:
            self._loads.inc()
            self._load_ms.update(int(1000 * info["seconds"]))
        yield ModelLoaded(load_id, info["seconds"], os.getpid(), socket.gethostname())
