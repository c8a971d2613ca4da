"""Captions as an embedded LanceDB search index (``--search_index URI``; read by ``caption_index``).

The index is a LanceDB database at URI (a local folder, ``s3://``, ``gs://``) holding one table,
``captions``: one row per captioned image (``INDEX_COLUMNS``, plus ``embedding`` when the run has
``--emit_embeddings``), a BM25 full-text index on ``caption`` and, from ``VECTOR_INDEX_MIN_ROWS``
rows on, an IVF-PQ vector index on ``embedding`` (cosine). Below that, vector search is exact
(brute force over every row), which is both correct and fast at that size; IVF-PQ trains 256
centroids per sub-vector and ``ivf_partitions`` partitions on 256 sampled vectors each, and needs
many more rows than that to train them well.

The sync is "make the index agree with the committed Parquet files under OUTPUT", the way the
Iceberg sync is (``beam_pipeline.lake_table``), by OUTPUT's latest-row rule
(``output_files.latest_rows``, over caption *and* error files): keep each URI's latest row when it
is a caption, drop those the index already holds at that time or later, and ``merge_insert`` the
rest keyed on ``image_uri`` (an older index row is replaced); delete the URIs whose latest row is
an error (e.g. an object overwritten by a corrupt file and run again with ``--resume``). So
``--resume`` adds only new images, the index never holds a URI twice nor a caption that is no
longer current, and a crash between the Parquet commits and the sync is repaired by the next run.
lancedb is imported only here and in ``caption_index``, and only when a flag asks.

The pipeline calls ``prepare_index`` and ``sync_output_to_index`` through ``in_child``: in a spawned
process, so lancedb is never loaded in the driver. lancedb's async runtime is not fork-safe (it
warns of a possible deadlock in a forked child), and the driver forks worker processes after the
preflight (and a process may run several pipelines, as the tests do).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from beam_pipeline.output_files import LatestRows, latest_rows, time_keys
from beam_pipeline.preflight import PreflightError, existing_outputs
from beam_pipeline.schemas import EMBEDDING_COLUMN, FLAGS_COLUMN, conform

log = logging.getLogger(__name__)
T = TypeVar("T")

TABLE = "captions"
# Caption-file columns the index keeps (flags is null where the run had no --watchlist).
INDEX_FIELDS = [
    pa.field("image_uri", pa.string(), nullable=False),
    pa.field("image_id", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("score", pa.float64()),
    pa.field("model_id", pa.string()),
    pa.field("image_sha256", pa.string()),
    pa.field("processed_at", pa.timestamp("ms", tz="UTC")),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field(FLAGS_COLUMN, pa.list_(pa.string())),
]
INDEX_COLUMNS = tuple(f.name for f in INDEX_FIELDS)
VECTOR_INDEX_MIN_ROWS = 10_000  # below: exact vector search (see module docstring)
DISTANCE = "cosine"


def in_child(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a freshly spawned process (its exception, e.g. PreflightError, re-raised here)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def index_schema(embedding_dim: int | None) -> pa.Schema:
    """The table's schema; ``embedding`` is a fixed-size float32 vector (what vector search needs)."""
    fields = list(INDEX_FIELDS)
    if embedding_dim:
        fields.append(pa.field(EMBEDDING_COLUMN, pa.list_(pa.float32(), embedding_dim)))
    return pa.schema(fields)


def connect(uri: str) -> Any:
    """The LanceDB database at ``uri`` (PreflightError when lancedb is missing or refuses it)."""
    try:
        import lancedb
    except ImportError as exc:
        raise PreflightError(
            f"--search_index needs lancedb: pip install 'batch-image-captioning[search]' ({exc})"
        ) from exc
    try:
        return lancedb.connect(uri)
    except Exception as exc:  # noqa: BLE001 - a bad URI: refuse before reading images
        raise PreflightError(f"cannot open search index {uri}: {type(exc).__name__}: {exc}") from exc


def open_table(uri: str) -> Any | None:
    """The index's captions table, or None when the database has none yet."""
    db = connect(uri)
    if TABLE not in db.list_tables().tables:
        return None
    return db.open_table(TABLE)


def check_writable(uri: str) -> None:
    """Create ``uri`` (a local folder) and write and delete a probe object in it; refuse
    (PreflightError) when that fails, so an unwritable index stops the run before any image is read."""
    import fsspec

    probe = f"{uri.rstrip('/')}/.write-probe-{uuid.uuid4().hex}"
    try:
        fs, path = fsspec.core.url_to_fs(probe)
        if "file" in fs.protocol:  # object stores have no folders (and makedirs would create a bucket)
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(b"probe")
        fs.rm(path)
    except Exception as exc:  # noqa: BLE001 - any failure means we cannot keep the index there
        raise PreflightError(f"--search_index {uri} is not writable: {type(exc).__name__}: {exc}") from exc


def prepare_index(uri: str, model_id: str, emit_embeddings: bool) -> None:
    """Before a run: refuse an unwritable URI, an index holding rows of another model (one index,
    one model, as with Iceberg) and an index whose embedding column does not match
    ``--emit_embeddings`` (rows would lose their vectors, or the index would be half searchable)."""
    check_writable(uri)
    table = open_table(uri)
    if table is None:
        return
    other = table.search().where(f"model_id != {_sql_string(model_id)}").select(["model_id"]).limit(1).to_arrow()
    if other.num_rows:
        raise PreflightError(
            f"search index {uri} already holds captions of model {other.column('model_id')[0].as_py()}; "
            f"this run uses model {model_id}. Use the same model, or another --search_index"
        )
    has_embedding = EMBEDDING_COLUMN in table.schema.names
    if has_embedding != emit_embeddings:
        raise PreflightError(
            f"search index {uri} was built {'with' if has_embedding else 'without'} "
            f"--emit_embeddings; run {'with' if has_embedding else 'without'} it too, or use "
            "another --search_index"
        )


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def indexed_times(table: Any) -> pa.Table:
    """``image_uri`` and ``processed_at`` key (int64 ms) of every row the index holds (two columns
    read, no vectors)."""
    known = table.search().select(["image_uri", "processed_at"]).limit(None).to_arrow()
    return pa.table(
        {
            "image_uri": known.column("image_uri").combine_chunks().cast(pa.string()),
            "processed_at": time_keys(known.column("processed_at")),
        }
    )


def indexed_times_empty() -> pa.Table:
    """``indexed_times`` of an index that has no table yet."""
    return pa.table({"image_uri": pa.array([], pa.string()), "processed_at": pa.array([], pa.int64())})


def newest_rows(latest: LatestRows, known: pa.Table, schema: pa.Schema) -> pa.Table:
    """The rows whose URI's latest row (``latest``, over captions *and* errors) is a caption, as
    ``schema``, leaving out URIs the index (``known``: ``indexed_times``) already holds at that
    ``processed_at`` or later. A file is read (its needed columns) only when it holds one."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    held = known.rename_columns(["image_uri", "indexed_at"])
    joined = latest.of_kind("captions").join(held, "image_uri", join_type="left outer")
    add = joined.filter(
        pc.or_kleene(
            pc.is_null(joined.column("indexed_at")), pc.less(joined.column("indexed_at"), joined.column("processed_at"))
        )
    )
    parts = []
    for index in sorted(set(add.column("file").to_pylist())):
        rows = np.sort(pc.filter(add.column("row"), pc.equal(add.column("file"), index)).to_numpy())
        with _open(latest.files[index]) as f:
            parquet = pq.ParquetFile(f)
            columns = [c for c in schema.names if c in parquet.schema_arrow.names]
            parts.append(conform(parquet.read(columns=columns).take(pa.array(rows)), schema))
    return pa.concat_tables(parts) if parts else schema.empty_table()


def superseded_by_errors(latest: LatestRows, known: pa.Table) -> list[str]:
    """URIs the index holds whose latest OUTPUT row is an error (an object overwritten by a file
    that cannot be read, and run again): their caption is no longer current."""
    import pyarrow.compute as pc

    uris = known.column("image_uri")
    return pc.filter(uris, pc.is_in(uris, value_set=latest.not_of_kind("captions"))).to_pylist()


DELETE_CHUNK = 1000  # URIs per delete predicate


def delete_uris(table: Any, uris: list[str]) -> None:
    """Remove the index rows of ``uris`` (a predicate of ``DELETE_CHUNK`` URIs at a time)."""
    for start in range(0, len(uris), DELETE_CHUNK):
        chunk = uris[start : start + DELETE_CHUNK]
        table.delete("image_uri IN (" + ", ".join(_sql_string(u) for u in chunk) + ")")


def _open(uri: str) -> Any:
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    return fs.open(path, "rb")


def _embedding_dim(files: list[str]) -> int | None:
    """The length of the first non-null embedding in ``files`` (None when there is none)."""
    import pyarrow.parquet as pq

    for uri in files:
        with _open(uri) as f:
            parquet = pq.ParquetFile(f)
            if EMBEDDING_COLUMN not in parquet.schema_arrow.names:
                continue
            for vector in parquet.read(columns=[EMBEDDING_COLUMN]).column(EMBEDDING_COLUMN).to_pylist():
                if vector is not None:
                    return len(vector)
    return None


def ensure_indexes(table: Any, changed: bool = True) -> dict[str, bool]:
    """Create the full-text index on caption (and the vector index once the table is big enough)
    when missing, and, when rows were ``changed``, fold them into the existing ones (``optimize``).
    Also repairs an index whose sync stopped between writing rows and indexing them."""
    names = {tuple(ix.columns) for ix in table.list_indices()}
    if names and changed:
        table.optimize()  # rows added since into the existing indexes, small fragments merged
    if ("caption",) not in names:
        table.create_fts_index("caption", use_tantivy=False, replace=True)
    vector = (EMBEDDING_COLUMN,) in names
    if not vector and EMBEDDING_COLUMN in table.schema.names and table.count_rows() >= VECTOR_INDEX_MIN_ROWS:
        dim = table.schema.field(EMBEDDING_COLUMN).type.list_size
        table.create_index(
            metric=DISTANCE,
            vector_column_name=EMBEDDING_COLUMN,
            index_type="IVF_PQ",
            num_partitions=ivf_partitions(table.count_rows()),
            num_sub_vectors=_sub_vectors(dim),
        )
        vector = True
    return {"full_text": True, "vector": vector}


def ivf_partitions(rows: int) -> int:
    """sqrt(rows) IVF partitions, but no more than rows / 256: Lance trains each partition's centroid
    on 256 sampled vectors and trains fewer partitions than asked when the rows are too few."""
    return max(1, min(int(math.sqrt(rows)), rows // 256))


def _sub_vectors(dim: int) -> int:
    """PQ sub-vectors: 16 dimensions each where the dimension divides, else 8, 4, 2 or 1."""
    for width in (16, 8, 4, 2, 1):
        if dim % width == 0:
            return dim // width
    return 1


def sync_output_to_index(uri: str, output: str) -> dict[str, Any]:
    """Make the index at ``uri`` agree with OUTPUT's current rows (its latest-row rule, over
    captions and errors): upsert the latest caption row per image_uri that the index does not hold
    yet, delete the URIs whose latest row is an error, then bring its indexes up to date. Returns
    what changed."""
    files = existing_outputs(output)
    latest = latest_rows({kind: [f for f in files if f"/{kind}/" in f] for kind in ("captions", "errors")})
    db = connect(uri)
    table = db.open_table(TABLE) if TABLE in db.list_tables().tables else None
    deleted: list[str] = []
    if table is None:
        schema = index_schema(_embedding_dim([f for f in files if "/captions/" in f]))
        new = newest_rows(latest, indexed_times_empty(), schema)
        if not new.num_rows:
            return {"index": uri, "table": TABLE, "upserted": 0, "deleted": 0, "rows": 0, "indexes": {}}
        table = db.create_table(TABLE, new)
    else:
        known = indexed_times(table)
        new = newest_rows(latest, known, table.schema)
        if new.num_rows:
            table.merge_insert("image_uri").when_matched_update_all(
                where="target.processed_at < source.processed_at"
            ).when_not_matched_insert_all().execute(new)
        deleted = superseded_by_errors(latest, known)
        delete_uris(table, deleted)
    indexes = ensure_indexes(table, changed=bool(new.num_rows or deleted))
    return {
        "index": uri,
        "table": TABLE,
        "upserted": new.num_rows,
        "deleted": len(deleted),
        "rows": table.count_rows(),
        "indexes": indexes,
    }
