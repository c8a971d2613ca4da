"""A reusable corpus of awkward image inputs, generated with Pillow + numpy only.

``write_bad_input_corpus(dir)`` writes one file per case and returns
``{filename: expected error_type, or None if it must decode fine}``. The expectations hold
when decoding with ``max_bytes=CORPUS_MAX_BYTES`` and the default ``max_pixels``; the
"too large" file is a perfectly valid JPEG that is only rejected because of that byte limit.

Module constants describe the content of the files that tests check pixel by pixel.
"""

from __future__ import annotations

import io
import pathlib
import struct
import zlib

import numpy as np
from PIL import Image

CORPUS_MAX_BYTES = 2_000_000  # decode the corpus with max_bytes=CORPUS_MAX_BYTES

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)

# exif_rotated_6.jpg: stored landscape, left half RED, right half BLUE, EXIF orientation 6
# ("rotate 90 degrees clockwise to display"), so upright it is portrait, top RED, bottom BLUE.
EXIF_STORED_SIZE = (64, 32)  # (width, height) of the stored pixels
EXIF_UPRIGHT_SIZE = (32, 64)  # (width, height) as displayed
EXIF_ORIENTATION = 6

# grey16.png: GREY16_SIZE, three vertical bands with these 16-bit levels, left to right.
GREY16_LEVELS = (0, 32768, 65535)
GREY16_SIZE = (30, 10)  # (width, height)

# palette_transparent.png / rgba.png: left half fully transparent, right half opaque RED / GREEN.
ALPHA_SIZE = (20, 10)  # (width, height)

# animated.*: two frames, FRAME_COLOURS[0] first.
FRAME_COLOURS = (RED, BLUE)
ANIMATION_SIZE = (16, 16)

# cmyk.jpg: solid CMYK_COLOUR, which is RED in RGB.
CMYK_COLOUR = (0, 255, 255, 0)

BOMB_SIZE = (100_000, 100_000)  # what bomb_100000x100000.png declares in its IHDR


def make_photo_like_array(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Smooth gradients plus mild noise: compresses like a photo, cheap to generate."""
    width, height = size
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    phase = rng.uniform(0, 2 * np.pi, 3).astype(np.float32)
    channels = [127 + 100 * np.sin(3 * x + 2 * y + phase[c]) * np.cos(2 * x - 3 * y + phase[c]) for c in range(3)]
    img = np.stack(channels, axis=-1)
    img += rng.normal(0, 6, (height, 1, 1)).astype(np.float32)  # row jitter, cheap "texture"
    return np.clip(img, 0, 255).astype(np.uint8)


def make_photo_like_jpeg(
    path: pathlib.Path, size: tuple[int, int] = (640, 480), seed: int = 0, quality: int = 85
) -> pathlib.Path:
    """Write a valid photo-like RGB JPEG of ``size`` = (width, height); return the path.

    Big sizes are synthesised at <= 512 px and upscaled, so a 4000x3000 file takes ~0.2 s.
    """
    width, height = size
    shrink = max(1, -(-max(width, height) // 512))
    small = make_photo_like_array((max(1, width // shrink), max(1, height // shrink)), seed)
    img = Image.fromarray(small)
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    img.save(path, "JPEG", quality=quality)
    return pathlib.Path(path)


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    """Encode a Pillow image to bytes."""
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with a correct CRC."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def bomb_png(width: int = BOMB_SIZE[0], height: int = BOMB_SIZE[1]) -> bytes:
    """A tiny PNG whose IHDR declares width x height RGB pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    idat = zlib.compress(b"\x00" * 4096, 9)  # a few rows' worth; the file stays tiny
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def pad_jpeg_with_comments(jpeg: bytes, min_size: int) -> bytes:
    """Insert COM segments after SOI until the (still valid) JPEG is over ``min_size`` bytes."""
    payload = b"padding " * (65_533 // 8)  # a COM segment holds at most 65533 payload bytes
    segment = b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload
    count = max(0, min_size - len(jpeg)) // len(segment) + 1
    return jpeg[:2] + segment * count + jpeg[2:]


def exif_rotated_jpeg() -> bytes:
    """Landscape JPEG, left RED / right BLUE, tagged with EXIF orientation 6."""
    width, height = EXIF_STORED_SIZE
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = RED
    pixels[:, width // 2 :] = BLUE
    exif = Image.Exif()
    exif[0x0112] = EXIF_ORIENTATION
    return encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())


def grey16_png() -> bytes:
    """16-bit greyscale PNG with three bands at GREY16_LEVELS."""
    width, height = GREY16_SIZE
    band = width // len(GREY16_LEVELS)
    levels = np.repeat(np.array(GREY16_LEVELS, np.uint16), band)
    return encode(Image.fromarray(np.tile(levels, (height, 1))), "PNG")


def palette_transparent_png() -> bytes:
    """Palette PNG: index 0 transparent (its colour is black), index 1 opaque RED on the right."""
    width, height = ALPHA_SIZE
    img = Image.new("P", ALPHA_SIZE, 0)
    img.putpalette([0, 0, 0, *RED])
    img.paste(1, (width // 2, 0, width, height))
    return encode(img, "PNG", transparency=0)


def rgba_png() -> bytes:
    """RGBA PNG: left half (0, 0, 0, 0) fully transparent, right half opaque GREEN."""
    width, height = ALPHA_SIZE
    pixels = np.zeros((height, width, 4), np.uint8)
    pixels[:, width // 2 :] = (*GREEN, 255)
    return encode(Image.fromarray(pixels, "RGBA"), "PNG")


def animation(fmt: str, **params) -> bytes:
    """Two-frame animation with FRAME_COLOURS in the given format (GIF, PNG=APNG, WEBP)."""
    frames = [Image.new("RGB", ANIMATION_SIZE, colour) for colour in FRAME_COLOURS]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **params)


def _photo(size: tuple[int, int], fmt: str, seed: int = 0, **params) -> bytes:
    return encode(Image.fromarray(make_photo_like_array(size, seed)), fmt, **params)


def corpus_cases() -> dict[str, tuple[bytes, str | None]]:
    """{filename: (file bytes, expected error_type or None)}, built in memory."""
    photo_jpeg = _photo((320, 240), "JPEG", seed=1, quality=90)
    large_jpeg = pad_jpeg_with_comments(photo_jpeg, CORPUS_MAX_BYTES + 1)
    html = (
        b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
        b"<body><h1>Not Found</h1><p>The requested URL was not found.</p></body></html>\n"
    )
    return {
        "empty.jpg": (b"", "EmptyFile"),
        "truncated.jpg": (photo_jpeg[: len(photo_jpeg) // 2], "TruncatedImage"),
        "text_named.jpg": (b"This is a plain text file, not a JPEG.\n" * 5, "NotAnImage"),
        "html_error_page.png": (html, "NotAnImage"),
        "random_bytes.jpg": (np.random.default_rng(7).bytes(4096), "NotAnImage"),
        "bomb_100000x100000.png": (bomb_png(), "DecompressionBomb"),
        "too_large.jpg": (large_jpeg, "TooLarge"),
        "photo.jpg": (photo_jpeg, None),
        "tiny_1x1.png": (encode(Image.new("RGB", (1, 1), GREEN), "PNG"), None),
        "tiny_1x1.jpg": (encode(Image.new("RGB", (1, 1), GREEN), "JPEG"), None),
        "grey.jpg": (encode(Image.new("L", (40, 30), 128), "JPEG"), None),
        "cmyk.jpg": (encode(Image.new("CMYK", (40, 30), CMYK_COLOUR), "JPEG"), None),
        "grey16.png": (grey16_png(), None),
        "palette_transparent.png": (palette_transparent_png(), None),
        "rgba.png": (rgba_png(), None),
        "animated.gif": (animation("GIF"), None),
        "animated.png": (animation("PNG"), None),
        "animated.webp": (animation("WEBP", lossless=True), None),
        "photo.webp": (_photo((160, 120), "WEBP", seed=2, quality=80), None),
        "photo.tiff": (_photo((160, 120), "TIFF", seed=3), None),
        "exif_rotated_6.jpg": (exif_rotated_jpeg(), None),
    }


def write_bad_input_corpus(directory: pathlib.Path) -> dict[str, str | None]:
    """Write every corpus case into ``directory``; return {filename: expected error_type}."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}
    for name, (content, error_type) in corpus_cases().items():
        (directory / name).write_bytes(content)
        expected[name] = error_type
    return expected
