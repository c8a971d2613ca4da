"""Libraries whose private internals our adapters use, and the versions they were tested with.

``requirements.lock`` pins a version inside each range (``tests/test_dependency_lock.py`` checks);
another version may have changed those internals, so the adapter says so at start-up: the Dask
runner refuses (``runners.check_dask_runner_beam``), the Iceberg sync warns.
"""

from __future__ import annotations

import importlib.metadata
import logging

log = logging.getLogger(__name__)

# package -> [lowest tested, first untested), and what uses its internals
TESTED: dict[str, tuple[str, str]] = {
    # beam_pipeline/dask_runner.py: transform_evaluator's ParDo, GroupByKey, apply_dofn_to_bundle, TRANSLATIONS;
    # beam_pipeline/listing.py: FileSystem._list / _url_dirname (streamed remote globs)
    "apache-beam": ("2.78.0", "2.79.0"),
    # beam_pipeline/lake_commit.py: pyiceberg.io.pyarrow._dataframe_to_data_files, ArrowScan, snapshot producers
    "pyiceberg": ("0.12.0", "0.13.0"),
}


def untested(package: str, installed: str | None = None) -> str | None:
    """A one-line message when ``package``'s installed version (or ``installed``) is outside its
    tested range, else None."""
    from packaging.version import Version

    version = installed or importlib.metadata.version(package)
    low, high = TESTED[package]
    if Version(low) <= Version(version) < Version(high):
        return None
    return f"{package} {version} is installed, but this code was tested with {package} >={low},<{high}"


def warn_if_untested(package: str) -> None:
    """Log a warning (not a refusal) when ``package`` is outside its tested range."""
    message = untested(package)
    if message:
        log.warning("%s; install the tested set: pip install -c requirements.lock ...", message)
