"""Glue: load a run's output, make the thumbnails, render the page and write it."""

from __future__ import annotations

from datetime import UTC, datetime

from caption_report.data import (
    DEFAULT_MAX_ERRORS,
    DEFAULT_SAMPLE,
    load_captions,
    load_errors,
    load_review,
    load_summary,
    output_exists,
    with_review,
)
from caption_report.render import ReportData, render_html
from caption_report.thumbnails import DEFAULT_THUMBNAIL_PX, make_thumbnails
from model import storage

REPORT_NAME = "report.html"


def write_report(
    out_dir: str,
    *,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    thumbnail_px: int = DEFAULT_THUMBNAIL_PX,
    output: str | None = None,
    max_errors: int = DEFAULT_MAX_ERRORS,
) -> str:
    """Write the HTML report of the run in ``out_dir`` to ``output`` (default
    ``OUT_DIR/report.html``) via fsspec and return that path."""
    if sample < 0:
        raise ValueError(f"sample must be >= 0, got {sample}")
    if thumbnail_px <= 0:
        raise ValueError(f"thumbnail_px must be positive, got {thumbnail_px}")
    if not output_exists(out_dir):
        raise FileNotFoundError(f"output directory not found: {out_dir}")
    summary, note = load_summary(out_dir)
    captions = load_captions(out_dir, sample=sample, seed=seed)
    review, review_total = load_review(out_dir, limit=sample)
    if review:
        captions = with_review(captions, review)
    errors = load_errors(out_dir, max_errors=max_errors)
    thumbs = make_thumbnails([r.image_uri for r in captions.rows], thumbnail_px)
    data = ReportData(
        summary=summary,
        captions=captions,
        errors=errors,
        thumbnails=thumbs,
        out_dir=out_dir,
        sample=sample,
        seed=seed,
        notes=[note] if note else [],
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        review_total=review_total,
    )
    page = render_html(data, thumbnail_px=thumbnail_px)
    target = output or storage.join(out_dir, REPORT_NAME)
    storage.write_bytes(target, page.encode("utf-8"))
    return target
