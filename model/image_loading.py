"""Turn untrusted image bytes into fixed-size RGB ``uint8`` arrays for the captioning model.

Pure Pillow + numpy (no TensorFlow, no Beam), so it can be unit-tested and reused anywhere.
Every failure on bad input is an :class:`ImageDecodeError` whose ``error_type`` is one of
:data:`ERROR_TYPES`; the pipeline writes it verbatim into the ``error_type`` column of the
error rows, so those strings are a contract.

Decoding order, and why:

1. byte checks (empty / too large) before Pillow sees anything;
2. ``Image.open`` only parses the header, so the declared size is checked against
   ``max_pixels`` before any pixel memory is allocated (decompression bombs);
3. JPEG draft mode lets libjpeg decode big photos at 1/2, 1/4 or 1/8 scale (much faster);
4. EXIF orientation is applied so the model sees the image upright;
5. every Pillow mode is brought to 8-bit RGB (alpha over white, 16-bit scaled by range);
6. bilinear resize to the model input size.

Global Pillow state (``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``) is
never modified.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

RESIZE_METHOD = "bilinear"  # the only resize; an artifact's config records it (model.artifact checks)
_RESAMPLE = {"bilinear": Image.BILINEAR}
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_PIXELS = 89_478_485  # same order as Pillow's default bomb limit

EMPTY_FILE = "EmptyFile"
TOO_LARGE = "TooLarge"
NOT_AN_IMAGE = "NotAnImage"
TRUNCATED_IMAGE = "TruncatedImage"
DECOMPRESSION_BOMB = "DecompressionBomb"
CORRUPT_IMAGE = "CorruptImage"

ERROR_TYPES: tuple[str, ...] = (
    EMPTY_FILE,
    TOO_LARGE,
    NOT_AN_IMAGE,
    TRUNCATED_IMAGE,
    DECOMPRESSION_BOMB,
    CORRUPT_IMAGE,
)

# Formats Pillow may identify but that we refuse: EPS is rendered by spawning Ghostscript,
# which is not something to run on untrusted bytes.
_REFUSED_FORMATS = frozenset({"EPS"})

_JPEG_FORMATS = frozenset({"JPEG", "MPO"})  # MPO (camera multi-picture) is a JPEG subclass
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_PREMULTIPLIED_MODES = {"La": "LA", "RGBa": "RGBA"}
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that rotate by 90 degrees
_EXIF_ORIENTATION_TAG = 0x0112
_PREVIEW_BYTES = 24  # how many leading bytes an error message quotes

# Leading bytes of formats we recognise; used only to tell "not an image" from "an image whose
# header Pillow cannot parse" once Pillow has given up.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "BigTIFF"),
    (b"MM\x00+", "BigTIFF"),
)
# BMP: "BM" plus a known DIB header size at offset 14, so text starting with "BM" is not a BMP.
_BMP_HEADER_SIZES = tuple(n.to_bytes(4, "little") for n in (12, 40, 52, 56, 64, 108, 124))
_ISO_BMFF_IMAGE_BRANDS = (b"heic", b"heix", b"heif", b"mif1", b"msf1", b"avif", b"avis")
_BOMB_PIXELS_RE = re.compile(r"Image size \((\d+) pixels\) exceeds limit of (\d+) pixels")
_TRUNCATION_HINTS = ("truncated", "premature end", "end of file", "unexpected eof")


class ImageDecodeError(Exception):
    """A decode failure with a stable machine-readable type for error rows."""

    def __init__(self, error_type: str, message: str) -> None:
        if error_type not in ERROR_TYPES:
            raise ValueError(f"unknown error_type {error_type!r}; expected one of {ERROR_TYPES}")
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message

    def __reduce__(self):  # keep it picklable: Beam may ship exceptions between processes
        return (type(self), (self.error_type, self.message))


@dataclass(frozen=True, eq=False)  # eq=False: comparing/hashing ndarrays field-wise is meaningless
class DecodedImage:
    """Model-ready pixels plus facts about the original image."""

    pixels: np.ndarray  # uint8, shape (target_h, target_w, 3), RGB, C-contiguous
    width: int  # size of the original image as shown upright (after EXIF orientation)
    height: int
    format: str  # Pillow format name, e.g. "JPEG", "PNG", "GIF", "WEBP", "TIFF"


def decode_image(
    data: bytes,
    target_size: tuple[int, int],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """Decode ``data`` to an upright RGB array of ``target_size`` = (height, width).

    Raises only :class:`ImageDecodeError` for bad bytes (``ValueError`` only for a bad
    ``target_size``, which is a programming error). Pillow's own bomb check (driven by the
    global ``Image.MAX_IMAGE_PIXELS``) still applies on top of ``max_pixels``, so raising
    ``max_pixels`` above Pillow's limit does not let bigger images through.

    Note: ``warnings.catch_warnings`` (used to turn Pillow's DecompressionBombWarning into an
    error) swaps the process-wide warning filters and is not thread-safe before Python 3.14.
    """
    out_h, out_w = _validate_target_size(target_size)
    _check_byte_size(data, max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(bytes(data), out_h, out_w, max_pixels)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(DECOMPRESSION_BOMB, _pillow_bomb_message(exc, max_pixels)) from exc
    except Exception as exc:  # noqa: BLE001 - any Pillow/numpy failure on bad bytes is a row
        raise _classify_load_error(exc) from exc


def sniff_is_image(data: bytes) -> bool:
    """True when ``data`` starts with the signature of a common image format."""
    return _sniff_format(data) is not None


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says: format and upright size (EXIF orientation applied)."""

    format: str
    width: int
    height: int


def _header(data: bytes, max_pixels: int | None) -> ImageHeader:
    """Parse the header only (no pixels decoded); with ``max_pixels`` refuse a bomb."""
    try:
        with warnings.catch_warnings():
            if max_pixels is not None:
                warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open(bytes(data)) as img:
                width, height = img.size
                if max_pixels is not None:
                    _check_declared_pixels(width, height, max_pixels)
                swaps = _exif_orientation(img) in _SWAPPING_ORIENTATIONS
                fmt = img.format or "UNKNOWN"
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(DECOMPRESSION_BOMB, f"Pillow refused the image header: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any Pillow failure on bad bytes
        raise _classify_load_error(exc) from exc
    return ImageHeader(fmt, height, width) if swaps else ImageHeader(fmt, width, height)


def upright_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the image as shown upright (EXIF orientation applied), from the header
    only: no pixels are decoded. The same size :func:`decode_image` reports.

    Raises :class:`ImageDecodeError` when the header cannot be parsed.
    """
    header = _header(data, None)
    return header.width, header.height


def probe_image(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> ImageHeader:
    """Format and upright size from the header, after the checks :func:`decode_image` makes before
    it decodes pixels (empty, too large, not an image, decompression bomb), with the same error
    types. No pixel is decoded, so a file whose pixel data is truncated or corrupt passes here and
    fails only in :func:`decode_image`."""
    _check_byte_size(data, max_bytes)
    return _header(data, max_pixels)


# --------------------------------------------------------------------------- input checks


def _validate_target_size(target_size: tuple[int, int]) -> tuple[int, int]:
    """Return (height, width) as ints; reject anything that is not two positive ints."""
    try:
        out_h, out_w = (int(v) for v in target_size)
    except (TypeError, ValueError):
        raise ValueError(f"target_size must be (height, width), got {target_size!r}") from None
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"target_size must be positive, got {target_size!r}")
    return out_h, out_w


def _check_byte_size(data: bytes, max_bytes: int) -> None:
    """Reject empty and oversized inputs before any parsing."""
    if len(data) == 0:
        raise ImageDecodeError(EMPTY_FILE, "file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageDecodeError(TOO_LARGE, f"file is {len(data)} bytes, over the limit of {max_bytes} bytes")


def _check_declared_pixels(width: int, height: int, max_pixels: int) -> None:
    """Reject zero-sized and too-large images using the header only (nothing loaded yet)."""
    if width <= 0 or height <= 0:
        raise ImageDecodeError(CORRUPT_IMAGE, f"image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageDecodeError(
            DECOMPRESSION_BOMB,
            f"image declares {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
        )


# --------------------------------------------------------------------------- decoding


def _decode(data: bytes, out_h: int, out_w: int, max_pixels: int) -> DecodedImage:
    """Open lazily, check the header, then load, orient, convert and resize."""
    img = _open(data)
    with img:
        fmt = img.format or "UNKNOWN"
        stored_w, stored_h = img.size  # before draft(), which shrinks .size
        _check_declared_pixels(stored_w, stored_h, max_pixels)
        orientation = _exif_orientation(img)
        swaps = orientation in _SWAPPING_ORIENTATIONS
        if fmt in _JPEG_FORMATS:
            # The stored (un-rotated) image needs target width along its height when rotated.
            img.draft("RGB", (out_h, out_w) if swaps else (out_w, out_h))
        img.load()
        upright = ImageOps.exif_transpose(img) if orientation != 1 else img
        rgb = _to_rgb(upright)
        resized = rgb.resize((out_w, out_h), _RESAMPLE[RESIZE_METHOD])
        pixels = np.ascontiguousarray(np.asarray(resized, dtype=np.uint8))
    if pixels.shape != (out_h, out_w, 3):  # defensive: a mode we failed to normalise
        raise ImageDecodeError(CORRUPT_IMAGE, f"decoded to unexpected shape {pixels.shape}")
    width, height = (stored_h, stored_w) if swaps else (stored_w, stored_h)
    return DecodedImage(pixels=pixels, width=width, height=height, format=fmt)


def _open(data: bytes) -> Image.Image:
    """Image.open (header only); unidentifiable data becomes NotAnImage/CorruptImage."""
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise _unidentified_error(data) from None
    if img.format in _REFUSED_FORMATS:
        img.close()
        raise ImageDecodeError(NOT_AN_IMAGE, f"{img.format} files are not accepted")
    return img


def _exif_orientation(img: Image.Image) -> int:
    """EXIF orientation 1-8; 1 (as stored) when absent or unreadable: bad metadata is not fatal."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - malformed EXIF must not reject a decodable image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# --------------------------------------------------------------------------- mode handling


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        return Image.fromarray(_wide_grey_to_uint8(np.asarray(img), img.mode)).convert("RGB")
    if img.mode in _PREMULTIPLIED_MODES:  # Pillow only converts La to LA, so un-premultiply first
        img = img.convert(_PREMULTIPLIED_MODES[img.mode])
    if img.has_transparency_data:  # RGBA, LA, PA, or a "transparency" entry in info
        return _composite_on_white(img.convert("RGBA"))
    return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX, ...


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    """Flatten RGBA onto white, so transparent areas look like a page, not a black hole."""
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _wide_grey_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16/32-bit integer or float greyscale to 0-255 by its range instead of clipping.

    16-bit modes use the full 0-65535 range (65535 -> 255). Mode "I" holding 0-65535 data
    (16-bit PNG/PGM in older Pillows) is treated the same; otherwise its actual min-max is
    used. Mode "F" in [0, 1] is scaled by 255, anything else by its actual min-max.
    """
    grey = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if mode in _SIXTEEN_BIT_MODES:
        low, high = 0.0, 65535.0
    elif grey.size == 0:
        low, high = 0.0, 255.0
    else:
        low, high = float(grey.min()), float(grey.max())
        if mode == "I" and low >= 0 and high <= 65535:
            low, high = 0.0, 65535.0
        elif mode == "F" and low >= 0 and high <= 1:
            low, high = 0.0, 1.0
    if high <= low:  # constant image: keep its value if it is a plausible 8-bit level
        return np.clip(grey, 0, 255).astype(np.uint8)
    scaled = (grey - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- error mapping


def _sniff_format(data: bytes) -> str | None:
    """Name of the image container ``data`` starts with, or None."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp" and data[8:12] in _ISO_BMFF_IMAGE_BRANDS:
        return "HEIF/AVIF"
    if data[:2] == b"BM" and len(data) >= 26 and data[14:18] in _BMP_HEADER_SIZES:
        return "BMP"
    return None


def _preview(data: bytes) -> str:
    """Repr of the first bytes: always ASCII, never huge, safe to put in a message."""
    head = data[:_PREVIEW_BYTES]
    suffix = "..." if len(data) > _PREVIEW_BYTES else ""
    return f"{head!r}{suffix}"


def _unidentified_error(data: bytes) -> ImageDecodeError:
    """Pillow could not identify the data: garbage, or a damaged/unsupported image header."""
    sniffed = _sniff_format(data)
    if sniffed is None:
        return ImageDecodeError(
            NOT_AN_IMAGE,
            f"not a recognised image ({len(data)} bytes); starts with {_preview(data)}",
        )
    if sniffed == "HEIF/AVIF":
        return ImageDecodeError(NOT_AN_IMAGE, f"{sniffed} container that this Pillow build cannot decode")
    return ImageDecodeError(
        CORRUPT_IMAGE,
        f"starts like a {sniffed} file but its header cannot be parsed ({len(data)} bytes); "
        f"starts with {_preview(data)}",
    )


def _pillow_bomb_message(exc: Exception, max_pixels: int) -> str:
    """Message for a bomb caught by Pillow's own check (before we could read the size)."""
    match = _BOMB_PIXELS_RE.search(str(exc))
    if match is None:
        return f"Pillow refused the image as a decompression bomb: {exc}"
    declared, pillow_limit = int(match.group(1)), int(match.group(2))
    limit = max_pixels if declared > max_pixels else pillow_limit
    return f"image declares {declared} pixels, over the limit of {limit}"


def _classify_load_error(exc: Exception) -> ImageDecodeError:
    """Map an exception raised while loading pixels to TruncatedImage or CorruptImage."""
    text = str(exc)
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, EOFError) or any(h in text.lower() for h in _TRUNCATION_HINTS):
        return ImageDecodeError(TRUNCATED_IMAGE, f"image data ends early ({detail})")
    return ImageDecodeError(CORRUPT_IMAGE, f"cannot decode image ({detail})")
