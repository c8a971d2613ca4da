"""The HTML caption report: real Parquet + JPEG fixtures, pure-function tests, and a headless
Chromium test of the rendered page (DOM after JS, sorting via the URL fragment, screenshot)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from beam_pipeline.schemas import ERROR_SCHEMA, caption_schema
from caption_report import (
    CaptionRow,
    CaptionSample,
    ErrorRows,
    ReportData,
    cli,
    load_captions,
    load_errors,
    load_summary,
    make_thumbnail,
    make_thumbnails,
    render_html,
    write_report,
)
from caption_report import data as report_data
from tests.factories import write_jpeg

MODEL_ID = "3f9c2a7be1d04c55a6f0c0ffee1234567890abcd"
DECODE = "beam(k=3,alpha=0.7,max_len=34)"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
XSS_CAPTION = "<script>document.documentElement.setAttribute('data-pwned','caption')</script> a cat"
XSS_MESSAGE = "<img src=x onerror=\"document.documentElement.setAttribute('data-pwned','error')\">"

# (name, score, references or None, image kind): "ok" = a real JPEG, "missing" = no file,
# "corrupt" = not an image. Two parquet files, as after a --resume run.
RUN1 = [
    ("dog", -0.21, ["a dog runs on the grass", "a brown dog running", "dog on a lawn"], "ok"),
    ("bike", -1.73, None, "ok"),
    ("beach", -0.64, ["children play in the water"], "ok"),
    ("xss", -2.95, None, "ok"),
    ("gone", -1.10, None, "missing"),
]
RUN2 = [
    ("tree", -0.38, None, "ok"),
    ("crowd", -3.41, ["a crowd of people at a concert", "people watch a band"], "ok"),
    ("broken", -2.20, None, "corrupt"),
    ("street", -0.92, None, "ok"),
]
CAPTIONS = {
    "dog": "a brown dog runs across the grass",
    "bike": "a man rides a bike on a dirt road",
    "beach": "two children play in the water",
    "xss": XSS_CAPTION,
    "gone": "a picture that was deleted",
    "tree": "a green tree in a field",
    "crowd": "a crowd of people at a concert",
    "broken": "a corrupt file",
    "street": "a busy street at night",
}
SIZES = [(96, 80), (64, 120), (200, 120), (120, 120), (150, 90), (80, 140), (110, 70)]


def caption_row(uri: str, image_id: str, caption: str, score: float, refs: list[str] | None = None, **extra) -> dict:
    bleu = {f"bleu{n}": (round(0.9 - 0.15 * n, 3) if refs else None) for n in range(1, 5)}
    row = dict(
        image_uri=uri,
        image_id=image_id,
        caption=caption,
        score=score,
        decode=DECODE,
        model_id=MODEL_ID,
        encoder="xception",
        width=96,
        height=80,
        processed_at=NOW,
        references=refs,
        **bleu,
    )
    row.update(extra)
    return row


def error_row(uri: str, stage: str, error_type: str, message: str) -> dict:
    return dict(
        image_uri=uri, image_id=Path(uri).stem, stage=stage, error_type=error_type, message=message, processed_at=NOW
    )


def write_parquet(rows: list[dict], schema: pa.Schema, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A realistic OUT_DIR: two caption files (one with the embedding column), real JPEGs, one
    missing and one corrupt image, an error file and summary.json."""
    root = tmp_path_factory.mktemp("report-run")
    images, out = root / "images", root / "out"
    files = []
    for i, (run, with_embedding) in enumerate(((RUN1, False), (RUN2, True))):
        rows = []
        for j, (name, score, refs, kind) in enumerate(run):
            path = images / f"{name}.jpg"
            if kind == "ok":
                write_jpeg(path, size=SIZES[(i * 5 + j) % len(SIZES)], seed=i * 10 + j)
            elif kind == "corrupt":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"this is not a jpeg at all")
            extra = {"embedding": [0.1 * j] * 8} if with_embedding else {}
            rows.append(caption_row(str(path), name, CAPTIONS[name], score, refs, **extra))
        files.append(rows)
        write_parquet(rows, caption_schema(with_embedding), out / "captions" / f"part-{i:05d}.parquet")
    errors = [
        error_row(str(images / "empty.jpg"), "decode", "EmptyFile", "file is empty (0 bytes)"),
        error_row(str(images / "notes.txt"), "decode", "NotAnImage", XSS_MESSAGE),
        error_row(
            "s3://bucket/huge.png",
            "decode",
            "DecompressionBomb",
            "image declares 30000x30000 = 900000000 pixels, over the limit of 89478485",
        ),
    ]
    write_parquet(errors, ERROR_SCHEMA, out / "errors" / "part-00000.parquet")
    summary = {
        "run_id": "run-2024-05-01",
        "matched": 12,
        "captioned": 9,
        "failed": 3,
        "skipped_resume": 5,
        "model_loads": 1,
        "images_per_second": 12.34,
        "wall_seconds": 4.1,
        "model_id": MODEL_ID,
        "decode": DECODE,
        "bleu": {"bleu1": 0.61, "bleu2": 0.42, "bleu3": 0.29, "bleu4": 0.19},
        "inputs": [str(images / "*.jpg")],
        "output": str(out),
    }
    (out / "summary.json").write_text(json.dumps(summary))
    return out


@pytest.fixture(scope="module")
def report_path(run_dir: Path) -> Path:
    return Path(write_report(str(run_dir)))


# --------------------------------------------------------------------------- DOM helper


VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class Dom(HTMLParser):
    """Just enough of the DOM for assertions: cards, images in the grid, error table rows."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.html_attrs: dict[str, str | None] = {}
        self.cards: list[dict] = []
        self.grid_imgs = 0
        self.error_rows: list[list[str]] = []
        self.scripts = 0
        self.ids: dict[str, dict] = {}
        self._stack: list[str] = []
        self._card: dict | None = None
        self._field: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._texts: dict[str, list[str]] = {}
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "html":
            self.html_attrs = a
        if tag == "script":
            self.scripts += 1
        if "id" in a:
            self.ids[a["id"]] = a
            self._texts[a["id"]] = []
        if tag == "article" and "card" in cls:
            self._card = {
                "score": float(a["data-score"]),
                "hidden": "hidden" in a,
                "caption": "",
                "img": False,
                "missing": False,
                "refs": [],
                "bleu4": None,
            }
            self.cards.append(self._card)
        if self._card is not None:
            if tag == "img":
                self._card["img"] = True
                self.grid_imgs += 1
            if "missing" in cls:
                self._card["missing"] = True
            if "caption" in cls:
                self._field = "caption"
            if tag == "li":
                self._field = "ref"
                self._card["refs"].append("")
            if "bleu4" in cls:
                self._field = "bleu4"
        if tag == "tr" and "error-table" in self._stack:
            self._row = []
        if tag == "td" and self._row is not None:
            self._cell = []
        if tag not in VOID_TAGS:
            self._stack.append(a.get("id") or tag)

    def handle_endtag(self, tag):
        if tag in VOID_TAGS:
            return
        if self._stack:
            self._stack.pop()
        if tag == "article":
            self._card = None
        if tag in ("p", "li", "span"):
            self._field = None
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        if tag == "tr" and self._row is not None:
            if self._row:
                self.error_rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        for ident in self._stack:
            if ident in self._texts:
                self._texts[ident].append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._card is not None and self._field == "caption":
            self._card["caption"] += data
        elif self._card is not None and self._field == "ref":
            self._card["refs"][-1] += data
        elif self._card is not None and self._field == "bleu4":
            self._card["bleu4"] = data

    def text(self, ident: str) -> str:
        return "".join(self._texts.get(ident, []))


# --------------------------------------------------------------------------- loading / sampling


def test_loads_all_files_least_confident_first_without_the_embedding(run_dir: Path) -> None:
    sample = load_captions(str(run_dir), sample=500)
    assert sample.total == len(RUN1) + len(RUN2) and len(sample.rows) == sample.total
    assert sample.unreadable == []
    scores = [r.score for r in sample.rows]
    assert scores == sorted(scores) and scores[0] == -3.41
    assert "embedding" not in report_data.CAPTION_COLUMNS
    dog = next(r for r in sample.rows if r.image_id == "dog")
    assert dog.references == tuple(RUN1[0][2]) and dog.bleu4 == pytest.approx(0.3)
    assert next(r for r in sample.rows if r.image_id == "bike").references is None


def test_only_the_latest_row_of_each_uri_is_shown_and_counted(tmp_path: Path) -> None:
    """An input captioned again after it changed (--resume) leaves its old row in an older file;
    the latest row of a URI wins, across captions and errors."""
    from datetime import timedelta

    later = NOW + timedelta(hours=1)
    write_parquet(
        [
            caption_row("/x/a.jpg", "a", "an old caption", -1.0),
            caption_row("/x/b.jpg", "b", "a photo that broke", -1.5),
        ],
        caption_schema(),
        tmp_path / "captions" / "run1.parquet",
    )
    write_parquet(
        [error_row("/x/c.jpg", "decode", "NotAnImage", "was text, since fixed")],
        ERROR_SCHEMA,
        tmp_path / "errors" / "run1.parquet",
    )
    write_parquet(
        [
            caption_row("/x/a.jpg", "a", "the new caption", -0.5, processed_at=later),
            caption_row("/x/c.jpg", "c", "now a photo", -0.7, processed_at=later),
        ],
        caption_schema(),
        tmp_path / "captions" / "run2.parquet",
    )
    write_parquet(
        [error_row("/x/b.jpg", "decode", "TruncatedImage", "now truncated") | {"processed_at": later}],
        ERROR_SCHEMA,
        tmp_path / "errors" / "run2.parquet",
    )
    latest = report_data.current_rows(str(tmp_path))
    assert latest.replaced == 3 and {u: latest.get(u)[1] for u in ("/x/a.jpg", "/x/b.jpg", "/x/c.jpg")} == {
        "/x/a.jpg": "captions",
        "/x/b.jpg": "errors",
        "/x/c.jpg": "captions",
    }
    sample = load_captions(str(tmp_path), sample=10)
    assert sample.total == 2 and {(r.image_uri, r.caption) for r in sample.rows} == {
        ("/x/a.jpg", "the new caption"),
        ("/x/c.jpg", "now a photo"),
    }
    errors = load_errors(str(tmp_path))
    assert errors.total == 1 and [(e.image_uri, e.error_type) for e in errors.rows] == [("/x/b.jpg", "TruncatedImage")]
    assert report_data.current_rows(str(tmp_path / "captions")).replaced == 0  # no output there: nothing replaced


def _many_rows(n: int) -> list[dict]:
    return [caption_row(f"s3://bucket/img/{i:05d}.jpg", f"{i:05d}", f"caption {i}", -i / n) for i in range(n)]


def test_sampling_count_determinism_and_independence_from_file_layout(tmp_path: Path) -> None:
    rows = _many_rows(1000)
    one, three = tmp_path / "one", tmp_path / "three"
    write_parquet(rows, caption_schema(), one / "captions" / "all.parquet")
    for k in range(3):  # same rows, other split and order
        write_parquet(rows[k::3][::-1], caption_schema(), three / "captions" / f"p{k}.parquet")

    a = load_captions(str(one), sample=50, seed=7)
    assert len(a.rows) == 50 and a.total == 1000
    assert [r.image_uri for r in a.rows] == [r.image_uri for r in load_captions(str(one), sample=50, seed=7).rows]
    assert {r.image_uri for r in a.rows} == {r.image_uri for r in load_captions(str(three), sample=50, seed=7).rows}
    other = {r.image_uri for r in load_captions(str(one), sample=50, seed=8).rows}
    assert other != {r.image_uri for r in a.rows}
    assert len(load_captions(str(one), sample=0).rows) == 0
    assert len(load_captions(str(one), sample=5000).rows) == 1000
    # a smaller sample is a subset of a bigger one with the same seed (bottom-k)
    assert {r.image_uri for r in load_captions(str(one), sample=20, seed=7).rows} <= {r.image_uri for r in a.rows}


def test_sampling_streams_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With tiny record batches the reservoir never holds more than sample rows + one batch."""
    monkeypatch.setattr(report_data, "_BATCH_ROWS", 16)
    write_parquet(_many_rows(400), caption_schema(), tmp_path / "captions" / "a.parquet")
    seen = []
    real_concat = pa.concat_tables
    # the reservoir's tables (caption rows); the latest-row pass holds only image_uri/processed_at keys
    monkeypatch.setattr(
        pa,
        "concat_tables",
        lambda ts: ("caption" in ts[0].column_names and seen.append(sum(t.num_rows for t in ts))) or real_concat(ts),
    )
    got = load_captions(str(tmp_path), sample=30, seed=1)
    assert len(got.rows) == 30 and got.total == 400
    assert seen and max(seen) <= 30 + 16
    monkeypatch.undo()
    assert [r.image_uri for r in got.rows] == [
        r.image_uri for r in load_captions(str(tmp_path), sample=30, seed=1).rows
    ]


def test_missing_dirs_and_old_files_without_some_columns(tmp_path: Path) -> None:
    assert load_captions(str(tmp_path)).total == 0
    assert load_errors(str(tmp_path)).total == 0
    old = pa.table({"image_uri": ["a.jpg"], "image_id": ["a"], "caption": ["a cat"], "score": [-0.5]})
    (tmp_path / "captions").mkdir()
    pq.write_table(old, tmp_path / "captions" / "old.parquet")
    (tmp_path / "captions" / "bad.parquet").write_bytes(b"PAR1 truncated")
    (tmp_path / "captions" / "_temporary").mkdir()
    pq.write_table(old, tmp_path / "captions" / "_temporary" / "x.parquet")  # skipped
    got = load_captions(str(tmp_path))
    assert got.total == 1 and got.rows[0].references is None and got.rows[0].model_id == ""
    assert len(got.unreadable) == 1 and "bad.parquet" in got.unreadable[0]


def test_errors_are_capped_with_counts_over_all_rows(run_dir: Path) -> None:
    all_errors = load_errors(str(run_dir))
    assert all_errors.total == 3 and len(all_errors.rows) == 3
    capped = load_errors(str(run_dir), max_errors=2)
    assert capped.total == 3 and len(capped.rows) == 2
    assert sum(capped.by_type.values()) == 3 and capped.by_type[("decode", "EmptyFile")] == 1
    page = render_html(ReportData(summary={}, captions=CaptionSample([], 0), errors=capped, thumbnails=[]))
    assert "Showing the first 2 of 3 error rows" in page


def test_summary_missing_partial_or_broken(tmp_path: Path) -> None:
    assert load_summary(str(tmp_path))[0] == {} and "no summary.json" in load_summary(str(tmp_path))[1]
    (tmp_path / "summary.json").write_text("{not json")
    assert load_summary(str(tmp_path))[0] == {} and "could not be parsed" in load_summary(str(tmp_path))[1]
    (tmp_path / "summary.json").write_text(json.dumps({"matched": 5, "bleu": None, "extra_key": [1, 2]}))
    summary, note = load_summary(str(tmp_path))
    assert note is None
    page = render_html(
        ReportData(summary=summary, captions=CaptionSample([], 0), errors=ErrorRows([], 0), thumbnails=[])
    )
    assert ">5<" in page and "matched" in page and "extra_key" in page and "no references" in page


# --------------------------------------------------------------------------- thumbnails


def test_thumbnail_is_an_upright_jpeg_fitted_to_the_box(tmp_path: Path) -> None:
    path = write_jpeg(tmp_path / "wide.jpg", size=(200, 100), seed=3)
    uri = make_thumbnail(str(path), px=64)
    assert uri.startswith("data:image/jpeg;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert img.format == "JPEG" and img.size == (64, 32)
    small = make_thumbnail(str(write_jpeg(tmp_path / "small.jpg", size=(40, 30))), px=160)
    assert Image.open(io.BytesIO(base64.b64decode(small.split(",", 1)[1]))).size == (40, 30)


def test_thumbnail_applies_exif_orientation(tmp_path: Path) -> None:
    from tests.image_corpus import EXIF_UPRIGHT_SIZE, exif_rotated_jpeg

    (tmp_path / "rot.jpg").write_bytes(exif_rotated_jpeg())
    uri = make_thumbnail(str(tmp_path / "rot.jpg"), px=32)
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")
    assert img.size == (EXIF_UPRIGHT_SIZE[0] // 2, EXIF_UPRIGHT_SIZE[1] // 2)  # upright portrait
    top, bottom = img.getpixel((8, 4)), img.getpixel((8, 28))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60  # red over blue


def test_unreadable_thumbnails_become_placeholders(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    uris = [
        str(tmp_path / "nope.jpg"),
        str(tmp_path / "bad.jpg"),
        "memory://nowhere/x.jpg",
        str(write_jpeg(tmp_path / "ok.jpg")),
    ]
    thumbs = make_thumbnails(uris, px=32, workers=2)
    assert thumbs[:3] == [None, None, None] and thumbs[3].startswith("data:image/jpeg")
    row = CaptionRow(image_uri=uris[0], image_id="nope", caption="a missing picture", score=-1.0)
    page = render_html(
        ReportData(summary={}, captions=CaptionSample([row], 1), errors=ErrorRows([], 0), thumbnails=[None])
    )
    dom = Dom(page)
    assert dom.cards[0]["missing"] and not dom.cards[0]["img"] and "image unavailable" in page


def test_memory_filesystem_inputs_and_output() -> None:
    fs = fsspec.filesystem("memory")
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), (200, 30, 30)).save(buf, "JPEG")
    fs.pipe("/rep-test/img/red.jpg", buf.getvalue())
    table = pa.Table.from_pylist(
        [caption_row("memory://rep-test/img/red.jpg", "red", "a red square", -0.3)], schema=caption_schema()
    )
    with fs.open("/rep-test/out/captions/part-0.parquet", "wb") as f:
        pq.write_table(table, f)
    try:
        path = write_report("memory://rep-test/out", output="memory://rep-test/site/index.html")
        assert path == "memory://rep-test/site/index.html"
        dom = Dom(fs.cat("/rep-test/site/index.html").decode())
        assert len(dom.cards) == 1 and dom.cards[0]["img"] and dom.cards[0]["caption"] == "a red square"
    finally:
        fs.rm("/rep-test", recursive=True)


# --------------------------------------------------------------------------- rendering


def test_untrusted_text_is_escaped(report_path: Path) -> None:
    page = report_path.read_text()
    assert "<script>document" not in page and "<img src=x" not in page
    assert "&lt;script&gt;document.documentElement" in page and "&lt;img src=x onerror=" in page
    dom = Dom(page)
    assert dom.scripts == 1  # only the page's own script
    assert any(c["caption"] == XSS_CAPTION for c in dom.cards)
    assert any(r[3] == XSS_MESSAGE for r in dom.error_rows)


def test_page_is_self_contained(report_path: Path) -> None:
    page = report_path.read_text()
    assert "http://" not in page and "https://" not in page and "//cdn" not in page
    assert "default-src 'none'" in page  # CSP: nothing may be fetched, only our script runs
    imgs = [a for a in page.split('<img src="')[1:]]
    assert imgs and all(a.startswith("data:image/jpeg;base64,") for a in imgs)


def test_report_content(report_path: Path, run_dir: Path) -> None:
    page = report_path.read_text()
    dom = Dom(page)
    n = len(RUN1) + len(RUN2)
    assert len(dom.cards) == n and dom.grid_imgs == n - 2  # missing + corrupt -> placeholders
    assert sum(c["missing"] for c in dom.cards) == 2
    assert [c["score"] for c in dom.cards] == sorted(c["score"] for c in dom.cards)  # no-JS order
    assert f"Showing {n} of {n} captions" in dom.text("showing")
    summary = dom.text("summary")
    for text in (
        "12",
        "matched",
        "9",
        "captioned",
        "3",
        "failed",
        "5",
        "skipped (resume)",
        "12.3",
        "images / s",
        MODEL_ID,
        DECODE,
        "0.610",
        "0.190",
        "BLEU-4",
    ):
        assert text in summary, text
    dog = next(c for c in dom.cards if c["caption"] == CAPTIONS["dog"])
    assert dog["refs"] == RUN1[0][2] and dog["bleu4"] == "0.300"
    bike = next(c for c in dom.cards if c["caption"] == CAPTIONS["bike"])
    assert bike["refs"] == [] and bike["bleu4"] is None  # no references: nothing shown
    assert [r[2] for r in dom.error_rows] == ["EmptyFile", "NotAnImage", "DecompressionBomb"]
    assert dom.error_rows[2][0] == "s3://bucket/huge.png" and dom.error_rows[2][1] == "decode"


def test_sampled_page_says_showing_n_of_m(run_dir: Path, tmp_path: Path) -> None:
    out = write_report(str(run_dir), sample=4, seed=3, output=str(tmp_path / "r" / "small.html"))
    dom = Dom(Path(out).read_text())
    assert len(dom.cards) == 4 and "Showing 4 of 9 captions" in dom.text("showing")
    assert "seed 3" in dom.text("showing")


def test_empty_run(tmp_path: Path) -> None:
    path = Path(write_report(str(tmp_path)))
    assert path == tmp_path / "report.html"
    page = path.read_text()
    assert "Showing 0 of 0 captions" in page and "No captions to show" in page
    assert "No error rows" in page and "no summary.json" in page
    with pytest.raises(FileNotFoundError):
        write_report(str(tmp_path / "does-not-exist"))


def test_cli(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0 and "--sample" in capsys.readouterr().out
    target = tmp_path / "cli.html"
    assert cli.main([str(run_dir), "--sample", "3", "--seed", "1", "--output", str(target)]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert len(Dom(target.read_text()).cards) == 3
    assert cli.main([str(tmp_path / "nope")]) == 1
    with pytest.raises(SystemExit):
        cli.main([str(run_dir), "--sample", "-1"])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "caption_report",
            str(run_dir),
            "--sample",
            "2",
            "--output",
            str(tmp_path / "module.html"),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "module.html")
    assert len(Dom((tmp_path / "module.html").read_text()).cards) == 2


# --------------------------------------------------------------------------- real browser


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    reason = "headless Chromium not found on PATH (apt-get install -y chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; it is required when CI=true")
    pytest.skip(reason)


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.browser
def test_rendered_in_headless_chromium(chromium: str, report_path: Path, tmp_path: Path) -> None:
    url = report_path.resolve().as_uri()
    n = len(RUN1) + len(RUN2)

    dom = Dom(run_chromium(chromium, tmp_path / "p1", "--dump-dom", url).stdout)
    assert "data-pwned" not in dom.html_attrs  # neither injected script nor onerror ran
    assert "hidden" not in dom.ids["controls"], "the page's own script did not run (CSP hash?)"
    assert dom.text("visible-count") == f"{n} of {n} shown"
    assert len(dom.cards) == n and dom.grid_imgs == n - 2
    assert any(c["caption"] == XSS_CAPTION for c in dom.cards)
    assert any(c["caption"] == CAPTIONS["dog"] for c in dom.cards)
    assert len(dom.error_rows) == 3 and dom.error_rows[1][3] == XSS_MESSAGE
    asc = [c["score"] for c in dom.cards]
    assert asc == sorted(asc)

    dom = Dom(run_chromium(chromium, tmp_path / "p2", "--dump-dom", url + "#sort=score-desc&min=-2").stdout)
    shown = [c["score"] for c in dom.cards if not c["hidden"]]
    assert [c["score"] for c in dom.cards] == sorted(asc, reverse=True)
    assert shown == sorted((s for s in asc if s >= -2), reverse=True)
    assert dom.text("visible-count") == f"{len(shown)} of {n} shown"

    shot = tmp_path / "report.png"
    run_chromium(chromium, tmp_path / "p3", f"--screenshot={shot}", "--window-size=1280,1400", url)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    with Image.open(shot) as img:
        assert img.size == (1280, 1400)
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 200  # not a blank page
    if os.environ.get("REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["REPORT_SCREENSHOT"])
