"""Tables (Parquet, CSV, TSV, JSONL) read through fsspec: the one table reader of the project
(pipeline manifests and reference captions, training caption tables)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import fsspec


def read_table(uri: str) -> Any:
    """A Parquet/CSV/TSV/JSONL table as a pyarrow Table (read through fsspec)."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    lower = uri.lower()
    with fsspec.open(uri, "rb") as f:
        data = f.read()
    if lower.endswith((".parquet", ".pq")):
        return pq.read_table(io.BytesIO(data))
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        return pajson.read_json(io.BytesIO(data))
    if lower.endswith((".csv", ".tsv")):
        delimiter = "\t" if lower.endswith(".tsv") else ","
        return pacsv.read_csv(io.BytesIO(data), parse_options=pacsv.ParseOptions(delimiter=delimiter))
    raise ValueError(f"unsupported table format for {uri}: use .parquet, .csv, .tsv or .jsonl")


def read_columns(uri: str, columns: Sequence[str], what: str = "table") -> Any:
    """The given columns of a table (a pyarrow Table, in that order); every column must exist,
    else ValueError ``"<what> <uri> has no column(s) [...]; it has [...]"``."""
    table = read_table(uri)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{what} {uri} has no column(s) {missing}; it has {table.column_names}")
    return table.select(list(columns))
