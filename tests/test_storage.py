"""model.storage's bounded byte reader and model.tables' column reader (no TensorFlow)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from model import storage
from model.tables import read_columns


def test_read_bytes_bounded_accepts_up_to_the_limit_and_refuses_more(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * 100)
    assert storage.read_bytes(str(path)) == b"x" * 100  # unbounded, as before
    assert storage.read_bytes(str(path), max_bytes=100) == b"x" * 100
    assert storage.read_bytes(f"file://{path}", max_bytes=1000) == b"x" * 100
    with pytest.raises(storage.ObjectTooLarge, match="over the limit of 99 bytes") as caught:
        storage.read_bytes(str(path), max_bytes=99)
    assert caught.value.max_bytes == 99 and isinstance(caught.value, ValueError)
    assert storage.read_prefix(str(path), 10) == b"x" * storage.read_limit(10)
    (tmp_path / "empty").write_bytes(b"")
    assert storage.read_bytes(str(tmp_path / "empty"), max_bytes=5) == b""
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(str(tmp_path / "missing.jpg"), max_bytes=5)


def test_is_local_decides_from_the_text():
    assert storage.is_local("/data/a.jpg") and storage.is_local("rel/a.jpg") and storage.is_local("file:///data/a.jpg")
    assert not any(storage.is_local(u) for u in ("s3://b/a.jpg", "gs://b/a.jpg", "memory://a", "az://c/a"))
    assert storage.local_path("file:///data/a.jpg") == "/data/a.jpg" and storage.local_path("rel/a") == "rel/a"


def test_atomic_local_path_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "new" / "part-00001.npz"
    with storage.atomic_local_path(str(target)) as temp:
        assert os.path.basename(temp).startswith(storage.TEMP_PREFIX) and temp.endswith("-part-00001.npz")
        assert os.path.dirname(temp) == str(target.parent) and not target.exists()
        np.savez(temp, x=np.arange(3))  # a writer that insists on the suffix keeps the name
    assert os.listdir(target.parent) == ["part-00001.npz"] and np.load(target)["x"].tolist() == [0, 1, 2]
    with pytest.raises(RuntimeError, match="cut short"), storage.atomic_local_path(str(target)) as temp:
        Path(temp).write_bytes(b"half")
        raise RuntimeError("cut short")
    assert os.listdir(target.parent) == ["part-00001.npz"] and np.load(target)["x"].tolist() == [0, 1, 2]
    folder = tmp_path / "cache" / "entry"
    with storage.atomic_local_path(str(folder)) as temp:
        os.makedirs(temp)
        Path(temp, "model.xml").write_text("<net/>")
    assert os.listdir(folder.parent) == ["entry"] and (folder / "model.xml").read_text() == "<net/>"
    with pytest.raises(OSError), storage.atomic_local_path(str(folder)) as temp:  # a full folder is not replaced
        os.makedirs(temp)
        Path(temp, "model.xml").write_text("<other/>")
    assert os.listdir(folder.parent) == ["entry"] and (folder / "model.xml").read_text() == "<net/>"


def test_write_atomically_local_and_file_uri(tmp_path):
    written = storage.write_atomically(f"file://{tmp_path}/a/b.bin", b"one")
    assert written == str(tmp_path / "a" / "b.bin") and (tmp_path / "a" / "b.bin").read_bytes() == b"one"
    storage.write_bytes(str(tmp_path / "a" / "b.bin"), b"two")  # overwrites, whole
    assert os.listdir(tmp_path / "a") == ["b.bin"] and (tmp_path / "a" / "b.bin").read_bytes() == b"two"


def test_read_columns_selects_and_names_missing_columns(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("image,caption,extra\na.jpg,a dog,1\n")
    assert read_columns(str(table), ["caption", "image"]).to_pylist() == [{"caption": "a dog", "image": "a.jpg"}]
    with pytest.raises(ValueError, match=r"manifest .*t.csv has no column\(s\) \['uri'\]; it has"):
        read_columns(str(table), ["uri", "image"], "manifest")
    (tmp_path / "t.xlsx").write_bytes(b"PK")
    with pytest.raises(ValueError, match="unsupported table format"):
        read_columns(str(tmp_path / "t.xlsx"), ["image"])


def test_feature_extraction_reads_images_bounded(tmp_path):
    """training.features reads through the bounded reader: an oversized file is reported as
    undecodable (TooLarge), never read whole."""
    pytest.importorskip("PIL")
    from training.datasets import CaptionedImage
    from training.features import load_image

    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + b"\0" * 5000)
    image_id, pixels, kind, message = load_image(CaptionedImage("big.jpg", str(big), ()), (32, 32), max_bytes=1000)
    assert (image_id, pixels, kind) == ("big.jpg", None, "undecodable")
    assert message.startswith("TooLarge:")
    assert load_image(CaptionedImage("m.jpg", str(tmp_path / "m.jpg"), ()), (32, 32))[2] == "missing"
