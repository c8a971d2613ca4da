"""The Beam metrics namespace of the pipeline's counters and distributions (images read,
captioned, failed, rows committed, ...). ``pipeline.run`` queries the runner's metrics under it;
on runners that report none (Dask) the summary's counts come from the data instead
(``run_stats``)."""

from __future__ import annotations

NAMESPACE = "captioning"
