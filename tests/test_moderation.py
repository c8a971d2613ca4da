"""Moderation (``--watchlist``, ``--review_below``): the watch-list rules on their own, then real
pipeline runs with the small test model whose flags and review rows are checked against the
captions of an unmoderated run of the same photos, in the caption files, the review table, the
search index and the gallery."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

import pytest

from beam_pipeline.moderation import parse_watchlist, review_reason, singular
from beam_pipeline.preflight import PreflightError
from tests.pipeline_helpers import read_rows, run_pipeline

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def test_phrases_match_caption_tokens_with_simple_plurals():
    wl = parse_watchlist(
        'category,phrase\n# animals\nanimal,dogs\nanimal,puppy\nfire,"camp fire"\nboxes,box\n\nwater,Water\n'
    )
    assert wl.flags("Two dogs play in the water") == ["animal", "water"]
    assert wl.flags("a dog's puppies") == ["animal"]  # dog's -> dogs -> dog; puppies -> puppy
    assert wl.flags("a camp fire at night") == ["fire"] and wl.flags("a fire camp") == []
    assert wl.flags("boxes on a table") == ["boxes"]
    assert wl.flags("a hotdog stand") == [] and wl.flags("waterfall") == []  # whole tokens only
    assert [singular(w) for w in ("glass", "bus", "dogs", "boxes", "churches", "puppies", "is")] == [
        "glass",
        "bus",
        "dog",
        "box",
        "church",
        "puppy",
        "is",
    ]


@pytest.mark.parametrize(
    "text, line",
    [
        ("ab,cd\nweapons\n", 2),
        ("weapons,gun\nWeapons!,knife\n", 2),
        ("# c\n\nweapons,gun,knife\n", 3),
        ("ok,gun\nempty,  \n", 2),
        ('x,"unclosed\n', 1),
        ("ok,gun\nnum,123\n", 2),
    ],
)
def test_a_malformed_watchlist_is_refused_with_its_line_number(text, line):
    with pytest.raises(PreflightError, match=f"line {line}:"):
        parse_watchlist(text, "w.csv")


def test_review_reasons():
    assert review_reason({"score": -0.5, "flags": []}, -1.0) is None
    assert review_reason({"score": -2.0, "flags": []}, -1.0) == "low_score"
    assert review_reason({"score": -2.0, "flags": ["x"]}, -1.0) == "flagged,low_score"
    assert review_reason({"score": -2.0, "flags": ["x"]}, None) == "flagged"
    assert review_reason({"score": -2.0}, None) is None


def test_flags_and_review_rows_reach_the_captions_the_review_table_iceberg_the_index_and_the_gallery(
    tmp_path, flickr8k, tiny_artifact, monkeypatch
):
    pytest.importorskip("pyiceberg")
    for key, value in (
        ("TYPE", "sql"),
        ("URI", f"sqlite:///{tmp_path}/catalog.db"),
        ("WAREHOUSE", f"file://{tmp_path}/warehouse"),
    ):
        monkeypatch.setenv(f"PYICEBERG_CATALOG__LAKE__{key}", value)
    names = sorted(p.name for p in (flickr8k / "images").glob("*.jpg"))[30:36]
    images = tmp_path / "images"
    images.mkdir()
    for name in names:
        shutil.copyfile(flickr8k / "images" / name, images / name)
    common = ["--input", f"{images}/*.jpg", "--model", tiny_artifact]
    run_pipeline(common + ["--output", str(tmp_path / "plain")])
    plain = {r["image_uri"]: r for r in read_rows(tmp_path / "plain", "captions")}
    assert "flags" not in next(iter(plain.values()))  # no watch-list: no flags column
    words = sorted({w for r in plain.values() for w in r["caption"].split() if len(w) > 3})
    watched = words[len(words) // 2]  # a word of some captions; the tiny model's are short
    watchlist = tmp_path / "watch.csv"
    watchlist.write_text(f"category,phrase\nwatched,{watched}\nnever,zebra crossing\n")
    threshold = statistics.median(r["score"] for r in plain.values())

    out, index = tmp_path / "out", str(tmp_path / "index")
    summary = run_pipeline(
        common
        + [
            "--output",
            str(out),
            "--watchlist",
            str(watchlist),
            "--review_below",
            str(threshold),
            "--search_index",
            index,
            "--report",
            "--iceberg_catalog",
            "lake",
            "--iceberg_table",
            "lake.captions",
        ]
    )
    captions = {r["image_uri"]: r for r in read_rows(out, "captions")}
    assert {u: r["caption"] for u, r in captions.items()} == {u: r["caption"] for u, r in plain.items()}
    expected_flags = {u: (["watched"] if watched in r["caption"].split() else []) for u, r in plain.items()}
    assert {u: r["flags"] for u, r in captions.items()} == expected_flags
    assert any(expected_flags.values())
    expected_review = {}
    for uri, row in plain.items():
        reasons = (["flagged"] if expected_flags[uri] else []) + (["low_score"] if row["score"] < threshold else [])
        if reasons:
            expected_review[uri] = ",".join(reasons)
    review = read_rows(out, "review")
    assert {r["image_uri"]: r["reason"] for r in review} == expected_review
    assert all(r["flags"] == expected_flags[r["image_uri"]] for r in review)
    assert summary["captioned"] == len(plain)  # review rows are not counted as captions

    from beam_pipeline.lake_table import open_catalog
    from beam_pipeline.search_index import open_table
    from caption_report import write_report

    lake = open_catalog("lake").load_table("lake.captions").scan().to_arrow().to_pylist()
    assert {r["image_uri"]: r["flags"] for r in lake} == expected_flags
    indexed = open_table(index).search().limit(None).to_arrow().to_pylist()
    assert {r["image_uri"]: r["flags"] for r in indexed} == expected_flags
    page = Path(write_report(str(out))).read_text()
    assert page.count('data-review="') == len(expected_review) and 'id="needs-review"' in page


def test_a_malformed_watchlist_stops_the_run_before_any_image_is_read(tmp_path, flickr8k, tiny_artifact, capsys):
    from run_pipeline import main

    watchlist = tmp_path / "watch.csv"
    watchlist.write_text("weapons,gun\nweapons gun\n")
    out = tmp_path / "out"
    status = main(
        [
            "--input",
            f"{flickr8k}/images/1000*.jpg",
            "--output",
            str(out),
            "--model",
            tiny_artifact,
            "--watchlist",
            str(watchlist),
        ]
    )
    assert status == 2 and "line 2" in capsys.readouterr().err
    assert not out.exists() or read_rows(out, "captions") == []


@pytest.mark.browser
def test_the_gallery_needs_review_filter_in_headless_chromium(tmp_path):
    import datetime as dt
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_pipeline.moderation import REVIEW_SCHEMA
    from beam_pipeline.schemas import caption_schema
    from caption_report import write_report
    from tests.test_report import Dom, run_chromium

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("headless Chromium not found on PATH (apt-get install -y chromium)")
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    out = tmp_path / "out"
    for sub in ("captions", "review"):
        (out / sub).mkdir(parents=True)
    captions = [
        {
            "image_uri": f"/nowhere/{i}.jpg",
            "image_id": f"{i}.jpg",
            "caption": f"caption {i}",
            "score": -0.5 * i,
            "decode": "greedy",
            "model_id": "m",
            "encoder": "e",
            "width": 1,
            "height": 1,
            "processed_at": now,
            "flags": ["animal"] if i == 1 else [],
        }
        for i in range(4)
    ]
    pq.write_table(
        pa.Table.from_pylist(captions, schema=caption_schema(flags=True)), out / "captions" / "part-a.parquet"
    )
    review = [
        {**captions[1], "reason": "flagged"},
        {**captions[3], "reason": "low_score"},
        {**captions[3], "image_uri": "/nowhere/extra.jpg", "image_id": "extra.jpg", "reason": "low_score"},
    ]
    pq.write_table(
        pa.Table.from_pylist([{k: r.get(k) for k in REVIEW_SCHEMA.names} for r in review], schema=REVIEW_SCHEMA),
        out / "review" / "part-a.parquet",
    )
    (out / "summary.json").write_text(json.dumps({"run_id": "r", "captioned": 4}))
    url = Path(write_report(str(out))).resolve().as_uri()

    dom = Dom(run_chromium(browser, tmp_path / "p1", "--dump-dom", url).stdout)
    assert "hidden" not in dom.ids["controls"] and "needs-review" in dom.ids
    assert dom.text("visible-count") == "5 of 5 shown"  # the review row outside the captions is added
    dom = Dom(run_chromium(browser, tmp_path / "p2", "--dump-dom", url + "#review=1").stdout)
    assert dom.text("visible-count") == "3 of 5 shown"
    assert sorted(c["score"] for c in dom.cards if not c["hidden"]) == [-1.5, -1.5, -0.5]
