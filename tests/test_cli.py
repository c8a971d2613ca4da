"""The command lines as a user meets them: a run is quiet (a header, progress, a short summary;
no library noise), ``--json`` prints summary.json, unknown flags are refused with exit 2 and a
did-you-mean before anything is read, on run_pipeline.py and on every other CLI."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model.cli import StrictArgumentParser, did_you_mean

REPO = Path(__file__).resolve().parents[1]
# What library chatter looks like: absl/TensorFlow C++ lines, Python warnings, Beam's root warnings.
NOISE = re.compile(
    r"^[IWEF]\d{4} |absl|cuInit|cuda|oneDNN|type hint|apitools|Resource module|Warning|WARNING|"
    r"Traceback|DeprecationWarning|UserWarning"
)


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def photos30(flickr8k: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli-photos")
    for src in sorted((flickr8k / "images").glob("*.jpg"))[:28]:
        shutil.copy(src, d / src.name)
    (d / "not_a_photo.jpg").write_text("<html>404</html>")
    (d / "empty.jpg").write_bytes(b"")
    return d


@pytest.mark.slow
def test_a_30_photo_run_is_quiet_and_short(photos30, tiny_artifact, tmp_path):
    out = tmp_path / "out"
    proc = _cli("--input", f"{photos30}/*.jpg", "--output", str(out), "--model", tiny_artifact, "--batch_size", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) <= 15, lines
    assert not [line for line in lines if NOISE.search(line)], lines
    assert proc.stderr.startswith(f"Captioning {photos30}/*.jpg with model ")  # the header
    summary = json.loads((out / "summary.json").read_text())
    first = proc.stdout.splitlines()[0]
    assert (
        first.startswith("Captioned 28 of 30 inputs; 2 errors: ") and "NotAnImage 1" in first and "EmptyFile 1" in first
    ), first
    assert f"{out}/summary.json" in proc.stdout and (summary["captioned"], summary["failed"]) == (28, 2)

    # --json prints summary.json's content instead of the human summary (3 of the photos: quicker).
    again = _cli(
        "--input",
        f"{photos30}/100*.jpg",
        "--input",
        f"{photos30}/empty.jpg",
        "--output",
        str(tmp_path / "out2"),
        "--model",
        tiny_artifact,
        "--batch_size",
        "4",
        "--json",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout) == json.loads((tmp_path / "out2" / "summary.json").read_text())


def test_a_misspelt_flag_is_refused_before_anything_is_read(tmp_path):
    out = tmp_path / "out"
    proc = _cli("--input", f"{tmp_path}/*.jpg", "--output", str(out), "--beam_widht", "3", timeout=120)
    assert proc.returncode == 2
    assert "unknown flag --beam_widht (did you mean --beam_width?)" in proc.stderr
    assert not out.exists() and proc.stdout == ""


def test_every_flag_beam_registers_is_still_accepted():
    from beam_pipeline.options import UsageError, check_flags

    check_flags(
        [
            "--input",
            "x",
            "--output",
            "o",
            "--runner",
            "DataflowRunner",
            "--project",
            "p",
            "--region",
            "r",
            "--temp_location",
            "gs://b/t",
            "--setup_file",
            "./setup.py",
            "--experiments",
            "use_runner_v2",
            "--dask_client_address",
            "h:1",
            "--dask_npartitions",
            "3",
            "--job_endpoint",
            "h:2",
            "--environment_type",
            "EXTERNAL",
            "--environment_config",
            "h:3",
            "--flink_master",
            "h:4",
            "--direct_running_mode",
            "multi_processing",
            "--direct_num_workers",
            "2",
            "--beam_width=3",
            "--verbose",
            "--json",
            "--dry_run",
            "True",
        ]
    )
    with pytest.raises(UsageError, match="unknown flag --inptu"):
        check_flags(["--inptu", "x"])
    with pytest.raises(UsageError, match="unexpected argument"):
        check_flags(["stray"])


@pytest.mark.parametrize(
    "module,typo,meant",
    [
        ("training.train", "--epochz", "--epochs"),
        ("training.evaluate", "--modle", "--model"),
        ("training.quantize", "--modle", "--model"),
        ("training.compare_precision", "--modle", "--model"),
        ("caption_report.cli", "--sampel", "--sample"),
    ],
)
def test_other_clis_refuse_unknown_flags_with_a_suggestion(module, typo, meant, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_info:
        main([typo, "1"])
    assert exit_info.value.code == 2
    assert f"unknown flag {typo} (did you mean {meant}?)" in capsys.readouterr().err


def test_strict_parser_refuses_abbreviations_and_keeps_negative_numbers(capsys):
    parser = StrictArgumentParser(prog="p")
    parser.add_argument("--beam_width", type=int)
    parser.add_argument("--alpha", type=float)
    assert parser.parse_args(["--alpha", "-0.5", "--beam_width=3"]).alpha == -0.5
    with pytest.raises(SystemExit):
        parser.parse_args(["--beam", "3"])
    assert "unknown flag --beam (did you mean --beam_width?)" in capsys.readouterr().err
    assert did_you_mean("--zzz", ["--beam_width"]) == ""


def test_progress_updates_one_line_on_a_terminal_and_prints_lines_otherwise():
    import io
    import logging

    from beam_pipeline.console import PROGRESS_LOGGER, ConsoleHandler

    def emit(handler: ConsoleHandler, name: str, message: str) -> None:
        handler.emit(logging.LogRecord(name, logging.INFO, __file__, 1, message, None, None))

    for tty, expected in ((True, "\r\x1b[K10 done\r\x1b[K20 done\nSummary\n"), (False, "10 done\n20 done\nSummary\n")):
        stream = io.StringIO()
        handler = ConsoleHandler(stream, tty)
        emit(handler, PROGRESS_LOGGER, "10 done")
        emit(handler, PROGRESS_LOGGER, "20 done")
        emit(handler, "beam_pipeline.console", "Summary")
        assert stream.getvalue() == expected
