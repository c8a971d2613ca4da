"""Thumbnails for the gallery: read an image's bytes (bounded) and shrink it to a small upright
RGB JPEG, embedded in the page as a ``data:`` URI.

Decoding is the model core's (:func:`model.image_loading.decode_image`: the same size, bomb, EXIF
orientation and colour-mode handling as the pipeline); the upright size comes from
:func:`model.image_loading.upright_size`. Bytes are fetched a few at a time by threads and
decoded one by one on the calling thread.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from model.image_loading import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, upright_size

# The one bounded reader: at most max_bytes + 1 bytes, so decode_image reports a larger file as TooLarge.
from model.storage import read_prefix

log = logging.getLogger(__name__)

DEFAULT_THUMBNAIL_PX = 160
_FETCH_WORKERS = 8  # concurrent thumbnail reads (object stores are latency bound)


def fit(width: int, height: int, px: int) -> tuple[int, int]:
    """(width, height) scaled to fit in a px-by-px box, never enlarged, at least 1x1."""
    scale = min(1.0, px / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def thumbnail_from_bytes(
    data: bytes,
    px: int = DEFAULT_THUMBNAIL_PX,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> str:
    """A ``data:image/jpeg;base64,...`` URI of ``data`` shrunk to fit ``px`` (upright, RGB).
    Raises :class:`~model.image_loading.ImageDecodeError` on bad bytes."""
    if px <= 0:
        raise ValueError(f"thumbnail size must be positive, got {px}")
    try:
        width, height = fit(*upright_size(data), px)
    except ImageDecodeError:  # decode_image below classifies the failure
        width, height = px, px
    decoded = decode_image(data, (height, width), max_bytes=max_bytes, max_pixels=max_pixels)
    out = io.BytesIO()
    Image.fromarray(decoded.pixels).save(out, "JPEG", quality=82, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def make_thumbnail(uri: str, px: int = DEFAULT_THUMBNAIL_PX, *, max_bytes: int = DEFAULT_MAX_BYTES) -> str | None:
    """Thumbnail data URI of the image at ``uri``, or None when it cannot be read or decoded."""
    try:
        return thumbnail_from_bytes(read_prefix(uri, max_bytes), px, max_bytes=max_bytes)
    except Exception as exc:  # noqa: BLE001 - a missing image becomes a placeholder
        log.info("no thumbnail for %s: %s", uri, exc)
        return None


def make_thumbnails(
    uris: Sequence[str],
    px: int = DEFAULT_THUMBNAIL_PX,
    *,
    workers: int = _FETCH_WORKERS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[str | None]:
    """Thumbnails for ``uris`` (None where unavailable). Reads run ``workers`` at a time in threads;
    decoding stays on this thread (decode_image's warning filters are not thread-safe) and at most
    ``workers`` images' bytes are held at once."""

    def fetch(uri: str) -> bytes | Exception:
        try:
            return read_prefix(uri, max_bytes)
        except Exception as exc:  # noqa: BLE001 - any read failure means no thumbnail, logged
            return exc

    out: list[str | None] = []
    workers = max(1, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(uris), workers):
            chunk = uris[start : start + workers]
            for uri, data in zip(chunk, pool.map(fetch, chunk)):
                if isinstance(data, Exception):
                    log.info("no thumbnail for %s: %s", uri, data)
                    out.append(None)
                    continue
                try:
                    out.append(thumbnail_from_bytes(data, px, max_bytes=max_bytes))
                except Exception as exc:  # noqa: BLE001 - bad bytes mean no thumbnail, never a failed report
                    log.info("no thumbnail for %s: %s", uri, exc)
                    out.append(None)
    return out
