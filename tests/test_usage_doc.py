"""docs/USAGE.md is generated from the argument parsers (``python -m tools.usage_doc``) and must be
current: a flag added, removed or reworded without regenerating it fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import usage_doc


def test_usage_doc_is_current():
    current = usage_doc.USAGE.read_text() == usage_doc.render()
    assert current, "docs/USAGE.md is not current: run python -m tools.usage_doc"


def test_every_pipeline_flag_is_in_the_reference():
    text = usage_doc.render()
    flags = [s for a in usage_doc._pipeline_parser()._actions for s in a.option_strings]
    assert "--input" in flags and "--search_index" in flags
    assert [f for f in flags if f"`{f}" not in text] == []


def test_check_fails_on_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    stale = tmp_path / "USAGE.md"
    stale.write_text(usage_doc.render().replace("--resume", "--resume_old"))
    monkeypatch.setattr(usage_doc, "USAGE", stale)
    monkeypatch.setattr(usage_doc, "ROOT", tmp_path)
    assert usage_doc.main(["--check"]) == 1
    assert "run `python -m tools.usage_doc`" in capsys.readouterr().err
    assert usage_doc.main([]) == 0 and usage_doc.main(["--check"]) == 0  # regenerated: current again


def test_defaults_do_not_depend_on_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CAPTION_ENCODER_WEIGHTS", "/somewhere/weights.h5")
    assert "/somewhere" not in usage_doc.render()
