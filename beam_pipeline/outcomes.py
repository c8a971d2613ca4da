"""Every DoFn of the pipeline emits ONE PCollection; side results travel in it as small wrapper
objects and are split off with ``beam.Filter`` / ``beam.FlatMap`` (``split``).

Why not tagged outputs: Beam's Dask runner (2.77) hands every output of a multi-output ParDo to
every consumer (its bags are keyed by the producing transform, and one receiver list collects
all tags), so error rows reached the captioning step as plain dicts. ``beam.Partition`` is
itself a ParDo with tagged outputs, so it has the same problem; ``Filter`` is a single-output
ParDo and is correct on every runner. See docs/DEPLOY.md ("Runner notes").

The wrappers are plain frozen dataclasses, pickled by Beam's default coder.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

# How a composite transform's ``expand`` declares several PCollections in or out (a tuple or a
# dict of them): Beam's type hints describe one PCollection (or PBegin / PDone) only and warn
# about anything else, so to Beam this is Any; the docstrings say what the PCollections hold.
PCollections = Any


@dataclass(frozen=True)
class Failed:
    """An input that could not be captioned: ``row`` is its ``errors/*.parquet`` row."""

    row: dict[str, Any]


@dataclass(frozen=True)
class Skipped:
    """An input skipped because an earlier run already holds a row for it (``--resume``);
    ``interrupted``: only runs that never finished (crashed, killed) hold it."""

    uri: str
    interrupted: bool = False


@dataclass(frozen=True)
class Recaptioned:
    """An input captioned again because it changed since an earlier run's row (``--resume``)."""

    uri: str


@dataclass(frozen=True)
class ModelLoaded:
    """One captioning DoFn instance got a model: ``load_id`` names the load it got (the same id
    for every instance that shares the copy), so distinct ids count the loads from the data,
    whether or not the runner reports metrics. ``pid`` is the process that captions."""

    load_id: str
    seconds: float
    pid: int
    host: str


@dataclass(frozen=True)
class Captioned:
    """``n`` images of one batch captioned by process ``pid`` on ``host`` (the summary's
    ``captioned_per_process``, counted from the data)."""

    n: int
    pid: int
    host: str


def failed(row: dict[str, Any]) -> Failed:
    """Wrap an error row so that it rides in a DoFn's single output (see module docstring)."""
    return Failed(row)


def is_main(element: Any) -> bool:
    """True for the DoFn's real output (not a Failed / Skipped / ModelLoaded / Captioned / Recaptioned side result)."""
    return not isinstance(element, (Failed, Skipped, ModelLoaded, Captioned, Recaptioned))


def load_summary(loads: list[tuple[str, float, int, str]]) -> dict[str, Any]:
    """Distinct ``(load_id, seconds, pid, host)`` tuples -> model_loads, load seconds, captioning
    processes."""
    by_id = {load_id: seconds for load_id, seconds, _, _ in loads}
    return {
        "model_loads": len(by_id),
        "model_load_seconds": round(sum(by_id.values()), 2),
        "worker_processes": len({(host, pid) for _, _, pid, host in loads}),
    }


def _error_rows(element: Any) -> Iterator[dict[str, Any]]:
    if isinstance(element, Failed):
        yield element.row


def split(outcomes: Any, label: str) -> tuple[Any, Any]:
    """(main elements, error rows) of a DoFn's single output, by two single-output steps."""
    return (outcomes | f"{label}.ok" >> beam.Filter(is_main), outcomes | f"{label}.errors" >> beam.FlatMap(_error_rows))


def skipped_flags(element: Any) -> Iterator[bool]:
    """One item per skipped input: whether only interrupted runs held it."""
    if isinstance(element, Skipped):
        yield element.interrupted


def recaptioned_uris(element: Any) -> Iterator[str]:
    """The URI of each input captioned again because it changed."""
    if isinstance(element, Recaptioned):
        yield element.uri


def process_key(host: str, pid: int) -> str:
    """How the summary names a worker process: ``host:pid``."""
    return f"{host}:{pid}"


def worker_reports(element: Any) -> Iterator[tuple[str, Any]]:
    """The captioning processes' reports, tagged for ``RunStatsFn``: ``("load", (load_id, seconds,
    pid, host))`` of a ModelLoaded (what ``load_summary`` takes), ``("captioned_by", ("host:pid",
    n))`` of a Captioned."""
    if isinstance(element, ModelLoaded):
        yield "load", (element.load_id, element.seconds, element.pid, element.host)
    elif isinstance(element, Captioned):
        yield "captioned_by", (process_key(element.host, element.pid), element.n)
