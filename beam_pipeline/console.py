"""What ``run_pipeline.py`` shows on the terminal: a header line, progress, and a short human
summary; the libraries' log lines and warnings (TensorFlow's C++ logging, Beam's root-logger
warnings, Python warnings) only with ``--verbose``.

Quiet mode (``Terminal(verbose=False)``) sends file descriptor 2 (everything any library or
native code writes to stderr, worker subprocesses included) to a log file, and prints our own
lines on a copy of the real stderr: the header and progress (``beam_pipeline.console`` and
``beam_pipeline.progress`` loggers, INFO), our warnings (``beam_pipeline``, ``model`` loggers)
and anyone's errors. The log file is deleted after a successful run and named when a run fails.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import traceback
from collections import Counter
from typing import Any, TextIO

CONSOLE_LOGGER = "beam_pipeline.console"
PROGRESS_LOGGER = "beam_pipeline.progress"
_OURS = ("beam_pipeline", "model", "caption_report", "__main__")


class _QuietFilter(logging.Filter):
    """Header and progress at INFO, our own loggers from WARNING, anyone's from ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in (CONSOLE_LOGGER, PROGRESS_LOGGER):
            return record.levelno >= logging.INFO
        if record.name.split(".")[0] in _OURS:
            return record.levelno >= logging.WARNING
        return record.levelno >= logging.ERROR


class ConsoleHandler(logging.StreamHandler):
    """Plain lines; on a terminal, progress lines overwrite each other (one updating line)."""

    def __init__(self, stream: TextIO, tty: bool) -> None:
        super().__init__(stream)
        self.tty = tty
        self._open_line = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.levelno >= logging.WARNING:
                text = f"{record.levelname.lower()}: {text}"
            with self.lock:
                if self.tty and record.name == PROGRESS_LOGGER:
                    self.stream.write("\r\x1b[K" + text)
                    self._open_line = True
                else:
                    self.stream.write(("\n" if self._open_line else "") + text + "\n")
                    self._open_line = False
                self.stream.flush()
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)

    def end_line(self) -> None:
        """Finish an open progress line before other output."""
        with self.lock:
            if self._open_line:
                self.stream.write("\n")
                self.stream.flush()
                self._open_line = False


class Terminal:
    """Context manager for one command-line run (see module docstring). ``say`` prints one of our
    lines to the (real) stderr; ``fail`` prints an unexpected exception loudly."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.log_path: str | None = None
        self._saved_fd: int | None = None
        self._handler: ConsoleHandler | None = None
        self.stream: TextIO = sys.stderr
        self._own_stream = False

    def __enter__(self) -> Terminal:
        root = logging.getLogger()
        if self.verbose:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            logging.getLogger("apache_beam").setLevel(logging.WARNING)
            return self
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        fd, self.log_path = tempfile.mkstemp(prefix="caption-run-", suffix=".log")
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        os.dup2(fd, 2)
        os.close(fd)
        if _on_fd2(sys.stderr):  # our lines on a copy of the real stderr; fd 2 now goes to the log
            self.stream = io.TextIOWrapper(os.fdopen(os.dup(self._saved_fd), "wb"), line_buffering=True)
            self._own_stream = True
        else:  # sys.stderr was replaced (e.g. captured by a test): write our lines there
            self.stream = sys.stderr
        self._handler = ConsoleHandler(self.stream, _isatty(self.stream))
        self._handler.addFilter(_QuietFilter())
        root.addHandler(self._handler)
        self._log_handler = logging.StreamHandler(sys.stderr)  # everything, into the log file
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(self._log_handler)
        root.setLevel(logging.INFO)
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
        return self

    def say(self, text: str) -> None:
        if self._handler is not None:
            self._handler.end_line()
        print(text, file=self.stream, flush=True)

    def fail(self, exc: BaseException) -> None:
        """An unexpected error: its traceback, and where the libraries' output went."""
        self.say("".join(traceback.format_exception(exc)).rstrip())
        if self.log_path:
            self.say(f"library output of this run: {self.log_path} (or rerun with --verbose)")
            self.log_path = None  # keep it

    def __exit__(self, *exc_info: Any) -> None:
        if self._saved_fd is None:
            return
        self._handler.end_line()
        root = logging.getLogger()
        root.removeHandler(self._handler)
        root.removeHandler(self._log_handler)
        sys.stderr.flush()
        os.dup2(self._saved_fd, 2)
        os.close(self._saved_fd)
        if self._own_stream:
            self.stream.close()
        if self.log_path:
            os.unlink(self.log_path)


def _on_fd2(stream: TextIO) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, OSError, ValueError):
        return False


def errors_by_type(output: str, run_id: str) -> Counter:
    """``error_type`` -> rows in this run's committed error files (``OUTPUT/errors/part-RUNID-*``)."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    counts: Counter = Counter()
    pattern = FileSystems.join(output, "errors", f"part-{run_id}-*.parquet")
    for match in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(match.path) as f:
            table = pq.read_table(io.BytesIO(f.read()), columns=["error_type"])
        counts.update(table.column("error_type").to_pylist())
    return counts


def inventory_summary(summary: dict[str, Any]) -> list[str]:
    """At most 4 lines for an ``--inventory`` run: counts, unreadable by type, the captioning
    estimate per precision, where the outputs are."""
    line = (
        f"Inventory of {summary['matched']} input{'s' * (summary['matched'] != 1)}: {summary['readable']} "
        f"readable, {summary['distinct_content']} distinct contents, {summary['duplicate_inputs']} duplicate "
        f"inputs, {summary['bytes']} bytes"
    )
    by_type = summary.get("unreadable_by_type") or {}
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0])))
    lines = [line, f"Unreadable: {summary['unreadable']}" + (f" ({kinds})" if kinds else "")]
    estimate = summary.get("estimate") or {}
    hours = ", ".join(
        f"{precision} {e['core_hours']:.3g} core-hours"
        for precision, e in (estimate.get("per_precision") or {}).items()
    )
    if hours:
        lines.append(
            f"Captioning estimate: {hours} ({summary['wall_seconds']} s for this inventory, {summary['runner']})"
        )
    out = summary["output"]
    lines.append(f"Outputs: {out}/inventory, {out}/inventory_summary.json")
    return lines


def human_summary(summary: dict[str, Any], errors: Counter) -> list[str]:
    """At most 6 lines: counts, errors by type, speed, BLEU, worker processes, where the outputs are
    (an ``--inventory`` run: ``inventory_summary``)."""
    if summary.get("mode") == "inventory":
        return inventory_summary(summary)
    inputs = summary["matched"]
    line = f"Captioned {summary['captioned']} of {inputs} input{'s' * (inputs != 1)}"
    if summary.get("skipped_resume"):
        line += f" ({summary['skipped_resume']} already done, skipped)"
    if errors:
        kinds = ", ".join(f"{kind} {n}" for kind, n in errors.most_common())
        line += f"; {summary['failed']} error{'s' * (summary['failed'] != 1)}: {kinds}"
    else:
        line += "; no errors"
    lines = [line]
    rate = summary.get("images_per_second")
    lines.append(
        f"Speed: {rate if rate is not None else '-'} images/s ({summary['wall_seconds']} s, "
        f"model {summary['model_id']}, {summary['decode']}, {summary['runner']})"
    )
    if summary.get("bleu"):
        b = summary["bleu"]
        lines.append(
            f"BLEU-1..4: {b['bleu1']:.3f} {b['bleu2']:.3f} {b['bleu3']:.3f} {b['bleu4']:.3f} "
            f"over {summary['bleu_segments']} captions with references"
        )
    per_process = summary.get("captioned_per_process") or {}
    if len(per_process) > 1:
        lines.append(
            f"Captioned by {len(per_process)} processes: "
            + ", ".join(f"{p} {n}" for p, n in sorted(per_process.items()))
        )
    out = summary["output"]
    where = [f"{out}/captions", f"{out}/errors", f"{out}/summary.json"]
    if summary.get("report"):
        where.append(str(summary["report"]))
    lines.append("Outputs: " + ", ".join(where))
    if summary.get("iceberg"):
        lines.append(f"Iceberg: {summary['iceberg']}")
    return lines
