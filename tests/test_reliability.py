"""Reliability and security through the real pipeline: bad inputs, crashes, injected faults,
tampered model artifacts, unsafe output directories -- and nothing lost.

Every test runs the real pipeline: in-process (``tests.pipeline_helpers.run_pipeline`` /
``run_pipeline.main``) where a fault must be injected into this process, or ``python
run_pipeline.py`` as a subprocess where a real process is needed (SIGKILL, dropped privileges).
Nothing here mocks storage, Beam or the model; the only patched code is in the two
fault-injection tests, and each says exactly what it patches and why.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pytest
from PIL import Image, ImageOps

from tests.factories import write_jpeg
from tests.image_corpus import CORPUS_MAX_BYTES, EXIF_UPRIGHT_SIZE, corpus_cases, write_bad_input_corpus
from tests.pipeline_helpers import read_rows, read_summary, run_pipeline

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REPO = Path(__file__).resolve().parents[1]
CORPUS = corpus_cases()  # {name: (bytes, expected error_type or None)}; built once, in memory

# Inputs added to the generated corpus, with the error row each must become.
EXTRA_ERRORS = {
    "unreadable.jpg": "PermissionDenied",  # a valid JPEG with mode 000 (see _unreadable_prefix)
    "fifo.jpg": "NotARegularFile",  # a named pipe: opening it would block the job forever
    "directory.jpg": "IsADirectory",  # a directory named like an image, given as an explicit path
    "never_existed.jpg": "FileNotFound",  # listed in a manifest, absent on disk
}
# Dangling symlinks, link loops and directories named *.jpg inside a glob: tests/test_lake_entries.py
# (the glob here ends in "*", under which a directory is a folder, not an entry).
EXIF_HELPERS = ("exif_upright.png", "exif_stored.png")  # lossless copies of exif_rotated_6.jpg
READ_STAGE_ERRORS = {"TooLarge", "PermissionDenied", "NotARegularFile", "IsADirectory", "FileNotFound"}

# Drop the two capabilities that let root ignore file permission bits. The process stays uid 0,
# so it can still reach pytest's 0700 temp dirs and the interpreter under /root, but a file with
# mode 000 is now genuinely unreadable to it (the kernel applies the owner bits: ---).
DROP_DAC = [
    "setpriv",
    "--bounding-set",
    "-dac_override,-dac_read_search",
    "--inh-caps",
    "-dac_override,-dac_read_search",
]


def _env() -> dict[str, str]:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")


def _cli(args: list[str], prefix: list[str] | None = None) -> list[str]:
    return [*(prefix or []), sys.executable, str(REPO / "run_pipeline.py"), *args]


def _all_rows(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return read_rows(out, "captions"), read_rows(out, "errors")


def _stale_temp_dirs(out: Path) -> list[Path]:
    return sorted(
        p for sub in ("captions", "errors") for pattern in ("beam-temp-*", ".tmp-*") for p in (out / sub).glob(pattern)
    )


class FifoTripwire:
    """A named pipe named like an image, plus a thread proving whether anyone opened it.

    Opening a FIFO for reading blocks until a writer appears, so a pipeline that opens it would
    hang. The thread keeps trying a non-blocking open for writing, which succeeds only while a
    reader is waiting: it then counts the open and closes at once (the reader sees EOF), so a
    regression fails the assertion on ``opened`` instead of hanging the test run.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.opened = 0
        os.mkfifo(path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody has it open for reading
                self._stop.wait(0.02)
                continue
            self.opened += 1
            os.close(fd)

    def __enter__(self) -> FifoTripwire:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _unreadable_prefix(path: Path) -> tuple[list[str] | None, str]:
    """A command prefix under which ``path`` (mode 000) really cannot be read, else (None, why).

    As an ordinary user chmod 000 is enough. As root (these tests usually run as root, where
    chmod 000 stops nothing) the pipeline subprocess runs without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH via setpriv; the probe proves the denial before the test relies on it.
    """
    candidates = [[]] if os.geteuid() != 0 else []
    if os.geteuid() == 0 and shutil.which("setpriv"):
        candidates.append(DROP_DAC)
    for prefix in candidates:
        try:
            probe = subprocess.run([*prefix, "head", "-c", "1", str(path)], capture_output=True, timeout=30)
        except OSError:
            continue
        if probe.returncode != 0 and b"Permission denied" in probe.stderr:
            return prefix, ""
    return None, "cannot make a file genuinely unreadable here (root, and setpriv cannot drop CAP_DAC_OVERRIDE)"


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _exif_helpers() -> dict[str, bytes]:
    """The EXIF-rotated JPEG's own decoded pixels, losslessly: turned upright by Pillow, and as
    stored (no EXIF, not rotated). The pipeline must treat the JPEG exactly like the first."""
    stored = Image.open(io.BytesIO(CORPUS["exif_rotated_6.jpg"][0]))
    stored.load()
    return {
        "exif_upright.png": _png(ImageOps.exif_transpose(stored)),
        "exif_stored.png": _png(Image.fromarray(np.asarray(stored))),
    }


# --------------------------------------------------------------------------- 1. bad inputs


@dataclass
class CorpusRun:
    inputs: Path
    out: Path
    summary: dict[str, Any]
    captions: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    fifo_opens: int
    unreadable_skip: str = ""
    matched_entries: list[str] = field(default_factory=list)

    def rows_for(self, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        uri = str(self.inputs / name)
        return ([r for r in self.captions if r["image_uri"] == uri], [r for r in self.errors if r["image_uri"] == uri])


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory, tiny_artifact: str) -> CorpusRun:
    """ONE run of ``python run_pipeline.py`` over the whole bad-input corpus plus the extras:

    * ``--input inputs/*``: the corpus, the EXIF helpers, unreadable.jpg (mode 000) and fifo.jpg;
    * ``--input inputs/photo.jpg``: the same path a second time;
    * ``--input inputs/directory.jpg``: a directory, named explicitly (a glob lists files only);
    * ``--input_manifest``: a manifest listing never_existed.jpg.
    """
    base = tmp_path_factory.mktemp("reliability")
    inputs = base / "inputs"
    write_bad_input_corpus(inputs)
    for name, data in _exif_helpers().items():
        (inputs / name).write_bytes(data)
    unreadable = inputs / "unreadable.jpg"
    unreadable.write_bytes(CORPUS["photo.jpg"][0])
    unreadable.chmod(0)
    prefix, why = _unreadable_prefix(unreadable)
    if prefix is None:
        unreadable.unlink()
    (inputs / "directory.jpg").mkdir()
    manifest = base / "manifest.csv"
    manifest.write_text(f"image_uri\n{inputs / 'never_existed.jpg'}\n")
    out = base / "out"
    args = [
        "--input",
        f"{inputs}/*",
        "--input",
        str(inputs / "photo.jpg"),
        "--input",
        str(inputs / "directory.jpg"),
        "--input_manifest",
        str(manifest),
        "--output",
        str(out),
        "--model",
        tiny_artifact,
        "--max_image_bytes",
        str(CORPUS_MAX_BYTES),
        "--emit_embeddings",
        "--progress_seconds",
        "0",
    ]
    with FifoTripwire(inputs / "fifo.jpg") as fifo:
        files = sorted(p.name for p in inputs.iterdir() if not p.is_dir())  # what the glob matches
        proc = subprocess.run(_cli(args, prefix), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    entries = files + ["photo.jpg", "directory.jpg", "never_existed.jpg"]
    captions, errors = _all_rows(out)
    return CorpusRun(inputs, out, read_summary(out), captions, errors, fifo.opened, why, entries)


CASES = sorted(CORPUS) + sorted(EXTRA_ERRORS)


@pytest.mark.parametrize("name", CASES)
def test_bad_input_ends_as_exactly_one_clear_row(corpus_run: CorpusRun, name: str):
    if name == "unreadable.jpg" and corpus_run.unreadable_skip:
        pytest.skip(corpus_run.unreadable_skip)
    expected = EXTRA_ERRORS[name] if name in EXTRA_ERRORS else CORPUS[name][1]
    captions, errors = corpus_run.rows_for(name)
    errors = [e for e in errors if e["error_type"] != "DuplicateInput"]  # photo.jpg: see test below
    assert len(captions) + len(errors) == 1, (captions, errors)
    if expected is None:
        (row,) = captions
        assert row["caption"] and row["score"] <= 0 and len(row["embedding"]) == 576
        if name != "exif_rotated_6.jpg":  # asserted in its own test
            assert (row["width"], row["height"]) == Image.open(io.BytesIO(CORPUS[name][0])).size
        return
    (row,) = errors
    assert row["error_type"] == expected, row
    assert row["stage"] == ("read" if expected in READ_STAGE_ERRORS else "decode"), row
    assert row["image_id"] == name
    assert len(row["message"]) > 15, row  # says what is wrong, not just the type
    if expected == "PermissionDenied":
        assert "Permission denied" in row["message"]


def test_same_path_twice_is_captioned_once_plus_a_duplicate_row(corpus_run: CorpusRun):
    captions, errors = corpus_run.rows_for("photo.jpg")
    assert len(captions) == 1
    (dup,) = errors
    assert dup["error_type"] == "DuplicateInput" and dup["stage"] == "match" and "more than once" in dup["message"]
    assert [e["image_uri"] for e in corpus_run.errors if e["error_type"] == "DuplicateInput"] == [dup["image_uri"]]


def test_every_input_is_accounted_for(corpus_run: CorpusRun):
    s = corpus_run.summary
    assert s["matched"] == len(corpus_run.matched_entries) == s["captioned"] + s["failed"]
    assert s["captioned"] == len(corpus_run.captions) and s["failed"] == len(corpus_run.errors)
    rows = corpus_run.captions + corpus_run.errors
    assert sorted(Path(r["image_uri"]).name for r in rows) == sorted(corpus_run.matched_entries)
    good = [n for n, (_, e) in CORPUS.items() if e is None] + list(EXIF_HELPERS)
    assert sorted(r["image_id"] for r in corpus_run.captions) == sorted(good)


def test_fifo_is_refused_without_being_opened(corpus_run: CorpusRun):
    (row,) = corpus_run.rows_for("fifo.jpg")[1]
    assert row["error_type"] == "NotARegularFile" and "not opened" in row["message"]
    assert corpus_run.fifo_opens == 0  # the job never blocked on it


def test_exif_rotated_jpeg_is_captioned_upright(corpus_run: CorpusRun):
    (rotated,) = corpus_run.rows_for("exif_rotated_6.jpg")[0]
    (upright,) = corpus_run.rows_for("exif_upright.png")[0]
    (stored,) = corpus_run.rows_for("exif_stored.png")[0]
    assert (rotated["width"], rotated["height"]) == EXIF_UPRIGHT_SIZE == (upright["width"], upright["height"])
    assert (stored["width"], stored["height"]) == EXIF_UPRIGHT_SIZE[::-1]
    # The encoder got the upright pixels: its embedding of the EXIF JPEG equals that of the
    # pre-rotated lossless copy and clearly differs from that of the stored (sideways) pixels.
    e_rot, e_up, e_stored = (np.asarray(r["embedding"], np.float64) for r in (rotated, upright, stored))
    scale = np.linalg.norm(e_up)
    assert scale > 0
    assert np.linalg.norm(e_rot - e_up) <= 1e-3 * scale
    assert np.linalg.norm(e_stored - e_up) >= 0.1 * scale
    assert rotated["caption"] == upright["caption"]


# --------------------------------------------------------------------------- 2. faults


def _magenta_png(path: Path) -> Path:
    Image.new("RGB", (48, 40), (255, 0, 255)).save(path, "PNG")
    return path


def _is_magenta(image: np.ndarray) -> bool:
    return bool((image.reshape(-1, 3) == (255, 0, 255)).all())


def test_worker_exception_costs_the_image_not_the_batch(tmp_path, tiny_artifact, monkeypatch):
    """No real image makes the encoder raise, so the fault is injected: CaptionModel.caption_images
    (what the CaptionModelHandler calls per batch) raises for any batch holding an all-magenta image.
    Everything else -- reading, decoding, batching, the per-image retry, the Parquet sinks -- is
    the real pipeline on the in-process runner (same process, so the patch reaches the worker)."""
    from model.captioner import CaptionModel

    images = tmp_path / "images"
    for i in range(7):
        write_jpeg(images / f"ok{i}.jpg", size=(48, 40), seed=i)
    _magenta_png(images / "poison.png")
    real = CaptionModel.caption_images
    calls: list[tuple[int, bool]] = []

    def flaky(self, batch, settings=None):
        poisoned = any(_is_magenta(img) for img in batch)
        calls.append((len(batch), poisoned))
        if poisoned:
            raise RuntimeError("injected encoder fault (magenta marker image)")
        return real(self, batch, settings)

    monkeypatch.setattr(CaptionModel, "caption_images", flaky)
    out = tmp_path / "out"
    summary = run_pipeline(
        ["--input", f"{images}/*", "--output", str(out), "--model", tiny_artifact, "--batch_size", "4"]
    )
    captions, errors = _all_rows(out)
    (err,) = errors
    assert err["image_id"] == "poison.png" and err["stage"] == "infer"
    assert err["error_type"] == "RuntimeError" and "injected encoder fault" in err["message"]
    assert sorted(r["image_id"] for r in captions) == [f"ok{i}.jpg" for i in range(7)]
    # The poisoned batch really held other images (4 at once), then was retried one by one:
    # its 3 batch mates were captioned alone, the marker image failed alone.
    assert calls.count((4, True)) == 1 and calls.count((1, True)) == 1
    assert calls.count((1, False)) == 3 and calls.count((4, False)) == 1
    assert summary["matched"] == 8 == summary["captioned"] + summary["failed"]
    assert summary["failed"] == 1


def test_file_deleted_between_matching_and_reading(tmp_path, tiny_artifact, monkeypatch):
    """A real race is not reproducible, so the deletion is placed deterministically: the glob is
    matched by the real MatchGlob (one stage), then the file is removed as its URI passes the
    dedupe step that runs after the shuffle and directly before ReadAndDecode. The only patched
    code is that hook; matching and reading are the real ones."""
    from beam_pipeline.dedupe import DedupeAndResume

    images = tmp_path / "images"
    for name in ("a.jpg", "b.jpg", "vanishing.jpg"):
        write_jpeg(images / name, size=(40, 30), seed=len(name))
    real = DedupeAndResume.process
    removed: list[str] = []

    def delete_then_process(self, element):
        uri, _ = element
        if uri.endswith("/vanishing.jpg"):
            os.remove(uri)
            removed.append(uri)
        yield from real(self, element)

    monkeypatch.setattr(DedupeAndResume, "process", delete_then_process)
    out = tmp_path / "out"
    summary = run_pipeline(["--input", f"{images}/*.jpg", "--output", str(out), "--model", tiny_artifact])
    captions, errors = _all_rows(out)
    assert removed == [str(images / "vanishing.jpg")]
    assert sorted(r["image_id"] for r in captions) == ["a.jpg", "b.jpg"]
    (err,) = errors
    assert err["image_id"] == "vanishing.jpg" and err["stage"] == "read" and err["error_type"] == "FileNotFound"
    assert "No such file" in err["message"]
    assert summary["matched"] == 3 == summary["captioned"] + summary["failed"]


def _committed_rows(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of the committed files (a pyarrow dataset skips temp names starting with '.')."""
    return tuple(
        pads.dataset(str(out / sub), format="parquet").to_table().to_pylist() if (out / sub).is_dir() else []
        for sub in ("captions", "errors")
    )


def test_sigkill_mid_run_then_resume_holds_every_image_once(tmp_path, tiny_artifact):
    """kill -9 of the whole process group once rows are committed (found by polling the output),
    then --resume: every input once, the committed rows are not redone, and at most one commit
    interval of captioned rows was lost."""
    images = tmp_path / "images"
    for i in range(150):
        write_jpeg(images / f"img{i:03d}.jpg", size=(64, 64), seed=i)
    (images / "text.jpg").write_text("not an image\n")
    (images / "empty.jpg").write_bytes(b"")
    expected = sorted(str(p) for p in images.iterdir())
    out = tmp_path / "out"
    every = 8
    args = [
        "--input",
        f"{images}/*.jpg",
        "--output",
        str(out),
        "--model",
        tiny_artifact,
        "--batch_size",
        "4",
        "--commit_every",
        str(every),
        "--progress_seconds",
        "0.05",
    ]
    proc = subprocess.Popen(
        _cli(args),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    progress: list[int] = []  # captioned counts of the progress lines, read as they come

    def read_progress() -> None:
        for line in proc.stderr:
            found = re.search(r"progress \(pid \d+\): (\d+) images captioned", line)
            if found:
                progress.append(int(found.group(1)))

    reader = threading.Thread(target=read_progress, daemon=True)
    reader.start()
    deadline = time.monotonic() + 240  # never hang the suite
    seen_before_kill = None
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if len(_committed_rows(out)[0]) >= 3 * every:  # poll the output: rows are committed
                seen_before_kill = progress[-1] if progress else 0
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=10)
    assert seen_before_kill is not None and proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
    assert not (out / "summary.json").exists()  # it really died mid-run
    captions, errors = _committed_rows(out)  # every committed file reads
    committed = {r["image_uri"] for r in captions + errors}
    assert len(committed) == len(captions) + len(errors) < 152, "committed rows are duplicated, or nothing was left"
    assert seen_before_kill - len(captions) < every, "more than one commit interval of captions was lost"

    rerun = subprocess.run(_cli(args + ["--resume"]), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    captions, errors = _all_rows(out)
    uris = [r["image_uri"] for r in captions + errors]
    assert len(uris) == len(set(uris)), "an image appears twice"
    assert sorted(uris) == expected, "an image is missing"
    assert {Path(e["image_uri"]).name: e["error_type"] for e in errors} == {
        "text.jpg": "NotAnImage",
        "empty.jpg": "EmptyFile",
    }
    assert not _stale_temp_dirs(out)
    s = read_summary(out)
    assert s["matched"] == 152 == s["captioned"] + s["failed"] + s["skipped_resume"]
    assert s["skipped_resume"] == s["skipped_from_interrupted"] == len(committed)  # nothing committed is redone
    assert s["captioned"] + s["failed"] == 152 - len(committed)


# --------------------------------------------------------------------------- 3. artifacts, output dirs


def _resign(model: Path) -> None:
    """Rewrite manifest.json for the files as they are now: a consistent, 'validly signed'
    artifact whose content is wrong, so the checks behind the hashes are what refuse it."""
    from model.artifact import MANIFEST, compute_model_id
    from model.storage import sha256_hex

    manifest = json.loads((model / MANIFEST).read_text())
    for name in list(manifest["files"]):
        data = (model / name).read_bytes()
        manifest["files"][name] = {"sha256": sha256_hex(data), "bytes": len(data)}
    manifest["model_id"] = compute_model_id({n: m["sha256"] for n, m in manifest["files"].items()})
    (model / MANIFEST).write_text(json.dumps(manifest))


def _edit_config(model: Path, **decoder: Any) -> None:
    config = json.loads((model / "config.json").read_text())
    config["decoder"].update(decoder)
    (model / "config.json").write_text(json.dumps(config))
    _resign(model)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _vocab_size(model: Path) -> int:
    return json.loads((model / "config.json").read_text())["decoder"]["vocab_size"]


TAMPERS = {
    "missing_vocab": (lambda m: (m / "vocab.json").unlink(), r"vocab\.json is missing"),
    "missing_manifest": (lambda m: (m / "manifest.json").unlink(), r"manifest\.json is missing"),
    "truncated_decoder_weights": (
        lambda m: _truncate(m / "decoder.weights.h5"),
        r"decoder\.weights\.h5 of model artifact .* has \d+ bytes but the manifest records",
    ),
    "flipped_byte_in_weights": (lambda m: _flip_byte(m / "decoder.weights.h5"), r"does not match its SHA-256"),
    "config_of_another_vocab_size": (
        lambda m: _edit_config(m, vocab_size=_vocab_size(m) + 7),
        r"says vocab_size=\d+ but vocab\.json has \d+ tokens",
    ),
    "weights_of_another_decoder": (
        lambda m: _edit_config(m, units=48, image_dense=[64, 48]),
        r"decoder\.weights\.h5 .* does not fit the configured decoder",
    ),
    "pickle_instead_of_weights": (
        lambda m: ((m / "decoder.weights.h5").write_bytes(pickle.dumps({"x": 1})), _resign(m)),
        r"not an HDF5 weights file \(refused\)",
    ),
}


@pytest.fixture()
def guarded_inputs(tmp_path):
    """An input folder with a real image and a FIFO tripwire: proof that nothing was opened."""
    images = tmp_path / "images"
    write_jpeg(images / "a.jpg")
    with FifoTripwire(images / "b.jpg") as fifo:
        yield images, fifo


def _refused(args: list[str], capsys: pytest.CaptureFixture) -> str:
    import run_pipeline as cli

    assert cli.main(args) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(TAMPERS) + ["expected_model_id_mismatch"])
def test_bad_model_artifact_is_refused_before_any_image_is_read(case, tmp_path, tiny_artifact, guarded_inputs, capsys):

    images, fifo = guarded_inputs
    model = tmp_path / "model"
    shutil.copytree(tiny_artifact, model)
    extra: list[str] = []
    if case == "expected_model_id_mismatch":
        extra, pattern = ["--expected_model_id", "0123456789abcdef"], r"has model_id \w+, expected 0123456789abcdef"
    else:
        tamper, pattern = TAMPERS[case]
        tamper(model)
    out = tmp_path / "out"
    err = _refused(["--input", f"{images}/*.jpg", "--output", str(out), "--model", str(model), *extra], capsys)
    assert re.search(pattern, err), err
    assert err.startswith("refused: ")
    assert not out.exists()  # nothing was written ...
    assert fifo.opened == 0  # ... and no input was opened


def test_output_in_or_inside_the_input_directory_is_refused(tmp_path, tiny_artifact, guarded_inputs, capsys):
    images, fifo = guarded_inputs
    before = sorted(p.name for p in images.iterdir())
    for output in (images, images / "out", images / "deeper" / "out"):
        err = _refused(["--input", f"{images}/*.jpg", "--output", str(output), "--model", tiny_artifact], capsys)
        assert "inside the input directory" in err
    assert sorted(p.name for p in images.iterdir()) == before
    assert fifo.opened == 0


def test_existing_output_without_resume_is_refused_and_left_untouched(tmp_path, tiny_artifact, guarded_inputs, capsys):
    images, fifo = guarded_inputs
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier-results.txt").write_text("keep me")
    err = _refused(["--input", f"{images}/*.jpg", "--output", str(out), "--model", tiny_artifact], capsys)
    assert "not empty; use --resume" in err
    assert [p.name for p in out.iterdir()] == ["earlier-results.txt"]
    assert fifo.opened == 0
