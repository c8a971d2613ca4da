"""Render the report page: one self-contained HTML string, pure (no I/O).

The page works offline and loads nothing: thumbnails are ``data:`` URIs, the CSS and the small
sort/filter script (package data: ``caption_report/static/report.css`` and ``report.js``) are
inline, and a Content-Security-Policy ``<meta>`` blocks every network fetch and every script but
ours (by hash). Captions, references, URIs and error messages are untrusted data and always go
through :func:`html.escape`.

The script is progressive enhancement: without JS the grid is already least-confident-first. It
reads/writes the URL fragment, e.g. ``report.html#sort=score-desc&min=-2&max=-0.5``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from caption_report.data import DEFAULT_SAMPLE, CaptionRow, CaptionSample, ErrorRows
from caption_report.data import text as _text
from caption_report.thumbnails import DEFAULT_THUMBNAIL_PX

_MAX_TEXT = 2000  # longest caption / reference / message shown, in characters
_MAX_REFERENCES = 20


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
    review_total: int = 0  # rows in OUT_DIR/review (the "needs review" queue)


@cache
def static_text(name: str) -> str:
    """A file of ``caption_report/static`` (package data) as text."""
    return resources.files("caption_report").joinpath("static").joinpath(name).read_text(encoding="utf-8")


def _inline(name: str) -> str:
    # The newline after <style>/<script> keeps the page byte-identical to earlier reports.
    return "\n" + static_text(name)


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
        for key, label in (
            ("matched", "matched"),
            ("captioned", "captioned"),
            ("failed", "failed"),
            ("skipped_resume", "skipped (resume)"),
        ):
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
        f'<div class="stat{" bad" if bad else ""}"><div class="v">{_e(v)}</div><div class="k">{_e(label)}</div></div>'
        for label, v, bad in tiles
    )

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
                meta.append((label, "<ul>" + "".join(f"<li><code>{_e(x)}</code></li>" for x in shown) + more + "</ul>"))
            else:
                meta.append((label, f"<code>{_e(v)}</code>"))
    known = {
        "run_id",
        "matched",
        "captioned",
        "failed",
        "skipped_resume",
        "images_per_second",
        "wall_seconds",
        "model_loads",
        "model_id",
        "decode",
        "bleu",
        "inputs",
        "output",
    }
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
        img = (
            '<div class="thumb missing" role="img" aria-label="image unavailable">'
            '<span class="x" aria-hidden="true">&#x2298;</span><span>image unavailable</span></div>'
        )
    score = row.score
    score_attr = "nan" if math.isnan(score) else repr(float(score))
    prob = (
        ""
        if math.isnan(score)
        else (
            '<span class="muted" title="per-token probability exp(score)">'
            f"p&#8776;{math.exp(min(score, 0.0)):.2f}/token</span>"
        )
    )
    parts = [
        f'<p class="caption">{_e(_clip(row.caption))}</p>',
        f'<div class="scoreline"><span class="badge {_score_class(score)}" title="mean token log-probability">'
        f"score {_e(_num(score, 3))}</span>{prob}</div>",
    ]
    if row.references is not None:
        refs = row.references[:_MAX_REFERENCES]
        more = (
            f"<li class='muted'>… {len(row.references) - len(refs)} more</li>"
            if len(row.references) > len(refs)
            else ""
        )
        bleu = "—" if row.bleu4 is None else _num(float(row.bleu4), 3)
        parts.append(
            f'<details class="refs"><summary>{len(row.references)} reference'
            f'{"" if len(row.references) == 1 else "s"} · BLEU-4 <span class="bleu4">{_e(bleu)}</span></summary>'
            f"<ol>{''.join(f'<li>{_e(_clip(r))}</li>' for r in refs)}{more}</ol></details>"
        )
    if row.review:
        flags = f" ({', '.join(row.flags)})" if row.flags else ""
        parts.append(
            f'<div class="review"><span class="badge review-badge">needs review: {_e(row.review)}'
            f"{_e(flags)}</span></div>"
        )
    size = f" · {row.width}×{row.height}" if row.width and row.height else ""
    model = f" · model <code>{_e(row.model_id[:12])}</code> {_e(row.decode)}" if show_model else ""
    parts.append(f'<div class="uri" title="{_e(row.image_uri)}">{_e(_clip(row.image_uri, 300))}{_e(size)}{model}</div>')
    review = f' data-review="{_e(row.review)}"' if row.review else ""
    return (
        f'<article class="card" data-score="{_e(score_attr)}" data-rank="{rank}"{review}>'
        f'{img}<div class="body">{"".join(parts)}</div></article>'
    )


def _render_gallery(data: ReportData) -> str:
    rows, total = data.captions.rows, data.captions.total
    n = len(rows)
    how = (
        f"a deterministic random sample (seed {data.seed}, <code>--sample {data.sample}</code>)"
        if n < total
        else "all of them"
    )
    head = (
        f'<h2>Captions</h2><p class="sub" id="showing">Showing {n:,} of {total:,} captions '
        f"({how}); least confident (lowest score) first."
    )
    if n:
        scores = np.array([r.score for r in rows], dtype=np.float64)
        finite = scores[np.isfinite(scores)]
        if finite.size:
            head += (
                f" Scores in this sample: min {finite.min():.3f}, median {np.median(finite):.3f}, "
                f"max {finite.max():.3f}."
            )
    if data.review_total:
        head += (
            f" <strong>{data.review_total:,} need review</strong> (<code>review/*.parquet</code>: flagged by "
            "the watch-list or below <code>--review_below</code>); those not in the sample are added."
        )
    head += "</p>"
    if not n:
        return f'<section id="gallery">{head}<p class="empty">No captions to show.</p></section>'
    controls = (
        '<form id="controls" hidden>'
        '<label>Sort <select id="sort"><option value="score-asc">least confident first (score ↑)</option>'
        '<option value="score-desc">most confident first (score ↓)</option></select></label>'
        '<label>min score <input id="min-score" type="number" step="0.1" placeholder="e.g. -3"></label>'
        '<label>max score <input id="max-score" type="number" step="0.1" placeholder="e.g. -0.5"></label>'
        + (
            '<label><input id="needs-review" type="checkbox"> needs review only</label>'
            if any(r.review for r in rows)
            else ""
        )
        + '<button type="button" id="reset">Reset</button>'
        '<span class="muted" id="visible-count"></span></form>'
    )
    show_model = len({(r.model_id, r.decode) for r in rows}) > 1
    cards = "".join(
        _render_card(i, row, thumb, show_model) for i, (row, thumb) in enumerate(zip(rows, data.thumbnails))
    )
    grid = f'<div id="grid" class="grid" data-sort="score-asc">{cards}</div>'
    return f'<section id="gallery">{head}{controls}{grid}</section>'


def _render_errors(data: ReportData) -> str:
    errs = data.errors
    head = f"<h2>Errors ({errs.total:,})</h2>"
    if not errs.total:
        return f'<section id="errors">{head}<p class="empty">No error rows.</p></section>'
    breakdown = ", ".join(
        f"{_e(stage)} / {_e(etype)}: {count:,}"
        for (stage, etype), count in sorted(errs.by_type.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    note = f'<p class="sub">By stage / error type: {breakdown}.'
    if len(errs.rows) < errs.total:
        note += (
            f" <strong>Showing the first {len(errs.rows):,} of {errs.total:,} error rows</strong> "
            f"(capped; read <code>errors/*.parquet</code> for all)."
        )
    note += "</p>"
    body = "".join(
        f'<tr><td class="mono">{_e(_clip(r.image_uri, 500))}</td><td>{_e(r.stage)}</td>'
        f'<td class="etype"><code>{_e(r.error_type)}</code></td><td class="msg">{_e(_clip(r.message))}</td></tr>'
        for r in errs.rows
    )
    table = (
        '<table id="error-table"><thead><tr><th>image_uri</th><th>stage</th><th>error_type</th>'
        f"<th>message</th></tr></thead><tbody>{body}</tbody></table>"
    )
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
    css = _inline("report.css").replace("--thumb,160px", f"--thumb,{int(thumbnail_px)}px")
    js = _inline("report.js")
    csp = (
        "default-src 'none'; img-src data:; style-src "
        + _csp_hash(css)
        + "; script-src "
        + _csp_hash(js)
        + "; base-uri 'none'; form-action 'none'"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(csp, quote=False)}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{_e(title)}</title><style>{css}</style></head><body><main>"
        f'<header><h1>{_e(title)}</h1><p class="sub">{" · ".join(sub)}</p></header>'
        f"{notes_html}{_render_summary(data)}{_render_gallery(data)}{_render_errors(data)}"
        '<noscript><p class="muted">JavaScript is off: captions are listed least confident first; '
        "sorting and filtering need JavaScript.</p></noscript>"
        f"</main><script>{js}</script></body></html>\n"
    )
