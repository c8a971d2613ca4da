"""The committed lock (requirements.lock) against setup.py, the installed environment and the
Beam range the Dask runner adapter was tested with; and the adapter's refusal of another Beam."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
DIST = "batch-image-captioning"


def locked_versions() -> dict[str, Version]:
    """name -> pinned version of every lock line whose environment marker holds here."""
    pins: dict[str, Version] = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-")):
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        (spec,) = req.specifier
        assert spec.operator == "==", f"lock line is not an exact pin: {line}"
        pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def test_the_lock_pins_a_beam_the_dask_runner_was_tested_with():
    from beam_pipeline.runners import DASK_TESTED_BEAM

    low, high = (Version(v) for v in DASK_TESTED_BEAM)
    assert low <= locked_versions()["apache-beam"] < high, (
        "requirements.lock pins an apache-beam outside beam_pipeline.runners.DASK_TESTED_BEAM: run the Dask "
        "engine tests on it and widen the range, or keep the old pin"
    )


@pytest.mark.parametrize("package", ["apache-beam", "pyiceberg"])
def test_the_lock_pins_each_library_whose_internals_we_use_inside_its_tested_range(package):
    from beam_pipeline.library_versions import TESTED, untested

    assert package in TESTED
    assert untested(package, str(locked_versions()[package])) is None, (
        f"requirements.lock pins {package} outside beam_pipeline.library_versions.TESTED"
    )
    assert untested(package) is None, f"the installed {package} is outside its tested range"


def test_an_untested_pyiceberg_is_named_in_a_start_up_warning(caplog):
    from beam_pipeline.library_versions import untested, warn_if_untested

    assert untested("pyiceberg", "0.11.1") == (
        "pyiceberg 0.11.1 is installed, but this code was tested with pyiceberg >=0.12.0,<0.13.0"
    )
    assert untested("pyiceberg", "0.12.3") is None
    with caplog.at_level("WARNING", logger="beam_pipeline.library_versions"):
        warn_if_untested("pyiceberg")  # the installed one: tested, so silent
    assert not caplog.records


def test_the_installed_beam_is_in_the_dask_runner_range():
    from beam_pipeline.runners import check_dask_runner_beam

    check_dask_runner_beam()  # raises PreflightError outside the tested range


def test_every_requirement_of_every_extra_is_pinned_in_the_lock():
    """setup.py changed without refreshing the lock shows up here."""
    pins = locked_versions()
    requirements = [Requirement(r) for r in importlib.metadata.requires(DIST) or []]
    assert requirements, f"{DIST} is not installed (pip install -c requirements.lock -e '.[test]')"
    for req in requirements:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} (setup.py) has no pin in requirements.lock: refresh the lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"lock pins {name}=={pins[name]}, setup.py wants {req}"
        )


def test_the_installed_packages_are_the_locked_versions():
    """The environment was installed from the lock (as the README and .ci/run do)."""
    mismatched = {}
    for name, version in locked_versions().items():
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue  # an extra this environment did not install
        if installed != version:
            mismatched[name] = f"installed {installed}, locked {version}"
    assert not mismatched, f"not installed from requirements.lock: {mismatched}"


@pytest.mark.parametrize("version", ["2.77.0", "2.79.0", "3.0.0"])
def test_dask_runner_refuses_an_untested_beam_in_one_line_before_anything_runs(version, monkeypatch, tmp_path, capsys):
    import apache_beam

    import run_pipeline

    monkeypatch.setattr(apache_beam, "__version__", version)
    out = tmp_path / "out"
    rc = run_pipeline.main(
        [
            "--input",
            str(tmp_path / "*.jpg"),
            "--output",
            str(out),
            "--runner",
            "DaskRunner",
            "--dask_client_address",
            "127.0.0.1:1",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [
        f"refused: --runner DaskRunner was tested with apache-beam >=2.78.0,<2.79.0, but {version} is "
        "installed; install the tested set: pip install -c requirements.lock -e '.[dask]'"
    ]
    assert not out.exists()


def test_dask_runner_accepts_the_tested_range():
    from beam_pipeline.preflight import PreflightError
    from beam_pipeline.runners import check_dask_runner_beam

    check_dask_runner_beam("2.78.0")
    check_dask_runner_beam("2.78.1")
    with pytest.raises(PreflightError, match=r">=2\.78\.0,<2\.79\.0"):
        check_dask_runner_beam("2.77.9")
