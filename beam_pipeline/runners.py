"""Which runner object executes ``--runner``: the in-process FnApiRunner for the DirectRunner,
our Dask runner for ``DaskRunner``, else whatever Beam resolves from the name."""
from __future__ import annotations

from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import create_runner

from beam_pipeline.preflight import PreflightError

# Runner names -> the class to use: the short name Beam does not resolve, and Beam's own Dask
# runner replaced by ours, which works around its bugs (see beam_pipeline/dask_runner.py).
RUNNER_ALIASES = {"DaskRunner": "beam_pipeline.dask_runner.DaskRunner",
                  "apache_beam.runners.dask.dask_runner.DaskRunner": "beam_pipeline.dask_runner.DaskRunner"}


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
        try:
            return create_runner(RUNNER_ALIASES[name])
        except ImportError as exc:
            raise PreflightError(f"--runner {name} needs extra packages: pip install -e '.[dask]' ({exc})") from exc
    return None
