"""The Iceberg sync in bounded memory (beam_pipeline.lake_upsert): buckets of URIs spilled to
local disk (beam_pipeline.spill, tested alone in test_spill.py), planned one at a time, committed
as ONE snapshot per table.

The sync runs against pyiceberg's SQL catalog on a SQLite file in a temp folder, with a tiny
``rows_per_bucket`` so that 20-odd URIs spread over many buckets, many groups of files and many
small data files. Its result is checked against the
latest-row rule written out row by row here (``_expected``), and against the same sync done with
one bucket.
"""

from __future__ import annotations

import datetime as dt
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("pyiceberg", reason="Iceberg tests need pyiceberg (pip install -e '.[test]')")

from beam_pipeline.records import error_row
from beam_pipeline.schemas import ERROR_SCHEMA, caption_schema
from tests.factories import timed_caption_row

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(hours=1)


def _error(uri: str, when: dt.datetime, message: str) -> dict:
    return error_row(uri, uri, "decode", "TruncatedImage", message) | {"processed_at": when}


def _write(out, kind: str, name: str, rows: list[dict]) -> None:
    folder = out / kind
    folder.mkdir(parents=True, exist_ok=True)
    schema = caption_schema() if kind == "captions" else ERROR_SCHEMA
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"{name}.parquet")


def _expected(out) -> dict[str, dict[str, tuple]]:
    """OUTPUT's latest-row rule written out row by row: per kind, uri -> (processed_at, text)."""
    best: dict[str, tuple] = {}
    for rank, kind in enumerate(("captions", "errors")):
        for order, path in enumerate(sorted((out / kind).glob("*.parquet"))):
            for row_index, row in enumerate(pq.read_table(path).to_pylist()):
                when = row["processed_at"]
                key = (-(when.timestamp() if when else -1e18), rank, order, row_index)
                if row["image_uri"] not in best or key < best[row["image_uri"]][0]:
                    text = row["caption"] if kind == "captions" else row["message"]
                    best[row["image_uri"]] = (key, kind, when, text)
    result: dict[str, dict[str, tuple]] = {"captions": {}, "errors": {}}
    for uri, (_, kind, when, text) in best.items():
        result[kind][uri] = (when, text)
    return result


def _held(catalog, identifier: str) -> dict[str, tuple]:
    rows = catalog.load_table(identifier).scan().to_arrow().to_pylist()
    column = "caption" if "caption" in rows[0] else "message"
    uris = [r["image_uri"] for r in rows]
    assert len(uris) == len(set(uris)), f"{identifier} holds a URI twice"
    return {r["image_uri"]: (r["processed_at"], r[column]) for r in rows}


@pytest.fixture()
def catalogs(tmp_path, monkeypatch):
    """Two SQL catalogs in the temp folder: one synced with 3 rows per bucket, one with 1,000."""
    for name in ("tiny", "whole"):
        prefix = f"PYICEBERG_CATALOG__{name.upper()}__"
        monkeypatch.setenv(prefix + "TYPE", "sql")
        monkeypatch.setenv(prefix + "URI", f"sqlite:///{tmp_path}/catalog-{name}.db")
        monkeypatch.setenv(prefix + "WAREHOUSE", f"file://{tmp_path}/warehouse-{name}")
    return {"tiny": 3, "whole": 1000}


def _sync(out, catalogs) -> dict:
    from beam_pipeline.lake_table import open_catalog, sync_output_to_table

    results = {}
    for name, rows_per_bucket in catalogs.items():
        catalog = open_catalog(name)
        before = {
            kind: len(catalog.load_table(t).snapshots()) if catalog.table_exists(t) else 0
            for kind, t in (("captions", "lake.captions"), ("errors", "lake.captions_errors"))
        }
        result = sync_output_to_table(name, "lake.captions", str(out), False, rows_per_bucket=rows_per_bucket)
        for kind, t in (("captions", "lake.captions"), ("errors", "lake.captions_errors")):
            added = len(catalog.load_table(t).snapshots()) - before[kind]
            changed = result[kind]["appended"] or result[kind]["replaced"]
            assert added == (1 if changed else 0), f"{name} {kind}: {added} snapshots for one sync"
        held = {"captions": _held(catalog, "lake.captions"), "errors": _held(catalog, "lake.captions_errors")}
        assert held == _expected(out), name
        results[name] = (result, catalog)
    tiny, whole = results["tiny"][0], results["whole"][0]
    for kind in ("captions", "errors"):
        assert (tiny[kind]["appended"], tiny[kind]["replaced"]) == (whole[kind]["appended"], whole[kind]["replaced"])
    return {name: (result, catalog) for name, (result, catalog) in results.items()}


def test_tiny_buckets_keep_one_latest_row_per_uri_in_one_snapshot_per_table(tmp_path, catalogs):
    out = tmp_path / "out"
    uris = [f"/lake/p{i:02d}.jpg" for i in range(20)]
    _write(out, "captions", "part-1", [timed_caption_row(u, T0, f"first {u}") for u in uris[:9]])
    _write(out, "captions", "part-2", [timed_caption_row(u, T0, f"first {u}") for u in uris[9:]])
    _write(out, "errors", "part-1", [_error("/lake/x1.jpg", T0, "broken x1"), _error("/lake/x2.jpg", T0, "broken x2")])
    first = _sync(out, catalogs)
    result, catalog = first["tiny"]
    assert (result["captions"]["appended"], result["captions"]["replaced"]) == (20, 0)
    assert (result["errors"]["appended"], result["errors"]["replaced"]) == (2, 0)
    assert len(list(catalog.load_table("lake.captions").scan().plan_files())) > 3  # written 3 rows at a time

    # Second night: p00..p04 captioned again (newer), p05 and p06 became unreadable (caption ->
    # error), x1 became readable (error -> caption), p07 got an error row at the same time as its
    # caption (a tie: the caption stays), p08 a second caption at the same time in a later file (a
    # tie: the earlier file's stays), p09 an older caption (ignored) and a new URI p20.
    _write(out, "captions", "part-3", [timed_caption_row(u, T1, f"second {u}") for u in uris[:5]])
    _write(
        out,
        "captions",
        "part-4",
        [
            timed_caption_row("/lake/x1.jpg", T1, "x1 readable now"),
            timed_caption_row(uris[8], T0, "a tie, later file"),
            timed_caption_row(uris[9], T0 - dt.timedelta(days=1), "older"),
            timed_caption_row("/lake/p20.jpg", T1, "new p20"),
        ],
    )
    _write(
        out,
        "errors",
        "part-2",
        [_error(uris[5], T1, "now broken"), _error(uris[6], T1, "now broken"), _error(uris[7], T0, "a tie")],
    )
    second = _sync(out, catalogs)
    result, catalog = second["tiny"]
    # captions: 5 replaced rows, x1 and p20 new; p05, p06 left for the errors table
    assert (result["captions"]["appended"], result["captions"]["replaced"]) == (7, 7)
    # errors: p05, p06 new; x1 left for the captions table
    assert (result["errors"]["appended"], result["errors"]["replaced"]) == (2, 1)
    captions = _held(catalog, "lake.captions")
    assert captions[uris[0]][1] == f"second {uris[0]}" and captions[uris[8]][1] == f"first {uris[8]}"
    assert captions[uris[7]][1] == f"first {uris[7]}" and uris[5] not in captions and "/lake/x1.jpg" in captions
    assert len(captions) == 20 - 2 + 2

    third = _sync(out, catalogs)  # nothing new: no snapshot (checked in _sync)
    assert all(
        third["tiny"][0][kind]["appended"] == third["tiny"][0][kind]["replaced"] == 0 for kind in ("captions", "errors")
    )


def test_a_damaged_output_file_commits_nothing_and_leaves_no_spill(tmp_path, catalogs):
    """The sync fails before any snapshot when an OUTPUT file cannot be read; its spill folder is
    removed whether it succeeds or not."""
    from beam_pipeline.lake_table import open_catalog
    from beam_pipeline.lake_upsert import sync_tables

    out = tmp_path / "out"
    _write(out, "captions", "part-1", [timed_caption_row(f"/lake/q{i}.jpg", T0, "a caption") for i in range(7)])
    _write(out, "errors", "part-1", [_error("/lake/bad.jpg", T0, "broken")])
    _sync(out, catalogs)
    catalog = open_catalog("tiny")
    identifiers = {"captions": "lake.captions", "errors": "lake.captions_errors"}
    tables = {kind: catalog.load_table(identifier) for kind, identifier in identifiers.items()}
    snapshots = {kind: len(table.snapshots()) for kind, table in tables.items()}
    spill = tmp_path / "spill"
    spill.mkdir()
    _write(out, "captions", "part-2", [timed_caption_row("/lake/q0.jpg", T1, "newer")])
    (out / "captions" / "part-3.parquet").write_bytes(b"not parquet")
    files = {kind: sorted(str(f) for f in (out / kind).glob("*.parquet")) for kind in ("captions", "errors")}
    with pytest.raises(pa.ArrowInvalid):
        sync_tables(tables, files, rows_per_bucket=2, workdir=str(spill))
    assert {kind: len(catalog.load_table(identifiers[kind]).snapshots()) for kind in tables} == snapshots
    assert os.listdir(spill) == []
    files["captions"].remove(str(out / "captions" / "part-3.parquet"))
    counts = sync_tables(tables, files, rows_per_bucket=2, workdir=str(spill))
    assert counts == {"captions": {"appended": 1, "replaced": 1}, "errors": {"appended": 0, "replaced": 0}}
    assert _held(catalog, "lake.captions")["/lake/q0.jpg"][1] == "newer" and os.listdir(spill) == []
