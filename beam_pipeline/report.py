"""Caption gallery: one self-contained HTML page to look at the output of a captioning run.

``python -m beam_pipeline.report OUT_DIR [--sample N] [--seed S] [--output PATH]`` reads
``OUT_DIR/summary.json``, ``OUT_DIR/captions/*.parquet`` and ``OUT_DIR/errors/*.parquet`` (any
fsspec URL) and writes ``OUT_DIR/report.html``: the run summary, a grid of sampled images with
their captions and scores (least confident first), and the error rows.

The page works offline and loads nothing: thumbnails are embedded as base64 JPEG ``data:`` URIs,
CSS and the small sort/filter script are inline, and a Content-Security-Policy ``<meta>`` blocks
every network fetch and every script but ours (by hash). Captions, references, URIs and error
messages are untrusted data and always go through :func:`html.escape`.

Memory stays bounded on big runs: only the needed columns are read (never the embedding), caption
rows stream through a bottom-k sample (the ``sample`` rows with the smallest seeded hash of their
``image_uri``, so the choice does not depend on file or batch order), and at most ``max_errors``
error rows are kept. Thumbnail bytes are fetched a few at a time by threads and decoded one by one
with :func:`model.image_loading.decode_image` (same size/bomb/EXIF handling as the
pipeline).

The pieces are pure functions, testable without a browser: :func:`load_summary`,
:func:`load_captions`, :func:`load_errors`, :func:`bottom_k_keys`, :func:`make_thumbnail`,
:func:`render_html`; :func:`write_report` glues them together.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import html
import io
import json
import logging
import math
import posixpath
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from model import storage
from model.image_loading import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_image
from beam_pipeline.schemas import CAPTION_FIELDS, ERROR_FIELDS

log = logging.getLogger(__name__)

DEFAULT_SAMPLE = 500
DEFAULT_MAX_ERRORS = 1000
DEFAULT_THUMBNAIL_PX = 160
REPORT_NAME = "report.html"

_BATCH_ROWS = 8192
_FETCH_WORKERS = 8  # concurrent thumbnail reads (object stores are latency bound)
_MAX_TEXT = 2000  # longest caption / reference / message shown, in characters
_MAX_REFERENCES = 20
_EXIF_ORIENTATION_TAG = 0x0112

# Only what the page shows: never the (possibly huge) embedding column.
CAPTION_COLUMNS = ("image_uri", "image_id", "caption", "score", "decode", "model_id",
                   "width", "height", "references", "bleu4")
ERROR_COLUMNS = ("image_uri", "image_id", "stage", "error_type", "message", "processed_at")
_CAPTION_TYPES = {f.name: f.type for f in CAPTION_FIELDS}
_ERROR_TYPES = {f.name: f.type for f in ERROR_FIELDS}


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class CaptionRow:
    """One caption row as shown in the gallery."""

    image_uri: str
    image_id: str
    caption: str
    score: float  # mean token log-probability (<= 0); NaN when missing
    decode: str = ""
    model_id: str = ""
    width: int | None = None
    height: int | None = None
    references: tuple[str, ...] | None = None
    bleu4: float | None = None


@dataclass(frozen=True)
class ErrorRow:
    """One error row as shown in the error table."""

    image_uri: str
    image_id: str | None
    stage: str
    error_type: str
    message: str
    processed_at: datetime | None = None


@dataclass
class CaptionSample:
    """Sampled caption rows (least confident first) and the total number of rows read."""

    rows: list[CaptionRow]
    total: int
    unreadable: list[str] = field(default_factory=list)  # "path: reason" per skipped file


@dataclass
class ErrorRows:
    """The first ``max_errors`` error rows, the total, and counts over all rows."""

    rows: list[ErrorRow]
    total: int
    by_type: Counter = field(default_factory=Counter)  # (stage, error_type) -> count
    unreadable: list[str] = field(default_factory=list)


@dataclass
class ReportData:
    """Everything :func:`render_html` needs; ``thumbnails`` is parallel to ``captions.rows``."""

    summary: Mapping[str, Any]
    captions: CaptionSample
    errors: ErrorRows
    thumbnails: Sequence[str | None]
    out_dir: str = ""
    sample: int = DEFAULT_SAMPLE
    seed: int = 0
    generated_at: str = ""
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- loading


def list_parquet_files(directory: str) -> list[str]:
    """Sorted fsspec URLs of the ``*.parquet`` files under ``directory`` (recursively), skipping
    hidden/temporary entries (names starting with '.' or '_'); [] when the directory is missing."""
    fs, root = fsspec.core.url_to_fs(directory)
    try:
        if not fs.isdir(root):
            return []
        found = fs.find(root)
    except (FileNotFoundError, NotADirectoryError):
        return []
    root = root.rstrip("/")
    keep = []
    for path in found:
        rel = path[len(root):].lstrip("/") if path.startswith(root) else posixpath.basename(path)
        if not rel.endswith(".parquet"):
            continue
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        keep.append(fs.unstrip_protocol(path))
    return sorted(keep)


def load_summary(out_dir: str) -> tuple[dict[str, Any], str | None]:
    """``OUT_DIR/summary.json`` as a dict ({} if missing) and a note when it is absent or bad."""
    uri = storage.join(out_dir, "summary.json")
    try:
        with fsspec.open(uri, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return {}, "no summary.json in the output directory: counts below come from the Parquet files"
    except (ValueError, UnicodeDecodeError) as exc:
        return {}, f"summary.json could not be parsed ({type(exc).__name__}: {exc})"
    if not isinstance(data, dict):
        return {}, f"summary.json is a JSON {type(data).__name__}, not an object"
    return data, None


def _iter_batches(paths: Sequence[str], columns: Sequence[str], types: Mapping[str, pa.DataType],
                  unreadable: list[str]) -> Iterator[pa.RecordBatch]:
    """Record batches with exactly ``columns`` (cast to ``types``; absent columns become nulls,
    so files of older runs still load). A file that cannot be read is noted and skipped."""
    schema = pa.schema([pa.field(c, types[c]) for c in columns])
    for path in paths:
        fs, fpath = fsspec.core.url_to_fs(path)
        try:
            with fs.open(fpath, "rb") as f:
                pf = pq.ParquetFile(f)
                present = [c for c in columns if c in pf.schema_arrow.names]
                for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=present):
                    n = batch.num_rows
                    arrays = []
                    for name in columns:
                        if name in present:
                            col = batch.column(batch.schema.get_field_index(name))
                            arrays.append(col if col.type == types[name] else col.cast(types[name]))
                        else:
                            arrays.append(pa.nulls(n, types[name]))
                    yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        except Exception as exc:  # noqa: BLE001 - a damaged file must not lose the whole report
            log.warning("skipping unreadable parquet file %s: %s", path, exc)
            unreadable.append(f"{path}: {type(exc).__name__}: {exc}")


def bottom_k_keys(image_uris: Sequence[str | None], seed: int) -> np.ndarray:
    """Seeded 64-bit hash of each image_uri (uint64): the sample is the rows with the smallest keys,
    so it is deterministic, independent of file/batch order, and stable when runs are added."""
    salt = int(seed).to_bytes(8, "little", signed=True)
    keys = np.empty(len(image_uris), dtype=np.uint64)
    for i, uri in enumerate(image_uris):
        digest = hashlib.blake2b((uri or "").encode("utf-8", "surrogatepass"), digest_size=8,
                                 salt=salt + b"\0" * 8)
        keys[i] = int.from_bytes(digest.digest(), "little")
    return keys


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _score_sort_key(row: CaptionRow) -> tuple[float, str]:
    score = row.score
    return (-math.inf if score is None or math.isnan(score) else score, row.image_uri)


def _to_caption_row(d: Mapping[str, Any]) -> CaptionRow:
    refs = d.get("references")
    score = d.get("score")
    return CaptionRow(
        image_uri=_text(d.get("image_uri")),
        image_id=_text(d.get("image_id")),
        caption=_text(d.get("caption")),
        score=float("nan") if score is None else float(score),
        decode=_text(d.get("decode")),
        model_id=_text(d.get("model_id")),
        width=d.get("width"),
        height=d.get("height"),
        references=None if refs is None else tuple(_text(r) for r in refs),
        bleu4=d.get("bleu4"),
    )


def load_captions(out_dir: str, *, sample: int = DEFAULT_SAMPLE, seed: int = 0) -> CaptionSample:
    """Stream ``OUT_DIR/captions`` and keep a deterministic sample of ``sample`` rows (all rows when
    there are fewer), returned least confident first. Memory: O(sample + one record batch)."""
    if sample < 0:
        raise ValueError(f"sample must be >= 0, got {sample}")
    unreadable: list[str] = []
    paths = list_parquet_files(storage.join(out_dir, "captions"))
    kept: pa.Table | None = None
    kept_keys = np.empty(0, dtype=np.uint64)
    total = 0
    for batch in _iter_batches(paths, CAPTION_COLUMNS, _CAPTION_TYPES, unreadable):
        total += batch.num_rows
        if sample == 0 or batch.num_rows == 0:
            continue
        keys = bottom_k_keys(batch.column(0).to_pylist(), seed)
        candidates = pa.Table.from_batches([batch])
        if len(kept_keys) >= sample:  # full: only rows beating the current worst can enter
            better = keys < kept_keys.max()
            if not better.any():
                continue
            candidates = candidates.filter(pa.array(better))
            keys = keys[better]
        merged_keys = np.concatenate([kept_keys, keys])
        merged = candidates if kept is None else pa.concat_tables([kept, candidates])
        if len(merged_keys) > sample:
            # stable order on equal keys (duplicate URIs): earlier files win
            order = np.argsort(merged_keys, kind="stable")[:sample]
            merged = merged.take(pa.array(order))
            merged_keys = merged_keys[order]
        kept, kept_keys = merged.combine_chunks(), merged_keys
    rows = [] if kept is None else [_to_caption_row(d) for d in kept.to_pylist()]
    rows.sort(key=_score_sort_key)
    return CaptionSample(rows=rows, total=total, unreadable=unreadable)


def load_errors(out_dir: str, *, max_errors: int = DEFAULT_MAX_ERRORS) -> ErrorRows:
    """All error rows up to ``max_errors`` (in file order), plus the total and per-(stage,
    error_type) counts over every row."""
    if max_errors < 0:
        raise ValueError(f"max_errors must be >= 0, got {max_errors}")
    unreadable: list[str] = []
    paths = list_parquet_files(storage.join(out_dir, "errors"))
    rows: list[ErrorRow] = []
    by_type: Counter = Counter()
    total = 0
    for batch in _iter_batches(paths, ERROR_COLUMNS, _ERROR_TYPES, unreadable):
        total += batch.num_rows
        stages = batch.column(2).to_pylist()
        types = batch.column(3).to_pylist()
        by_type.update(zip((_text(s) for s in stages), (_text(t) for t in types)))
        room = max_errors - len(rows)
        if room > 0:
            for d in batch.slice(0, room).to_pylist():
                rows.append(ErrorRow(
                    image_uri=_text(d["image_uri"]), image_id=d["image_id"], stage=_text(d["stage"]),
                    error_type=_text(d["error_type"]), message=_text(d["message"]),
                    processed_at=d["processed_at"],
                ))
    return ErrorRows(rows=rows, total=total, by_type=by_type, unreadable=unreadable)


# --------------------------------------------------------------------------- thumbnails


def _fit(width: int, height: int, px: int) -> tuple[int, int]:
    """(width, height) scaled to fit in a px-by-px box, never enlarged, at least 1x1."""
    scale = min(1.0, px / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _upright_size(data: bytes) -> tuple[int, int] | None:
    """Displayed (width, height) from the image header (EXIF rotation applied), or None."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            try:
                orientation = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
            except Exception:  # noqa: BLE001 - bad EXIF: keep the stored orientation
                orientation = 1
    except Exception:  # noqa: BLE001 - decode_image will classify the failure
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def thumbnail_from_bytes(data: bytes, px: int = DEFAULT_THUMBNAIL_PX, *,
                         max_bytes: int = DEFAULT_MAX_BYTES,
                         max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """A ``data:image/jpeg;base64,...`` URI of ``data`` shrunk to fit ``px`` (upright, RGB).
    Raises :class:`~model.image_loading.ImageDecodeError` on bad bytes."""
    if px <= 0:
        raise ValueError(f"thumbnail size must be positive, got {px}")
    size = _upright_size(data)
    width, height = _fit(*size, px) if size else (px, px)
    decoded = decode_image(data, (height, width), max_bytes=max_bytes, max_pixels=max_pixels)
    out = io.BytesIO()
    Image.fromarray(decoded.pixels).save(out, "JPEG", quality=82, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def read_image_bytes(uri: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Bytes of ``uri`` via fsspec; reads at most ``max_bytes + 1`` so a huge file is not slurped
    (decode_image then rejects it as too large)."""
    with fsspec.open(uri, "rb") as f:
        return f.read(max_bytes + 1)


def make_thumbnail(uri: str, px: int = DEFAULT_THUMBNAIL_PX, *,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> str | None:
    """Thumbnail data URI of the image at ``uri``, or None when it cannot be read or decoded."""
    try:
        return thumbnail_from_bytes(read_image_bytes(uri, max_bytes), px, max_bytes=max_bytes)
    except Exception as exc:  # noqa: BLE001 - a missing image becomes a placeholder
        log.info("no thumbnail for %s: %s", uri, exc)
        return None


def make_thumbnails(uris: Sequence[str], px: int = DEFAULT_THUMBNAIL_PX, *,
                    workers: int = _FETCH_WORKERS,
                    max_bytes: int = DEFAULT_MAX_BYTES) -> list[str | None]:
    """Thumbnails for ``uris`` (None where unavailable). Reads run ``workers`` at a time in threads;
    decoding stays on this thread (decode_image's warning filters are not thread-safe) and at most
    ``workers`` images' bytes are held at once."""

    def fetch(uri: str) -> bytes | Exception:
        try:
            return read_image_bytes(uri, max_bytes)
        except Exception as exc:  # noqa: BLE001
            return exc

    out: list[str | None] = []
    workers = max(1, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(uris), workers):
            chunk = uris[start:start + workers]
            for uri, data in zip(chunk, pool.map(fetch, chunk)):
                if isinstance(data, Exception):
                    log.info("no thumbnail for %s: %s", uri, data)
                    out.append(None)
                    continue
                try:
                    out.append(thumbnail_from_bytes(data, px, max_bytes=max_bytes))
                except Exception as exc:  # noqa: BLE001
                    log.info("no thumbnail for %s: %s", uri, exc)
                    out.append(None)
    return out


# --------------------------------------------------------------------------- rendering

_CSS = """
:root{--bg:#f6f7f9;--fg:#1d2330;--muted:#5d6677;--card:#fff;--line:#dde1e8;--accent:#2457c5;
--low:#b42318;--lowbg:#fde8e7;--mid:#8a5a00;--midbg:#fff3d6;--high:#146c2e;--highbg:#e3f5e8}
@media (prefers-color-scheme:dark){:root{--bg:#14171c;--fg:#e6e9ef;--muted:#9aa3b2;--card:#1d2128;
--line:#323844;--accent:#8ab4ff;--low:#ffb4ab;--lowbg:#4a1c18;--mid:#ffd47a;--midbg:#3d3012;
--high:#9be2ad;--highbg:#173823}}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
background:var(--bg);color:var(--fg)}
main{max-width:1400px;margin:0 auto;padding:20px 24px 48px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:24px 0 8px}
.muted,.sub{color:var(--muted)}.sub{margin:0 0 16px}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px;
overflow-wrap:anywhere}
.notes{background:var(--midbg);color:var(--mid);border-radius:6px;padding:8px 12px;margin:12px 0}
.notes p{margin:2px 0}
.stats{display:grid;grid-template-columns:repeat(auto-fill,minmax(118px,1fr));gap:10px;margin:8px 0 12px}
.stat{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.stat .v{font-size:22px;font-weight:600;font-variant-numeric:tabular-nums}
.stat .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.stat.bad .v{color:var(--low)}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:8px 0;
background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px}
dl.meta dt{color:var(--muted)}dl.meta dd{margin:0;overflow-wrap:anywhere}
dl.meta ul{margin:0;padding-left:18px}
table{border-collapse:collapse;width:100%;background:var(--card);border:1px solid var(--line)}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
td.etype code{white-space:nowrap;overflow-wrap:normal}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
table.bleu{width:auto}
#controls{display:flex;flex-wrap:wrap;gap:12px 18px;align-items:center;background:var(--card);
border:1px solid var(--line);border-radius:8px;padding:8px 12px;margin:8px 0 14px}
#controls label{display:flex;gap:6px;align-items:center}
#controls input{width:90px}
#controls input,#controls select,#controls button{font:inherit;padding:3px 6px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(calc(var(--thumb,160px) + 60px),1fr));gap:14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;overflow:hidden;
display:flex;flex-direction:column}
.thumb{display:flex;align-items:center;justify-content:center;height:var(--thumb,160px);
background:#0001;overflow:hidden}
.thumb img{max-width:100%;max-height:100%;display:block}
.thumb.missing{flex-direction:column;color:var(--muted);font-size:12px;text-align:center;
background:repeating-linear-gradient(45deg,#0000 0 8px,#8881 8px 16px);border-bottom:1px dashed var(--line)}
.thumb.missing .x{font-size:28px;line-height:1}
.body{padding:8px 10px 10px;display:flex;flex-direction:column;gap:6px;flex:1}
.caption{font-size:14.5px;margin:0;overflow-wrap:anywhere}
.scoreline{display:flex;gap:8px;align-items:center;flex-wrap:wrap;font-size:12.5px}
.badge{border-radius:999px;padding:1px 8px;font-weight:600;font-variant-numeric:tabular-nums}
.badge.low{background:var(--lowbg);color:var(--low)}
.badge.mid{background:var(--midbg);color:var(--mid)}
.badge.high{background:var(--highbg);color:var(--high)}
.uri{color:var(--muted);font-size:11.5px;word-break:break-all;margin-top:auto;padding-top:2px}
details.refs summary{cursor:pointer;color:var(--accent);font-size:12.5px}
details.refs ol{margin:4px 0 0;padding-left:20px;font-size:12.5px}
.msg{white-space:pre-wrap;overflow-wrap:anywhere}
.empty{color:var(--muted);font-style:italic}
[hidden]{display:none!important}
"""

# Progressive enhancement: without JS the grid is already least-confident-first. The script
# reads/writes the URL fragment, e.g. report.html#sort=score-desc&min=-2&max=-0.5.
_JS = """
(function () {
  "use strict";
  var grid = document.getElementById("grid");
  var controls = document.getElementById("controls");
  if (!grid || !controls) { return; }
  var cards = Array.prototype.slice.call(grid.querySelectorAll(".card"));
  var sortSel = document.getElementById("sort");
  var minIn = document.getElementById("min-score");
  var maxIn = document.getElementById("max-score");
  var shown = document.getElementById("visible-count");
  controls.hidden = false;
  controls.addEventListener("submit", function (ev) { ev.preventDefault(); });

  function score(card) {
    var v = parseFloat(card.getAttribute("data-score"));
    return isNaN(v) ? -Infinity : v;
  }
  function rank(card) { return parseInt(card.getAttribute("data-rank"), 10); }
  function bound(input) {
    var v = parseFloat(input.value);
    return isNaN(v) ? null : v;
  }
  function readHash() {
    var out = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i > 0) {
        try { out[decodeURIComponent(kv.slice(0, i))] = decodeURIComponent(kv.slice(i + 1)); }
        catch (e) { /* ignore malformed fragments */ }
      }
    });
    return out;
  }
  function writeHash() {
    var parts = [];
    if (sortSel.value !== "score-asc") { parts.push("sort=" + sortSel.value); }
    if (bound(minIn) !== null) { parts.push("min=" + encodeURIComponent(minIn.value)); }
    if (bound(maxIn) !== null) { parts.push("max=" + encodeURIComponent(maxIn.value)); }
    var h = parts.length ? "#" + parts.join("&") : "";
    if (h !== location.hash) {
      try { history.replaceState(null, "", h || location.pathname + location.search); }
      catch (e) { /* file:// in some browsers */ }
    }
  }
  function apply() {
    var desc = sortSel.value === "score-desc";
    var sorted = cards.slice().sort(function (a, b) {
      var sa = score(a), sb = score(b);
      if (sa !== sb) { return (sa < sb ? -1 : 1) * (desc ? -1 : 1); }
      return rank(a) - rank(b);
    });
    var lo = bound(minIn), hi = bound(maxIn), visible = 0;
    sorted.forEach(function (card) {
      var s = score(card);
      var hide = (lo !== null && s < lo) || (hi !== null && s > hi);
      card.hidden = hide;
      if (!hide) { visible += 1; }
      grid.appendChild(card);
    });
    grid.setAttribute("data-sort", desc ? "score-desc" : "score-asc");
    shown.textContent = visible + " of " + cards.length + " shown";
  }
  function fromHash() {
    var p = readHash();
    sortSel.value = p.sort === "score-desc" ? "score-desc" : "score-asc";
    minIn.value = p.min !== undefined && !isNaN(parseFloat(p.min)) ? p.min : "";
    maxIn.value = p.max !== undefined && !isNaN(parseFloat(p.max)) ? p.max : "";
    apply();
  }
  [sortSel, minIn, maxIn].forEach(function (el) {
    el.addEventListener("input", function () { apply(); writeHash(); });
    el.addEventListener("change", function () { apply(); writeHash(); });
  });
  document.getElementById("reset").addEventListener("click", function () {
    sortSel.value = "score-asc"; minIn.value = ""; maxIn.value = ""; apply(); writeHash();
  });
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
"""


def _e(value: Any) -> str:
    """HTML-escape any value (quotes included, so it is safe in attributes too)."""
    return html.escape(_text(value), quote=True)


def _clip(text: str, limit: int = _MAX_TEXT) -> str:
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more characters]"


def _num(value: Any, digits: int = 0) -> str:
    """A number formatted for people; anything else shown as text; '—' for missing."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:,.{digits}f}"
    return _text(value)


def _score_class(score: float) -> str:
    """Badge colour from the per-token probability exp(score): < .25 low, < .5 mid, else high."""
    if math.isnan(score):
        return "low"
    p = math.exp(min(score, 0.0))
    return "low" if p < 0.25 else "mid" if p < 0.5 else "high"


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode() + "'"


def _render_summary(data: ReportData) -> str:
    s = data.summary
    caps, errs = data.captions, data.errors
    tiles: list[tuple[str, str, bool]] = []

    def tile(label: str, value: Any, *, digits: int = 0, bad: bool = False) -> None:
        tiles.append((label, _num(value, digits), bad))

    if s:
        for key, label in (("matched", "matched"), ("captioned", "captioned"),
                           ("failed", "failed"), ("skipped_resume", "skipped (resume)")):
            if key in s:
                v = s[key]
                tile(label, v, bad=key == "failed" and isinstance(v, (int, float)) and v > 0)
        if "images_per_second" in s:
            tile("images / s", s["images_per_second"], digits=1)
        if "wall_seconds" in s:
            tile("wall seconds", s["wall_seconds"], digits=1)
        if "model_loads" in s:
            tile("model loads", s["model_loads"])
    tile("caption rows (all files)", caps.total)
    tile("error rows (all files)", errs.total, bad=errs.total > 0)
    stats = "".join(
        f'<div class="stat{" bad" if bad else ""}"><div class="v">{_e(v)}</div>'
        f'<div class="k">{_e(label)}</div></div>' for label, v, bad in tiles)

    meta: list[tuple[str, str]] = []
    if "model_id" in s:
        meta.append(("model id", f"<code>{_e(s['model_id'])}</code>"))
    if "decode" in s:
        meta.append(("decode", f"<code>{_e(s['decode'])}</code>"))
    bleu = s.get("bleu")
    if isinstance(bleu, Mapping) and bleu:
        names = [k for k in ("bleu1", "bleu2", "bleu3", "bleu4") if k in bleu]
        names += [k for k in bleu if k not in names]
        head = "".join(f'<th class="num">{_e(k.upper().replace("BLEU", "BLEU-"))}</th>' for k in names)
        cells = "".join(f'<td class="num">{_e(_num(bleu[k], 3))}</td>' for k in names)
        meta.append(("corpus BLEU", f'<table class="bleu"><tr>{head}</tr><tr>{cells}</tr></table>'))
    elif "bleu" in s:
        meta.append(("corpus BLEU", '<span class="muted">— (no references)</span>'))
    for key, label in (("inputs", "inputs"), ("output", "output")):
        if key in s:
            v = s[key]
            if isinstance(v, list):
                shown = v[:50]
                more = f"<li class='muted'>… {len(v) - 50} more</li>" if len(v) > 50 else ""
                meta.append((label, "<ul>" + "".join(f"<li><code>{_e(x)}</code></li>" for x in shown)
                             + more + "</ul>"))
            else:
                meta.append((label, f"<code>{_e(v)}</code>"))
    known = {"run_id", "matched", "captioned", "failed", "skipped_resume", "images_per_second",
             "wall_seconds", "model_loads", "model_id", "decode", "bleu", "inputs", "output"}
    for key in s:
        if key not in known:
            v = s[key]
            text = v if isinstance(v, str) else json.dumps(v, default=str)
            meta.append((key, f"<code>{_e(_clip(text, 500))}</code>"))
    meta_html = ""
    if meta:
        meta_html = '<dl class="meta">' + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in meta) + "</dl>"
    return f'<section id="summary"><h2>Run summary</h2><div class="stats">{stats}</div>{meta_html}</section>'


def _render_card(rank: int, row: CaptionRow, thumb: str | None, show_model: bool) -> str:
    alt = _e(_clip(row.caption, 300))
    if thumb:
        img = f'<div class="thumb"><img src="{_e(thumb)}" alt="{alt}"></div>'
    else:
        img = ('<div class="thumb missing" role="img" aria-label="image unavailable">'
               '<span class="x" aria-hidden="true">&#x2298;</span><span>image unavailable</span></div>')
    score = row.score
    score_attr = "nan" if math.isnan(score) else repr(float(score))
    prob = "" if math.isnan(score) else f'<span class="muted" title="per-token probability exp(score)">p&#8776;{math.exp(min(score, 0.0)):.2f}/token</span>'
    parts = [
        f'<p class="caption">{_e(_clip(row.caption))}</p>',
        f'<div class="scoreline"><span class="badge {_score_class(score)}" title="mean token log-probability">'
        f'score {_e(_num(score, 3))}</span>{prob}</div>',
    ]
    if row.references is not None:
        refs = row.references[:_MAX_REFERENCES]
        more = (f"<li class='muted'>… {len(row.references) - len(refs)} more</li>"
                if len(row.references) > len(refs) else "")
        bleu = "—" if row.bleu4 is None else _num(float(row.bleu4), 3)
        parts.append(
            f'<details class="refs"><summary>{len(row.references)} reference'
            f'{"" if len(row.references) == 1 else "s"} · BLEU-4 <span class="bleu4">{_e(bleu)}</span></summary>'
            f'<ol>{"".join(f"<li>{_e(_clip(r))}</li>" for r in refs)}{more}</ol></details>')
    size = f" · {row.width}×{row.height}" if row.width and row.height else ""
    model = f" · model <code>{_e(row.model_id[:12])}</code> {_e(row.decode)}" if show_model else ""
    parts.append(f'<div class="uri" title="{_e(row.image_uri)}">{_e(_clip(row.image_uri, 300))}{_e(size)}{model}</div>')
    return (f'<article class="card" data-score="{_e(score_attr)}" data-rank="{rank}">'
            f'{img}<div class="body">{"".join(parts)}</div></article>')


def _render_gallery(data: ReportData) -> str:
    rows, total = data.captions.rows, data.captions.total
    n = len(rows)
    how = (f"a deterministic random sample (seed {data.seed}, <code>--sample {data.sample}</code>)"
           if n < total else "all of them")
    head = (f'<h2>Captions</h2><p class="sub" id="showing">Showing {n:,} of {total:,} captions '
            f'({how}); least confident (lowest score) first.')
    if n:
        scores = np.array([r.score for r in rows], dtype=np.float64)
        finite = scores[np.isfinite(scores)]
        if finite.size:
            head += (f' Scores in this sample: min {finite.min():.3f}, median {np.median(finite):.3f}, '
                     f'max {finite.max():.3f}.')
    head += "</p>"
    if not n:
        return f'<section id="gallery">{head}<p class="empty">No captions to show.</p></section>'
    controls = (
        '<form id="controls" hidden>'
        '<label>Sort <select id="sort"><option value="score-asc">least confident first (score ↑)</option>'
        '<option value="score-desc">most confident first (score ↓)</option></select></label>'
        '<label>min score <input id="min-score" type="number" step="0.1" placeholder="e.g. -3"></label>'
        '<label>max score <input id="max-score" type="number" step="0.1" placeholder="e.g. -0.5"></label>'
        '<button type="button" id="reset">Reset</button>'
        '<span class="muted" id="visible-count"></span></form>')
    show_model = len({(r.model_id, r.decode) for r in rows}) > 1
    cards = "".join(_render_card(i, row, thumb, show_model)
                    for i, (row, thumb) in enumerate(zip(rows, data.thumbnails)))
    return f'<section id="gallery">{head}{controls}<div id="grid" class="grid" data-sort="score-asc">{cards}</div></section>'


def _render_errors(data: ReportData) -> str:
    errs = data.errors
    head = f'<h2>Errors ({errs.total:,})</h2>'
    if not errs.total:
        return f'<section id="errors">{head}<p class="empty">No error rows.</p></section>'
    breakdown = ", ".join(f"{_e(stage)} / {_e(etype)}: {count:,}"
                          for (stage, etype), count in sorted(errs.by_type.items(), key=lambda kv: (-kv[1], kv[0])))
    note = f'<p class="sub">By stage / error type: {breakdown}.'
    if len(errs.rows) < errs.total:
        note += (f' <strong>Showing the first {len(errs.rows):,} of {errs.total:,} error rows</strong> '
                 f'(capped; read <code>errors/*.parquet</code> for all).')
    note += "</p>"
    body = "".join(
        f'<tr><td class="mono">{_e(_clip(r.image_uri, 500))}</td><td>{_e(r.stage)}</td>'
        f'<td class="etype"><code>{_e(r.error_type)}</code></td><td class="msg">{_e(_clip(r.message))}</td></tr>'
        for r in errs.rows)
    table = ('<table id="error-table"><thead><tr><th>image_uri</th><th>stage</th><th>error_type</th>'
             f'<th>message</th></tr></thead><tbody>{body}</tbody></table>')
    return f'<section id="errors">{head}{note}{table}</section>'


def render_html(data: ReportData, *, thumbnail_px: int = DEFAULT_THUMBNAIL_PX) -> str:
    """The whole report page as a string (pure: no I/O)."""
    s = data.summary
    title = "Caption report" + (f" · {_text(s['run_id'])}" if s.get("run_id") else "")
    sub = []
    if data.out_dir:
        sub.append(f"output <code>{_e(data.out_dir)}</code>")
    if data.generated_at:
        sub.append(f"generated {_e(data.generated_at)}")
    notes = list(data.notes)
    for what, bad in (("caption", data.captions.unreadable), ("error", data.errors.unreadable)):
        notes += [f"skipped an unreadable {what} file: {_clip(x, 500)}" for x in bad]
    notes_html = ('<div class="notes">' + "".join(f"<p>{_e(n)}</p>" for n in notes) + "</div>") if notes else ""
    css = _CSS.replace("--thumb,160px", f"--thumb,{int(thumbnail_px)}px")
    csp = ("default-src 'none'; img-src data:; style-src " + _csp_hash(css) + "; script-src "
           + _csp_hash(_JS) + "; base-uri 'none'; form-action 'none'")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(csp, quote=False)}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{_e(title)}</title><style>{css}</style></head><body><main>"
        f'<header><h1>{_e(title)}</h1><p class="sub">{" · ".join(sub)}</p></header>'
        f"{notes_html}{_render_summary(data)}{_render_gallery(data)}{_render_errors(data)}"
        "<noscript><p class=\"muted\">JavaScript is off: captions are listed least confident first; "
        "sorting and filtering need JavaScript.</p></noscript>"
        f"</main><script>{_JS}</script></body></html>\n"
    )


# --------------------------------------------------------------------------- glue


def _exists(out_dir: str) -> bool:
    fs, root = fsspec.core.url_to_fs(out_dir)
    try:
        return fs.exists(root)
    except Exception:  # noqa: BLE001 - let the loaders raise something specific
        return True


def write_report(out_dir: str, *, sample: int = DEFAULT_SAMPLE, seed: int = 0,
                 thumbnail_px: int = DEFAULT_THUMBNAIL_PX, output: str | None = None,
                 max_errors: int = DEFAULT_MAX_ERRORS) -> str:
    """Write the HTML report of the run in ``out_dir`` to ``output`` (default
    ``OUT_DIR/report.html``) via fsspec and return that path."""
    if sample < 0:
        raise ValueError(f"sample must be >= 0, got {sample}")
    if thumbnail_px <= 0:
        raise ValueError(f"thumbnail_px must be positive, got {thumbnail_px}")
    if not _exists(out_dir):
        raise FileNotFoundError(f"output directory not found: {out_dir}")
    summary, note = load_summary(out_dir)
    captions = load_captions(out_dir, sample=sample, seed=seed)
    errors = load_errors(out_dir, max_errors=max_errors)
    thumbs = make_thumbnails([r.image_uri for r in captions.rows], thumbnail_px)
    data = ReportData(
        summary=summary, captions=captions, errors=errors, thumbnails=thumbs, out_dir=out_dir,
        sample=sample, seed=seed, notes=[note] if note else [],
        generated_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    )
    page = render_html(data, thumbnail_px=thumbnail_px)
    target = output or storage.join(out_dir, REPORT_NAME)
    storage.write_bytes(target, page.encode("utf-8"))
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m beam_pipeline.report",
        description="Write a self-contained HTML caption gallery (summary, sampled captions with "
                    "thumbnails, error rows) for a pipeline output directory.")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="pipeline output directory (local path or fsspec URL)")
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE,
                        help=f"caption rows to show, sampled deterministically (default {DEFAULT_SAMPLE})")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--thumbnail-px", type=int, default=DEFAULT_THUMBNAIL_PX,
                        help=f"thumbnail size in pixels (default {DEFAULT_THUMBNAIL_PX})")
    parser.add_argument("--max-errors", type=int, default=DEFAULT_MAX_ERRORS,
                        help=f"error rows to list at most (default {DEFAULT_MAX_ERRORS})")
    parser.add_argument("--output", default=None, help="where to write the page (default OUT_DIR/report.html)")
    args = parser.parse_args(argv)
    for name in ("sample", "max_errors"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.thumbnail_px <= 0:
        parser.error("--thumbnail-px must be positive")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = write_report(args.out_dir, sample=args.sample, seed=args.seed,
                            thumbnail_px=args.thumbnail_px, output=args.output,
                            max_errors=args.max_errors)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
