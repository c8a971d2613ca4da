"""The same run before and after a re-layout of the code: a fixed set of real photos and bad
inputs gives the rows, error rows and summary fields kept in tests/data/golden_run.json, made by
``tests/golden_run.py`` from the code before the re-layout of issue #12 (commit b75b23a) with the
shipped model (see its docstring to regenerate it, e.g. after the shipped model changes)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.golden_run import golden_run

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]
GOLDEN = Path(__file__).parent / "data" / "golden_run.json"


def _assert_same(actual: Any, expected: Any, where: str = "") -> None:
    """Equal, with floats compared to 1e-5 relative (float32 inference may differ in the last bits)."""
    if isinstance(expected, float) and isinstance(actual, (int, float)):
        assert math.isclose(actual, expected, rel_tol=1e-5, abs_tol=1e-7), f"{where}: {actual} != {expected}"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and sorted(actual) == sorted(expected), f"{where}: keys differ"
        for key in expected:
            _assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: lengths differ"
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_same(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def test_fixed_run_gives_the_golden_rows_and_summary(tmp_path, flickr8k, xception_weights):
    expected = json.loads(GOLDEN.read_text())
    actual = golden_run(tmp_path, flickr8k, xception_weights)
    assert [r["caption"] for r in actual["captions"]] == [r["caption"] for r in expected["captions"]]
    assert [(r["image_uri"], r["error_type"], r["stage"]) for r in actual["errors"]] == \
        [(r["image_uri"], r["error_type"], r["stage"]) for r in expected["errors"]]
    _assert_same(actual, expected, "run")
    assert actual["summary"]["matched"] == actual["summary"]["captioned"] + actual["summary"]["failed"]


def test_the_comparison_notices_a_changed_row():
    expected = json.loads(GOLDEN.read_text())
    changed = json.loads(GOLDEN.read_text())
    changed["captions"][0]["score"] *= 1.001
    with pytest.raises(AssertionError):
        _assert_same(changed, expected)
    changed = json.loads(GOLDEN.read_text())
    changed["summary"]["summary_keys"].append("new_field")
    with pytest.raises(AssertionError):
        _assert_same(changed, expected)
