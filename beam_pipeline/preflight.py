"""Checks made in the driver before any image is read: where the output may go, and which
earlier outputs a ``--resume`` run builds on."""

from __future__ import annotations

import os
import re

import fsspec

from beam_pipeline.commits import is_committed_name, run_id_of
from model.storage import TEMP_PREFIX, is_local, local_path

_GLOB_CHARS = re.compile(r"[*?\[]")


class PreflightError(ValueError):
    """The run is refused before it starts; the message says why."""


def _normalise(uri: str) -> str:
    if is_local(uri):
        return os.path.realpath(os.path.abspath(local_path(uri))).rstrip("/") or "/"
    return uri.rstrip("/")


def input_root(pattern: str) -> str:
    """The fixed directory part of a glob: ``imgs/**/*.jpg`` -> ``imgs``."""
    match = _GLOB_CHARS.search(pattern)
    fixed = pattern[: match.start()] if match else pattern
    if match or not fixed.endswith("/"):
        fixed = fixed.rsplit("/", 1)[0] if "/" in fixed else "."
    return _normalise(fixed or "/")


def _output_fs(output: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of ``output`` with fresh listings: fsspec reuses one instance per process and
    s3fs/gcsfs cache directory listings in it, so a later run in the same process would otherwise
    miss files an earlier run wrote (and re-caption them on ``--resume``)."""
    fs, path = fsspec.core.url_to_fs(output)
    fs.invalidate_cache()
    return fs, path


def check_output(output: str, inputs: list[str], resume: bool) -> None:
    """Refuse an output that is an input directory or inside one, and an existing non-empty
    output unless ``--resume`` (never silently mix two runs)."""
    out = _normalise(output)
    for pattern in inputs:
        root = input_root(pattern)
        if out == root or out.startswith(root.rstrip("/") + "/"):
            raise PreflightError(
                f"output {output} is inside the input directory {root} (from {pattern}); "
                "choose an output outside the inputs"
            )
    fs, path = _output_fs(output)
    if fs.exists(path):
        if not fs.isdir(path):
            raise PreflightError(f"output {output} exists and is not a directory")
        if fs.ls(path) and not resume:
            raise PreflightError(
                f"output {output} exists and is not empty; use --resume to add to it, or choose a new output directory"
            )


def existing_outputs(output: str) -> list[str]:
    """Committed Parquet files of earlier runs (captions and errors): their images are skipped on
    resume. Temp names (leading ``.`` or ``_``) are not committed files and are left out."""
    fs, path = _output_fs(output)
    files = []
    for sub in ("captions", "errors"):
        files.extend(f for f in fs.glob(f"{path.rstrip('/')}/{sub}/*.parquet") if is_committed_name(f))
    return sorted(f if is_local(output) else fs.unstrip_protocol(f) for f in files)


def remove_stale_temp_dirs(output: str) -> list[str]:
    """Delete what a crashed earlier run left unfinished: Beam's ``beam-temp-*`` write folders
    (runs before incremental commits) and half-written commit temp files (``.tmp-*``)."""
    fs, path = _output_fs(output)
    stale = []
    for sub in ("captions", "errors"):
        stale.extend(fs.glob(f"{path.rstrip('/')}/{sub}/beam-temp-*"))
        stale.extend(fs.glob(f"{path.rstrip('/')}/{sub}/{TEMP_PREFIX}*"))
    for d in stale:
        fs.rm(d, recursive=True)
    return stale


def interrupted_outputs(output: str, done_files: list[str]) -> list[str]:
    """The files among ``done_files`` written by runs that never finished (no
    ``_runs/RUNID/summary.json``): rows an interrupted run committed before it died."""
    fs, path = _output_fs(output)
    finished = {p.rstrip("/").split("/")[-2] for p in fs.glob(f"{path.rstrip('/')}/_runs/*/summary.json")}
    return [f for f in done_files if run_id_of(f) is not None and run_id_of(f) not in finished]


def _model_ids(uri: str) -> set[str]:
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as f:
        return set(pq.read_table(f, columns=["model_id"]).column("model_id").unique().to_pylist())


def check_resume_model(done_files: list[str], model_id: str, threads: int = 16) -> None:
    """Refuse to resume into an output captioned by another model: one output, one model. The
    caption files' ``model_id`` columns are read ``threads`` at a time (object stores: one
    round trip each), holding one set of ids per file."""
    from concurrent.futures import ThreadPoolExecutor

    captions = [uri for uri in done_files if "/captions/" in uri]
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(captions)))) as pool:
        for uri, ids in zip(captions, pool.map(_model_ids, captions)):
            other = ids - {model_id}
            if other:
                raise PreflightError(
                    f"output already holds captions of model {sorted(other)[0]} ({uri}); this run "
                    f"uses model {model_id}. Resume with the same model, or use a new --output"
                )
