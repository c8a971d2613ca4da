"""Encoder feature cache: the encoder runs once per image; features are stored on disk.

Layout: ``CACHE_DIR/<key>/part-NNNNN.npz`` with arrays ``ids`` (str) and ``features``
(float32 pooled vectors; float16 spatial maps, 10x10x2048 values per Xception image), written
atomically every chunk, so an interrupted extraction resumes where it stopped. The key holds the
encoder name, image size and a fingerprint of its weights, so a different encoder never reuses
stale features. Files are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from model.image_loading import DEFAULT_MAX_BYTES, TOO_LARGE, ImageDecodeError, decode_image
from model.storage import ObjectTooLarge, atomic_local_path, read_bytes
from training.datasets import CaptionedImage

log = logging.getLogger(__name__)


@dataclass
class ExtractionReport:
    """What happened to each image: reused from cache, newly encoded, missing or undecodable."""

    cached: int = 0
    encoded: int = 0
    missing: dict[str, str] = field(default_factory=dict)
    undecodable: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "cached": self.cached,
            "encoded": self.encoded,
            "missing": len(self.missing),
            "undecodable": len(self.undecodable),
            "missing_examples": sorted(self.missing)[:10],
            "undecodable_examples": dict(sorted(self.undecodable.items())[:10]),
        }


def feature_cache_key(
    encoder_name: str, image_size: Sequence[int], weights_fingerprint: str, spatial: bool = False
) -> str:
    """The folder name of one encoder configuration's features in the feature cache
    (``spatial``: the encoder's last convolutional map instead of its pooled vector)."""
    raw = f"{encoder_name}|{image_size[0]}x{image_size[1]}|{weights_fingerprint}" + ("|spatial" if spatial else "")
    kind = "-spatial" if spatial else ""
    return f"{encoder_name}{kind}-{image_size[0]}x{image_size[1]}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


class FeatureCache:
    """Append-only store of feature arrays for one encoder configuration, kept as ``dtype``
    (float16 halves the memory of spatial maps)."""

    def __init__(self, root: str, key: str, dtype: type = np.float32) -> None:
        self.dir = os.path.join(root, key)
        self.dtype = np.dtype(dtype)
        os.makedirs(self.dir, exist_ok=True)
        self._features: dict[str, np.ndarray] = {}
        for part in sorted(glob.glob(os.path.join(self.dir, "part-*.npz"))):
            with np.load(part, allow_pickle=False) as data:
                for image_id, vec in zip(data["ids"], data["features"]):
                    self._features[str(image_id)] = np.asarray(vec, self.dtype)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._features

    def __len__(self) -> int:
        return len(self._features)

    def get(self, image_id: str) -> np.ndarray:
        return self._features[image_id]

    def stacked(self, ids: Sequence[str]) -> np.ndarray:
        """The features of ``ids`` as one ``(len(ids), ...)`` array of the cache's dtype, filled
        in place (no float32 copy of a multi-GB map set)."""
        first = self._features[ids[0]]
        out = np.empty((len(ids), *first.shape), self.dtype)
        for i, image_id in enumerate(ids):
            out[i] = self._features[image_id]
        return out

    def add(self, ids: Sequence[str], features: np.ndarray) -> None:
        """Persist a chunk atomically (write then rename) and keep it in memory."""
        if not ids:
            return
        n = len(glob.glob(os.path.join(self.dir, "part-*.npz")))
        final = os.path.join(self.dir, f"part-{n:05d}-{os.getpid()}.npz")
        # The temporary name (".tmp-...") does not match "part-*.npz": a write cut short (crash,
        # kill) is never loaded as a part, and a reader never sees a part before it is complete.
        with atomic_local_path(final) as tmp:
            np.savez(tmp, ids=np.asarray(ids, dtype=str), features=np.asarray(features, self.dtype))
        for image_id, vec in zip(ids, features):
            self._features[image_id] = np.asarray(vec, self.dtype)


def load_image(
    item: CaptionedImage, size: tuple[int, int], max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[str, np.ndarray | None, str | None, str | None]:
    """Read (at most ``max_bytes``) and decode one training image to ``size``; never raises for a bad
    image. Returns (image id, pixels, failure kind, message): pixels and ``None, None`` when it
    decodes; ``None``, ``"missing"`` (unreadable) or ``"undecodable"`` (too large, not an image, ...)
    and a message naming the error type otherwise."""
    try:
        data = read_bytes(item.uri, max_bytes)
    except ObjectTooLarge:
        return item.image_id, None, "undecodable", f"{TOO_LARGE}: file is over the limit of {max_bytes} bytes"
    except FileNotFoundError:
        return item.image_id, None, "missing", f"file not found: {item.uri}"
    except OSError as exc:
        return item.image_id, None, "missing", f"cannot read {item.uri}: {exc}"
    try:
        return item.image_id, decode_image(data, size, max_bytes=max_bytes).pixels, None, None
    except ImageDecodeError as exc:
        return item.image_id, None, "undecodable", f"{exc.error_type}: {exc.message}"


def extract_features(
    items: Iterable[CaptionedImage],
    encode: Callable[[np.ndarray], np.ndarray],
    image_size: tuple[int, int],
    cache: FeatureCache,
    batch_size: int = 32,
    chunk_size: int = 256,
    threads: int = 4,
    progress: bool = True,
) -> ExtractionReport:
    """Encode every image not yet in ``cache``; missing and undecodable images are skipped and
    reported, never fatal. Image reading/decoding runs in a thread pool, overlapping the encoder."""
    report = ExtractionReport()
    todo = []
    seen = set()
    for item in items:
        if item.image_id in seen:
            continue
        seen.add(item.image_id)
        if item.image_id in cache:
            report.cached += 1
        else:
            todo.append(item)
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="encoding images", unit="img")
    pending_ids: list[str] = []
    pending_feats: list[np.ndarray] = []
    batch_ids: list[str] = []
    batch_pixels: list[np.ndarray] = []

    def flush_batch() -> None:
        if batch_pixels:
            feats = encode(np.stack(batch_pixels))
            pending_ids.extend(batch_ids)
            pending_feats.extend(feats)
            report.encoded += len(batch_ids)
            if bar:
                bar.update(len(batch_ids))
            batch_ids.clear()
            batch_pixels.clear()
        if len(pending_ids) >= chunk_size:
            cache.add(list(pending_ids), np.stack(pending_feats))
            pending_ids.clear()
            pending_feats.clear()

    def loaded():
        # Bounded read-ahead: at most one window of decoded images is held in memory.
        window = max(batch_size * 4, 64)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for start in range(0, len(todo), window):
                yield from pool.map(lambda it: load_image(it, image_size), todo[start : start + window])

    for image_id, pixels, kind, message in loaded():
        if pixels is None:
            (report.missing if kind == "missing" else report.undecodable)[image_id] = message or ""
            if bar:
                bar.update(1)
            continue
        batch_ids.append(image_id)
        batch_pixels.append(pixels)
        if len(batch_ids) >= batch_size:
            flush_batch()
    flush_batch()
    if pending_ids:
        cache.add(list(pending_ids), np.stack(pending_feats))
    if bar:
        bar.close()
    if report.missing or report.undecodable:
        log.warning("skipped %d missing and %d undecodable images", len(report.missing), len(report.undecodable))
    return report
