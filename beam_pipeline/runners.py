"""Which runner object executes ``--runner``: the in-process FnApiRunner for the DirectRunner,
our Dask runner for ``DaskRunner``, else whatever Beam resolves from the name."""

from __future__ import annotations

from typing import Any

import apache_beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import create_runner

from beam_pipeline.library_versions import TESTED, untested
from beam_pipeline.preflight import PreflightError

# Runner names -> the class to use: the short name Beam does not resolve, and Beam's own Dask
# runner replaced by ours, which works around its bugs (see beam_pipeline/dask_runner.py).
RUNNER_ALIASES = {
    "DaskRunner": "beam_pipeline.dask_runner.DaskRunner",
    "apache_beam.runners.dask.dask_runner.DaskRunner": "beam_pipeline.dask_runner.DaskRunner",
}

# beam_pipeline/dask_runner.py subclasses private parts of Beam's Dask runner, which change between
# Beam releases (2.78 changed how side inputs are computed); it runs only on the Beam versions it
# was tested with: [lowest, first untested).
DASK_TESTED_BEAM = TESTED["apache-beam"]


def check_dask_runner_beam(version: str | None = None) -> None:
    """Refuse (``PreflightError``, exit 2) a Beam outside ``DASK_TESTED_BEAM`` for the Dask runner."""
    low, high = DASK_TESTED_BEAM
    installed = version or apache_beam.__version__
    if untested("apache-beam", installed):
        raise PreflightError(
            f"--runner DaskRunner was tested with apache-beam >={low},<{high}, but {installed} is installed; "
            "install the tested set: pip install -c requirements.lock -e '.[dask]'"
        )


def local_runner(options: PipelineOptions) -> Any:
    """Beam's FnApiRunner, which the DirectRunner picks for batch pipelines; chosen directly so
    the DirectRunner never tries to download the Prism binary. Honours --direct_running_mode
    (in_memory / multi_threading / multi_processing) and --direct_num_workers."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)


def make_runner(name: str | None, options: PipelineOptions) -> Any:
    """The runner object for ``--runner``: our local FnApiRunner for the DirectRunner, the class
    path for short names Beam does not resolve (``DaskRunner``), else None (Beam resolves it)."""
    if name in (None, "DirectRunner", "direct"):
        return local_runner(options)
    if name in RUNNER_ALIASES:
        check_dask_runner_beam()
        try:
            return create_runner(RUNNER_ALIASES[name])
        except ImportError as exc:
            raise PreflightError(f"--runner {name} needs extra packages: pip install -e '.[dask]' ({exc})") from exc
    return None
