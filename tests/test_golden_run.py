"""The same run before and after a re-layout of the code: a fixed set of real photos and bad
inputs gives the rows, error rows and summary fields kept in tests/data/golden_run.json, made by
``tests/golden_run.py`` from the code before the re-layout of issue #12 (commit b75b23a) with the
shipped model, and regenerated on purpose when the default model changed (issue 27: the attention
decoder, model 7ad28bc258f2ec17; then issue 31: its INT8 path's decoder graphs with INT8 weights,
model 773a1c4c2a4e4e54, which changed only the model id of these float32 rows; see its docstring
to regenerate it)."""

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
    assert [(r["image_uri"], r["error_type"], r["stage"]) for r in actual["errors"]] == [
        (r["image_uri"], r["error_type"], r["stage"]) for r in expected["errors"]
    ]
    _assert_same(actual, expected, "run")
    assert actual["summary"]["matched"] == actual["summary"]["captioned"] + actual["summary"]["failed"]


# What differs by engine by design: the runner's name and options, the runner's own metrics
# (null on Dask, which reports none) and the model loads (one per captioning process); every
# other count from the data must be the same.
ENGINE_FIELDS = {"runner", "direct_running_mode", "counters", "model_loads"}


@pytest.mark.parametrize("engine", ["dask", "portable"])
def test_the_golden_run_is_the_same_on_distributed_engines(engine, tmp_path, flickr8k, xception_weights):
    """The same inputs on a Dask cluster (2 worker processes) and through Beam's job service with
    an EXTERNAL worker pool give the golden rows and summary."""
    from tests.engine_services import beam_job_service, dask_cluster, dask_runner_flags, portable_runner_flags

    expected = json.loads(GOLDEN.read_text())
    if engine == "dask":
        with dask_cluster(tmp_path / "logs", workers=2) as address:
            actual = golden_run(
                tmp_path,
                flickr8k,
                xception_weights,
                extra=dask_runner_flags(address, 2),
            )
        assert actual["summary"]["runner"] == "DaskRunner" and actual["summary"]["model_loads"] in (1, 2)
    else:
        with beam_job_service(tmp_path / "logs") as (job_endpoint, pool):
            actual = golden_run(
                tmp_path,
                flickr8k,
                xception_weights,
                extra=portable_runner_flags(job_endpoint, pool),
            )
        _assert_same(actual["summary"]["counters"], expected["summary"]["counters"], "counters")
        assert actual["summary"]["model_loads"] == expected["summary"]["model_loads"]
    _assert_same(actual["captions"], expected["captions"], "captions")
    _assert_same(actual["errors"], expected["errors"], "errors")
    _assert_same(
        {k: v for k, v in actual["summary"].items() if k not in ENGINE_FIELDS},
        {k: v for k, v in expected["summary"].items() if k not in ENGINE_FIELDS},
        "summary",
    )


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
