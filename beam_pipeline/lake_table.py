"""Captions as an Apache Iceberg table (``--iceberg_table NAMESPACE.TABLE``, ``--iceberg_catalog NAME``).

The commit is "make the table agree with the committed Parquet files under OUTPUT": read the
caption / error Parquet files, keep each URI's latest row (``beam_pipeline.output_files``), drop
every row the table already holds, and append the rest in one ``append`` (= one Iceberg snapshot
per table); rows that replace an older row of the same URI (an input changed and was captioned
again) go in one ``overwrite`` snapshot with the removal of the old row (``lake_upsert``, in
bounded memory: it works a bucket of URIs at a time, spilled to local disk). So
``--resume`` adds only new rows, a table never holds two rows for one image, and a crash between
writing the files and committing the snapshot is repaired by the next run (it finds the rows
missing and adds them).
``sync_output_to_table`` can be called after every commit interval as well as at the end.

The catalog's settings come only from pyiceberg's own configuration (``~/.pyiceberg.yaml`` or
``PYICEBERG_CATALOG__NAME__*`` environment variables), so REST, Glue, Hive and SQL catalogs work
without flags of ours. pyiceberg is imported only here and in ``lake_commit``, and only when a flag asks.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from beam_pipeline.lake_upsert import ROWS_PER_BUCKET, sync_tables
from beam_pipeline.library_versions import warn_if_untested
from beam_pipeline.preflight import PreflightError, existing_outputs
from beam_pipeline.schemas import ERROR_SCHEMA, caption_schema

log = logging.getLogger(__name__)
ERRORS_SUFFIX = "_errors"
# Runs append by time and readers ask "what is new since X": a day partition of processed_at
# prunes those scans, keeps files few (one partition per day, not per run) and never changes
# for a row. model_id is constant per table and image_uri would make one file per image.
PARTITION_SOURCE, PARTITION_NAME = "processed_at", "processed_day"


def table_names(table: str) -> tuple[str, str]:
    """``NAMESPACE.TABLE`` -> (captions table, errors table) identifiers; refuses other shapes."""
    namespace, _, name = table.rpartition(".")
    if not namespace or not name or any(not part for part in namespace.split(".")):
        raise PreflightError(f"--iceberg_table {table!r}: give NAMESPACE.TABLE, e.g. lake.captions")
    return table, table + ERRORS_SUFFIX


def open_catalog(name: str) -> Any:
    """The pyiceberg catalog ``name``, configured by ``~/.pyiceberg.yaml`` or
    ``PYICEBERG_CATALOG__NAME__*`` variables, read now (pyiceberg reads them once at import)."""
    try:
        from pyiceberg.catalog import load_catalog
        from pyiceberg.utils.config import Config
    except ImportError as exc:
        raise PreflightError(
            f"--iceberg_table needs pyiceberg: pip install 'batch-image-captioning[iceberg]' ({exc})"
        ) from exc
    properties = Config().get_catalog_config(name)
    if not properties:
        raise PreflightError(
            f"no pyiceberg catalog named {name!r}: configure it in ~/.pyiceberg.yaml or with "
            f"PYICEBERG_CATALOG__{name.upper()}__* environment variables (--iceberg_catalog)"
        )
    try:
        return load_catalog(name, **properties)
    except Exception as exc:  # noqa: BLE001 - a bad URI / missing driver: refuse before reading images
        raise PreflightError(f"cannot open pyiceberg catalog {name!r}: {type(exc).__name__}: {exc}") from exc


def check_table_model(catalog: Any, table: str, model_id: str) -> None:
    """Refuse a captions table that holds rows of another model: one table, one model."""
    from pyiceberg.expressions import NotEqualTo

    captions, _ = table_names(table)
    if not catalog.table_exists(captions):
        return
    other = (
        catalog.load_table(captions)
        .scan(row_filter=NotEqualTo("model_id", model_id), selected_fields=("model_id",), limit=1)
        .to_arrow()
    )
    if other.num_rows:
        raise PreflightError(
            f"Iceberg table {captions} already holds captions of model "
            f"{other.column('model_id')[0].as_py()}; this run uses model {model_id}. "
            "Use the same model, or another --iceberg_table"
        )


def _open_or_create(catalog: Any, identifier: str, schema: pa.Schema, partition: bool) -> Any:
    """The table, created with ``schema`` (and the day partition) on first use; columns of
    ``schema`` it lacks (e.g. ``embedding`` on a table made without --emit_embeddings) are added."""
    from pyiceberg.transforms import DayTransform

    namespace = identifier.rpartition(".")[0]
    catalog.create_namespace_if_not_exists(namespace)
    if not catalog.table_exists(identifier):
        with catalog.create_table_transaction(identifier, schema=schema) as tx:
            if partition:
                with tx.update_spec() as spec:
                    spec.add_field(PARTITION_SOURCE, DayTransform(), PARTITION_NAME)
        log.info("created Iceberg table %s", identifier)
    table = catalog.load_table(identifier)
    have = {f.name for f in table.schema().fields}
    missing = [f.name for f in schema if f.name not in have]
    if missing:
        with table.update_schema() as update:
            update.union_by_name(schema)
        log.info("Iceberg table %s: added column(s) %s", identifier, missing)
        table = catalog.load_table(identifier)
    return table


def sync_output_to_table(
    catalog_name: str,
    table: str,
    output: str,
    emit_embeddings: bool,
    flags: bool = False,
    rows_per_bucket: int = ROWS_PER_BUCKET,
) -> dict[str, Any]:
    """Make ``table`` and ``table``_errors agree with OUTPUT/captions and OUTPUT/errors: each URI's
    latest row, one row per URI, in one snapshot per table that changes (``lake_upsert``, whose
    memory does not grow with the number of rows: ``rows_per_bucket``). Returns per table what
    was appended and replaced, and its current snapshot."""
    catalog = open_catalog(catalog_name)
    captions_id, errors_id = table_names(table)
    identifiers = {"captions": captions_id, "errors": errors_id}
    schemas = {"captions": caption_schema(emit_embeddings, flags), "errors": ERROR_SCHEMA}
    tables = {kind: _open_or_create(catalog, identifiers[kind], schemas[kind], partition=True) for kind in identifiers}
    files = existing_outputs(output)
    by_kind = {kind: [f for f in files if f"/{kind}/" in f] for kind in ("captions", "errors")}
    counts = sync_tables(tables, by_kind, rows_per_bucket)  # OUTPUT's rule: the latest row of a URI wins
    summary = {}
    for kind, identifier in identifiers.items():
        snapshot = catalog.load_table(identifier).current_snapshot()
        # appended: rows written (new URIs and replacements); replaced: URIs whose earlier row was dropped
        summary[kind] = {
            "table": identifier,
            **counts[kind],
            "snapshot_id": snapshot.snapshot_id if snapshot else None,
        }
    return summary


def prepare_table(
    catalog_name: str, table: str, model_id: str, known_columns: list[str] | None = None, export_dir: str | None = None
) -> list[str]:
    """Before a run: open the catalog and refuse a table of another model (PreflightError); with
    ``known_columns`` (--skip_known_content) export the table's known captions of this model to a
    Parquet file under ``export_dir`` for the workers to read, and return its URI ([] if none)."""
    table_names(table)
    catalog = open_catalog(catalog_name)
    warn_if_untested("pyiceberg")  # lake_commit writes snapshots through pyiceberg internals
    check_table_model(catalog, table, model_id)
    if not known_columns or export_dir is None:
        return []
    return export_known_content(catalog, table, model_id, known_columns, export_dir)


def export_known_content(catalog: Any, table: str, model_id: str, columns: list[str], export_dir: str) -> list[str]:
    """Write ``columns`` of the table's caption rows of ``model_id`` that have an image_sha256 to
    ``export_dir/known_content.parquet``, a record batch at a time (the driver never holds the
    table: the pipeline reads the file on the workers, who keep rows with every column set).
    Returns [] when the table is missing, lacks a column or has no such row."""
    import fsspec
    import pyarrow.parquet as pq
    from pyiceberg.expressions import And, EqualTo, NotNull

    captions, _ = table_names(table)
    if not catalog.table_exists(captions):
        return []
    lake = catalog.load_table(captions)
    if not set(columns) <= {f.name for f in lake.schema().fields}:
        return []
    batches = lake.scan(
        row_filter=And(EqualTo("model_id", model_id), NotNull("image_sha256")), selected_fields=tuple(columns)
    ).to_arrow_batch_reader()
    uri = export_dir.rstrip("/") + "/known_content.parquet"
    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    rows = 0
    with fs.open(path, "wb") as f, pq.ParquetWriter(f, batches.schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return [uri] if rows else []
