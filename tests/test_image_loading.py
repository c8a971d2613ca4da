"""Tests for model.image_loading: the bad-input corpus, modes, orientation, fuzzing."""

from __future__ import annotations

import io
import pathlib
import pickle
import random
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from model.image_loading import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ERROR_TYPES,
    DecodedImage,
    ImageDecodeError,
    decode_image,
    sniff_is_image,
    upright_size,
)
from tests import image_corpus as corpus

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CASES = corpus.corpus_cases()


def _decode_file(data: bytes, target_size: tuple[int, int] = (16, 16)) -> DecodedImage:
    return decode_image(data, target_size, max_bytes=corpus.CORPUS_MAX_BYTES)


def _assert_close(pixel: np.ndarray, expected: tuple[int, int, int], tol: int = 8) -> None:
    diff = np.abs(pixel.astype(int) - np.array(expected))
    assert diff.max() <= tol, f"pixel {pixel.tolist()} is not close to {expected}"


# --------------------------------------------------------------------------- corpus


def test_write_bad_input_corpus_writes_every_case(tmp_path: pathlib.Path) -> None:
    expected = corpus.write_bad_input_corpus(tmp_path)
    assert expected == {name: error for name, (_, error) in CASES.items()}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)
    assert (tmp_path / "empty.jpg").stat().st_size == 0
    assert (tmp_path / "too_large.jpg").stat().st_size > corpus.CORPUS_MAX_BYTES
    assert (tmp_path / "bomb_100000x100000.png").stat().st_size < 1_000


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_case(name: str) -> None:
    data, expected_error = CASES[name]
    if expected_error is None:
        decoded = _decode_file(data, (12, 20))
        assert isinstance(decoded, DecodedImage)
        assert decoded.pixels.shape == (12, 20, 3)
        assert decoded.pixels.dtype == np.uint8
        assert decoded.pixels.flags["C_CONTIGUOUS"]
        assert decoded.width > 0 and decoded.height > 0
    else:
        with pytest.raises(ImageDecodeError) as info:
            _decode_file(data)
        assert info.value.error_type == expected_error
        assert info.value.message


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("photo.jpg", "JPEG"),
        ("tiny_1x1.png", "PNG"),
        ("animated.gif", "GIF"),
        ("animated.png", "PNG"),
        ("photo.webp", "WEBP"),
        ("photo.tiff", "TIFF"),
    ],
)
def test_format_is_reported(name: str, fmt: str) -> None:
    assert _decode_file(CASES[name][0]).format == fmt


def test_too_large_file_is_otherwise_valid() -> None:
    decoded = decode_image(CASES["too_large.jpg"][0], (8, 8), max_bytes=DEFAULT_MAX_BYTES)
    assert (decoded.width, decoded.height) == (320, 240)


# --------------------------------------------------------------------------- byte checks


def test_empty_and_too_large_are_checked_before_decoding() -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(b"", (8, 8))
    assert info.value.error_type == "EmptyFile"
    with pytest.raises(ImageDecodeError) as info:
        decode_image(b"x" * 101, (8, 8), max_bytes=100)  # garbage, but size wins
    assert info.value.error_type == "TooLarge"
    assert "101" in info.value.message and "100" in info.value.message


def test_not_an_image_message_quotes_first_bytes() -> None:
    with pytest.raises(ImageDecodeError) as info:
        _decode_file(CASES["html_error_page.png"][0])
    assert info.value.error_type == "NotAnImage"
    assert "b'<!DOCTYPE html" in info.value.message
    assert len(info.value.message) < 200


def test_damaged_header_with_image_signature_is_corrupt_not_not_an_image() -> None:
    png = corpus.encode(Image.new("RGB", (4, 4)), "PNG")
    bad_ihdr_crc = png[:29] + b"\0\0\0\0" + png[33:]
    with pytest.raises(ImageDecodeError) as info:
        decode_image(bad_ihdr_crc, (8, 8))
    assert info.value.error_type == "CorruptImage"
    assert "PNG" in info.value.message


# --------------------------------------------------------------------------- bombs


def test_own_pixel_limit_is_checked_from_header() -> None:
    png = corpus.encode(Image.new("RGB", (20, 20)), "PNG")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(png, (8, 8), max_pixels=399)
    assert info.value.error_type == "DecompressionBomb"
    assert info.value.message == "image declares 20x20 = 400 pixels, over the limit of 399"
    assert decode_image(png, (8, 8), max_pixels=400).width == 20


def test_bomb_rejected_without_pillows_global_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # someone disabled Pillow's check
    with pytest.raises(ImageDecodeError) as info:
        decode_image(corpus.bomb_png(), (8, 8))
    assert info.value.error_type == "DecompressionBomb"
    assert "100000x100000 = 10000000000" in info.value.message
    assert str(DEFAULT_MAX_PIXELS) in info.value.message


def test_bomb_caught_by_pillow_check_has_useful_message() -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(corpus.bomb_png(), (8, 8))
    assert info.value.message == (f"image declares 10000000000 pixels, over the limit of {DEFAULT_MAX_PIXELS}")


def test_pillow_bomb_warning_becomes_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 400 px: warning zone (1x to 2x)
    png = corpus.encode(Image.new("RGB", (20, 20)), "PNG")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(png, (8, 8))
    assert info.value.error_type == "DecompressionBomb"


def test_global_pillow_state_untouched() -> None:
    from PIL import ImageFile

    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    for data, _ in CASES.values():
        try:
            _decode_file(data)
        except ImageDecodeError:
            pass
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


# --------------------------------------------------------------------------- orientation


def test_exif_rotated_image_comes_back_upright() -> None:
    decoded = _decode_file(CASES["exif_rotated_6.jpg"][0], (64, 32))  # (h, w) = upright
    assert (decoded.width, decoded.height) == corpus.EXIF_UPRIGHT_SIZE
    pixels = decoded.pixels
    _assert_close(pixels[5, 16], corpus.RED)  # top half red
    _assert_close(pixels[58, 16], corpus.BLUE)  # bottom half blue
    _assert_close(pixels[5, 2], corpus.RED)
    _assert_close(pixels[5, 29], corpus.RED)  # whole top row red: not rotated the wrong way


@pytest.mark.parametrize(
    ("orientation", "top_left", "bottom_right"),
    [
        (1, corpus.RED, corpus.BLUE),
        (3, corpus.BLUE, corpus.RED),  # 180 degrees
        (6, corpus.RED, corpus.BLUE),  # 90 clockwise: left -> top
        (8, corpus.BLUE, corpus.RED),  # 90 counter-clockwise: right -> top
    ],
)
def test_exif_orientations(orientation: int, top_left: tuple, bottom_right: tuple) -> None:
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32] = corpus.RED
    pixels[:, 32:] = corpus.BLUE
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = corpus.encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_image(data, (16, 16))
    swapped = orientation in (5, 6, 7, 8)
    assert (decoded.width, decoded.height) == ((32, 64) if swapped else (64, 32))
    assert upright_size(data) == (decoded.width, decoded.height)  # from the header alone
    _assert_close(decoded.pixels[1, 1], top_left, tol=12)
    _assert_close(decoded.pixels[14, 14], bottom_right, tol=12)


def test_upright_size_reads_the_header_only_and_classifies_bad_bytes() -> None:
    assert upright_size(CASES["exif_rotated_6.jpg"][0]) == corpus.EXIF_UPRIGHT_SIZE
    truncated = corpus._photo((40, 30), "JPEG")[:-200]  # header intact, pixels missing
    assert upright_size(truncated) == (40, 30)
    with pytest.raises(ImageDecodeError) as exc:
        upright_size(b"plain text, not an image")
    assert exc.value.error_type == "NotAnImage"
    with pytest.raises(ImageDecodeError) as exc:
        upright_size(corpus.bomb_png())
    assert exc.value.error_type == "DecompressionBomb"


# --------------------------------------------------------------------------- modes


def test_rgba_transparent_pixels_become_white() -> None:
    decoded = _decode_file(CASES["rgba.png"][0], (10, 20))  # same size: no resampling
    assert decoded.pixels[5, 2].tolist() == list(corpus.WHITE)  # stored as (0, 0, 0, 0)
    assert decoded.pixels[5, 17].tolist() == list(corpus.GREEN)


def test_palette_transparency_becomes_white() -> None:
    decoded = _decode_file(CASES["palette_transparent.png"][0], (10, 20))
    assert decoded.pixels[5, 2].tolist() == list(corpus.WHITE)  # palette colour is black
    assert decoded.pixels[5, 17].tolist() == list(corpus.RED)


def test_la_half_transparent_is_blended_with_white() -> None:
    img = Image.new("LA", (4, 4), (0, 128))  # black at ~50% alpha
    decoded = decode_image(corpus.encode(img, "PNG"), (4, 4))
    assert np.all(np.abs(decoded.pixels.astype(int) - 127) <= 1)


def test_grey16_is_scaled_by_range_not_clipped() -> None:
    width, height = corpus.GREY16_SIZE
    decoded = _decode_file(CASES["grey16.png"][0], (height, width))
    assert decoded.pixels[5, 5].tolist() == [0, 0, 0]
    assert np.all(np.abs(decoded.pixels[5, 15].astype(int) - 128) <= 1)  # 32768 -> ~128
    assert decoded.pixels[5, 25].tolist() == [255, 255, 255]  # 65535 -> 255


def _tiff_from_array(array: np.ndarray, mode: str | None = None) -> bytes:
    if mode is None:
        img = Image.fromarray(array)
    else:
        img = Image.frombytes(mode, array.shape[::-1], array.tobytes())
    return corpus.encode(img, "TIFF")


@pytest.mark.parametrize(
    ("data_factory", "expected"),
    [
        (lambda: _tiff_from_array(np.array([[0, 32768, 65535]], ">u2"), "I;16B"), [0, 128, 255]),
        (lambda: _tiff_from_array(np.array([[0, 32768, 65535]], np.uint16)), [0, 128, 255]),
        (lambda: _tiff_from_array(np.array([[0, 32768, 65535]], np.int32)), [0, 128, 255]),
        (lambda: _tiff_from_array(np.array([[-10, 0, 10]], np.int32)), [0, 128, 255]),
        (lambda: _tiff_from_array(np.array([[0.0, 0.5, 1.0]], np.float32)), [0, 128, 255]),
        (lambda: _tiff_from_array(np.array([[-2.0, 0.0, 2.0]], np.float32)), [0, 128, 255]),
        (lambda: b"P5\n3 1\n65535\n" + np.array([0, 32768, 65535], ">u2").tobytes(), [0, 128, 255]),
    ],
    ids=["I;16B", "I;16", "I-16bit-range", "I-other-range", "F-unit", "F-other", "PGM16"],
)
def test_wide_greyscale_modes_scaled(data_factory, expected: list[int]) -> None:
    decoded = decode_image(data_factory(), (1, 3))
    grey = decoded.pixels[0, :, 0].astype(int)
    assert np.all(np.abs(grey - expected) <= 1), grey.tolist()
    assert np.all(decoded.pixels[..., 0] == decoded.pixels[..., 2])


def test_cmyk_gives_sensible_rgb() -> None:
    decoded = _decode_file(CASES["cmyk.jpg"][0])
    _assert_close(decoded.pixels[8, 8], corpus.RED, tol=10)


@pytest.mark.parametrize("mode", ["1", "L", "P", "YCbCr", "LAB", "HSV", "RGBX", "I;16L", "La", "RGBa", "PA"])
def test_every_mode_converts_to_rgb(mode: str) -> None:
    base = Image.new("RGB", (6, 4), (200, 100, 50))
    if mode == "La":
        img = Image.frombytes(mode, (6, 4), bytes([90, 128]) * 24)
    elif mode in ("RGBa", "PA"):
        img = base.convert("RGBA").convert(mode)
    elif mode == "I;16L":
        img = Image.frombytes(mode, (6, 4), np.full((4, 6), 1000, "<u2").tobytes())
    else:
        img = base.convert(mode)
    # Pillow cannot save most of these modes, so go through the private path on purpose.
    from model.image_loading import _to_rgb

    rgb = _to_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == (6, 4)
    if mode == "La":  # premultiplied grey 90 at alpha 128 -> 179 un-premultiplied, over white
        assert abs(rgb.getpixel((0, 0))[0] - 217) <= 1


def test_animated_images_give_first_frame() -> None:
    for name in ("animated.gif", "animated.png", "animated.webp"):
        decoded = _decode_file(CASES[name][0])
        assert np.all(decoded.pixels == np.array(corpus.FRAME_COLOURS[0], np.uint8)), name


def test_one_by_one_image_decodes() -> None:
    decoded = decode_image(CASES["tiny_1x1.png"][0], (299, 299))
    assert (decoded.width, decoded.height) == (1, 1)
    assert decoded.pixels.shape == (299, 299, 3)
    assert np.all(decoded.pixels == np.array(corpus.GREEN, np.uint8))


# --------------------------------------------------------------------------- resize / draft


def test_non_square_target_shape() -> None:
    decoded = _decode_file(CASES["photo.jpg"][0], (120, 200))
    assert decoded.pixels.shape == (120, 200, 3)
    assert (decoded.width, decoded.height) == (320, 240)


def test_target_size_is_height_width() -> None:
    img = Image.new("RGB", (40, 20), corpus.RED)
    img.paste(corpus.BLUE, (20, 0, 40, 20))  # right half blue
    decoded = decode_image(corpus.encode(img, "PNG"), (20, 40))  # identity size
    assert decoded.pixels[10, 5].tolist() == list(corpus.RED)
    assert decoded.pixels[10, 35].tolist() == list(corpus.BLUE)


@pytest.mark.parametrize("bad", [(0, 10), (10, -1), (10,), "299", None])
def test_bad_target_size_is_a_programming_error(bad) -> None:
    with pytest.raises(ValueError):
        decode_image(CASES["photo.jpg"][0], bad)


def _spy_on_draft(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        before = self.size
        result = original(self, mode, size)
        calls.append((mode, size, before, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return calls


def test_big_jpeg_decodes_in_draft_mode(tmp_path: pathlib.Path, monkeypatch) -> None:
    data = corpus.make_photo_like_jpeg(tmp_path / "big.jpg", size=(4000, 3000), seed=5).read_bytes()
    calls = _spy_on_draft(monkeypatch)
    start = time.perf_counter()
    decoded = decode_image(data, (299, 299))
    elapsed = time.perf_counter() - start
    assert (decoded.width, decoded.height) == (4000, 3000)
    assert decoded.pixels.shape == (299, 299, 3)
    assert calls == [("RGB", (299, 299), (4000, 3000), (500, 375))]  # libjpeg scale 1/8
    assert elapsed < 1.0, f"draft decode took {elapsed:.2f}s"
    # The reduced decode still looks like the full one.
    with Image.open(io.BytesIO(data)) as img:
        full = np.asarray(img.convert("RGB").resize((299, 299), Image.BILINEAR))
    assert np.abs(full.astype(int) - decoded.pixels.astype(int)).mean() < 4


def test_draft_request_accounts_for_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_on_draft(monkeypatch)
    decode_image(CASES["exif_rotated_6.jpg"][0], (10, 20))  # upright (h, w)
    # Stored image is rotated: the upright width (20) lies along the stored height.
    assert [call[1] for call in calls] == [(10, 20)]


def test_non_jpeg_does_not_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_on_draft(monkeypatch)
    decode_image(CASES["photo.webp"][0], (10, 20))
    assert calls == []


# --------------------------------------------------------------------------- fuzz


def _fuzz_inputs(count: int = 200, seed: int = 20240601) -> list[bytes]:
    """Deterministic truncations, bit flips, overwrites, splices and insertions of valid files."""
    rng = random.Random(seed)
    bases = [
        corpus.encode(Image.fromarray(corpus.make_photo_like_array((48, 32), 11)), "JPEG"),
        corpus.encode(Image.fromarray(corpus.make_photo_like_array((40, 24), 12)), "PNG"),
        corpus.encode(Image.new("RGBA", (24, 16), (10, 200, 30, 128)), "PNG"),
        CASES["animated.gif"][0],
        CASES["exif_rotated_6.jpg"][0],
        CASES["photo.webp"][0],
    ]
    inputs = []
    for i in range(count):
        data = bytearray(rng.choice(bases))
        op = i % 5
        if op == 0:
            data = data[: rng.randrange(1, len(data))]
        elif op == 1:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif op == 2:
            start = rng.randrange(len(data))
            data[start : start + rng.randint(1, 64)] = rng.randbytes(rng.randint(1, 64))
        elif op == 3:
            a, b = sorted(rng.randrange(len(data)) for _ in range(2))
            data = data[:a] + data[b:] + data[a:b]
        else:
            at = rng.randrange(len(data))
            data[at:at] = rng.randbytes(rng.randint(1, 256))
        inputs.append(bytes(data))
    inputs += [rng.randbytes(rng.randint(1, 512)) for _ in range(10)]
    signatures = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"II*\x00")
    inputs += [sig + rng.randbytes(100) for sig in signatures]
    return inputs


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF etc.
def test_fuzz_only_raises_image_decode_error() -> None:
    outcomes: dict[str, int] = {}
    for data in _fuzz_inputs():
        try:
            decoded = decode_image(data, (7, 9))
        except ImageDecodeError as exc:
            assert exc.error_type in ERROR_TYPES
            assert exc.message
            outcomes[exc.error_type] = outcomes.get(exc.error_type, 0) + 1
        else:
            assert decoded.pixels.shape == (7, 9, 3) and decoded.pixels.dtype == np.uint8
            outcomes["ok"] = outcomes.get("ok", 0) + 1
    assert len(outcomes) >= 3, outcomes  # the mutations really exercise several paths


# --------------------------------------------------------------------------- misc API


def test_error_is_picklable_and_validated() -> None:
    err = ImageDecodeError("TruncatedImage", "cut short")
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.error_type, clone.message) == ("TruncatedImage", "cut short")
    assert "TruncatedImage" in str(clone)
    with pytest.raises(ValueError):
        ImageDecodeError("Whatever", "x")


def test_sniff_is_image() -> None:
    assert sniff_is_image(CASES["photo.jpg"][0])
    assert sniff_is_image(CASES["photo.webp"][0])
    assert sniff_is_image(CASES["photo.tiff"][0])
    assert sniff_is_image(CASES["animated.gif"][0])
    assert not sniff_is_image(CASES["html_error_page.png"][0])
    assert not sniff_is_image(b"")


def test_module_imports_neither_tensorflow_nor_beam() -> None:
    code = (
        "import sys, model.image_loading; "
        "heavy = ('tensorflow', 'apache_beam', 'keras'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in heavy]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
