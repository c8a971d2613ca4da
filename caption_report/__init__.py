"""Caption gallery: one self-contained HTML page to look at the output of a captioning run.

``python -m caption_report OUT_DIR`` reads ``OUT_DIR/summary.json``, ``OUT_DIR/captions/*.parquet``
and ``OUT_DIR/errors/*.parquet`` (any fsspec URL) and writes ``OUT_DIR/report.html``: the run
summary, a grid of sampled images with their captions and scores (least confident first), and
the error rows. No Beam is needed.

Modules, one concern each: :mod:`~caption_report.data` (read and sample the Parquet output and
the summary), :mod:`~caption_report.thumbnails` (bounded byte reads, thumbnails through the model
core's image decoding), :mod:`~caption_report.render` (the HTML page, pure; CSS and JS are the
package data files ``static/report.css`` and ``static/report.js``),
:mod:`~caption_report.writer` (:func:`write_report`: the glue) and :mod:`~caption_report.cli`.
"""

from caption_report.data import (
    CaptionRow,
    CaptionSample,
    ErrorRow,
    ErrorRows,
    bottom_k_keys,
    load_captions,
    load_errors,
    load_summary,
)
from caption_report.render import ReportData, render_html
from caption_report.thumbnails import make_thumbnail, make_thumbnails, thumbnail_from_bytes
from caption_report.writer import write_report

__all__ = [
    "CaptionRow",
    "CaptionSample",
    "ErrorRow",
    "ErrorRows",
    "ReportData",
    "bottom_k_keys",
    "load_captions",
    "load_errors",
    "load_summary",
    "make_thumbnail",
    "make_thumbnails",
    "render_html",
    "thumbnail_from_bytes",
    "write_report",
]
