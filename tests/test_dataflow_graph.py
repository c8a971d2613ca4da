"""The Dataflow job this pipeline would submit, built offline with Beam's own dry run
(``--dry_run True``: ``DataflowRunner.run_pipeline`` builds the job and returns before any
request; no project, credentials or network needed).

The command is docs/DEPLOY.md's CPU Dataflow command, read from the page, so the page and what is
tested cannot drift apart. Only what the driver itself reads before the job is built points at
local files here (``--output``: plan_run checks the output folder; ``--model`` /
``--encoder_weights``: plan_run verifies the artifact), because reading gs:// needs credentials
and network; the inputs stay gs:// (workers match them, the driver does not).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

pytest.importorskip("apache_beam.runners.dataflow.internal.apiclient")  # the gcp extra

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
REPO = Path(__file__).resolve().parents[1]
LOCAL = {"--output", "--model", "--encoder_weights"}  # read by the driver before the job is built
STEPS = (
    "MatchInputs",
    "SkipDoneAndDuplicates",
    "ReadImages",
    "CaptionImages",
    "CommitCaptions",
    "CommitErrors",
    "RunStats",
)


def deploy_command() -> list[str]:
    """The flags of DEPLOY.md's first ``--runner DataflowRunner`` command."""
    text = (REPO / "docs" / "DEPLOY.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "--runner DataflowRunner" in b)
    words = shlex.split(block.replace("\\\n", " "))
    assert words[:2] == ["python", "run_pipeline.py"], words[:2]
    return words[2:]


def with_local(argv: list[str], local: dict[str, str | None]) -> list[str]:
    """``argv`` with the values of the flags in ``local`` replaced (added when absent; a None
    value drops the flag)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in local:
            out += [argv[i], local[argv[i]]] if local[argv[i]] is not None else []
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out + [
        item for flag, value in local.items() if flag not in argv and value is not None for item in (flag, value)
    ]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any name lookup other than this machine fails the test (the dry run must stay offline)."""
    import socket

    lookup = socket.getaddrinfo

    def local_only(host: object, *args: object, **kwargs: object) -> object:
        if host not in ("127.0.0.1", "localhost", None):
            raise AssertionError(f"the dry run tried to reach {host}")
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)


def test_dataflow_job_is_built_offline_with_our_steps_handler_and_setup_file(
    tiny_artifact, tmp_path, monkeypatch, no_network
):
    import apache_beam as beam
    from apache_beam.internal import pickler
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, SetupOptions
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2

    from beam_pipeline.caption_handler import CaptionModelHandler
    from beam_pipeline.options import CaptionOptions, check_flags
    from beam_pipeline.pipeline import build, plan_run
    from beam_pipeline.runners import make_runner

    monkeypatch.chdir(REPO)  # --setup_file ./setup.py, as in the docs
    documented = deploy_command()
    assert "--setup_file" in documented and documented[documented.index("--runner") + 1] == "DataflowRunner"
    # The small test artifact carries its encoder weights, so --encoder_weights is dropped.
    argv = with_local(
        documented, {"--output": str(tmp_path / "out"), "--model": tiny_artifact, "--encoder_weights": None}
    ) + ["--dry_run", "True"]
    check_flags(argv)  # every documented flag is one Beam or we know
    options = PipelineOptions(argv)
    plan = plan_run(options.view_as(CaptionOptions))
    p = beam.Pipeline(runner=make_runner("DataflowRunner", options), options=options)
    build(p, plan)
    result = p.run()  # the dry run: the job is built, nothing is sent
    job = result.job

    transforms = job.proto_pipeline.components.transforms.values()
    top_level = {t.unique_name for t in transforms if "/" not in t.unique_name}
    assert set(STEPS) <= top_level, top_level
    assert plan.inputs == [documented[documented.index("--input") + 1]]

    # Our ModelHandler and DoFns are in the job as pickled payloads that load back.
    def dofn(name: str) -> object:
        [payload] = [
            beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).do_fn.payload
            for t in transforms
            if t.unique_name == name and t.spec.urn == common_urns.primitives.PAR_DO.urn
        ]
        return pickler.loads(payload)[0]

    handler = dofn("CaptionImages/RunInference/BeamML_RunInference")._model_handler
    assert isinstance(handler, CaptionModelHandler) and handler.spec.model_uri == tiny_artifact
    assert type(dofn("ReadImages/ReadDecode")).__name__ == "ReadAndDecode"
    assert type(dofn("CommitCaptions/Commit-captions")).__name__ == "CommitRows"

    # Workers install this package: the options carry --setup_file and its sdist is staged.
    assert job.options.view_as(SetupOptions).setup_file == "./setup.py"
    cloud = job.options.view_as(GoogleCloudOptions)
    assert cloud.project == documented[documented.index("--project") + 1]
    assert cloud.temp_location.startswith(documented[documented.index("--temp_location") + 1] + "/")
    staged = {
        beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(d.role_payload).staged_name
        for env in job.proto_pipeline.components.environments.values()
        for d in env.dependencies
    }
    assert "workflow.tar.gz" in staged, staged

    # The command line's path: the same dry run through pipeline.run builds the job and writes nothing.
    from beam_pipeline.pipeline import run

    summary = run(argv)
    assert summary["dry_run"] is True and summary["runner"] == "DataflowRunner"
    assert not (tmp_path / "out").exists()


def test_local_replaces_and_adds_flags():
    assert with_local(
        ["--a", "1", "--output", "gs://x", "--w", "gs://w"], {"--output": "/tmp/o", "--model": "m", "--w": None}
    ) == ["--a", "1", "--output", "/tmp/o", "--model", "m"]
