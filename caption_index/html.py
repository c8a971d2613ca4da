"""The hits of one or more searches as one self-contained HTML page: thumbnails inlined as
``data:`` URIs (``caption_report``'s thumbnailing: bounded reads, the model core's decoding), no
script, no external resource."""

from __future__ import annotations

import html
from collections.abc import Sequence

from caption_index.query import Hit
from caption_report.thumbnails import DEFAULT_THUMBNAIL_PX, make_thumbnails

_CSS = """body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
h2{font-size:1.1rem;margin:1.5rem 0 .5rem}.grid{display:flex;flex-wrap:wrap;gap:.8rem}
figure{margin:0;width:180px;border:1px solid #ddd;border-radius:6px;padding:.4rem}
figure img,.missing{width:160px;height:120px;object-fit:contain;display:block;background:#f4f4f4}
figcaption{font-size:.85rem}.meta{color:#666;font-size:.75rem;word-break:break-all}
.flag{background:#fde2e1;color:#8a1c14;border-radius:3px;padding:0 .3rem;font-size:.75rem}"""


def _card(rank: int, hit: Hit, thumb: str | None) -> str:
    e = html.escape
    image = f'<img src="{thumb}" alt="">' if thumb else '<div class="missing">no preview</div>'
    flags = "".join(f' <span class="flag">{e(f)}</span>' for f in hit.flags or ())
    return (
        f"<figure>{image}<figcaption>#{rank} {e(hit.caption)}{flags}"
        f'<div class="meta">score {hit.score:.3f} · {e(hit.image_uri)}</div></figcaption></figure>'
    )


def render_results(
    results: Sequence[tuple[str, Sequence[Hit]]], title: str, thumbnail_px: int = DEFAULT_THUMBNAIL_PX
) -> str:
    """The page for ``results`` = (query, hits best first) pairs."""
    uris = list(dict.fromkeys(h.image_uri for _, hits in results for h in hits))
    thumbs = dict(zip(uris, make_thumbnails(uris, thumbnail_px)))
    sections = []
    for query, hits in results:
        cards = "".join(_card(i + 1, h, thumbs.get(h.image_uri)) for i, h in enumerate(hits))
        sections.append(
            f"<h2>{html.escape(query)} <small>({len(hits)} hits)</small></h2>"
            f'<div class="grid">{cards or "<p>no hits</p>"}</div>'
        )
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n"
    )
