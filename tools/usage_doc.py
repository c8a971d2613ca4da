"""Write docs/USAGE.md, the command-line reference, from the argument parsers themselves.

``python -m tools.usage_doc`` rewrites the file; ``python -m tools.usage_doc --check`` exits 1
(naming the command to run) when the file differs from what the parsers say now.
``tests/test_usage_doc.py`` runs the check, so a flag added, removed or reworded without
regenerating the file fails CI.

Covered: ``run_pipeline.py`` (``beam_pipeline.options.CaptionOptions``), ``training.train``,
``training.quantize``, ``caption_report`` and ``caption_index``. Defaults are the parsers' own,
computed with the ``CAPTION_*`` environment variables unset, so the file does not depend on the
machine that writes it (the home folder is written ``~``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
USAGE = ROOT / "docs" / "USAGE.md"
REGENERATE = "python -m tools.usage_doc"

HEADER = f"""# Command-line reference

Generated from the argument parsers by `{REGENERATE}`: do not edit by hand
(`tests/test_usage_doc.py` fails when this file is not current). What the flags do in practice,
with examples: [RUNNING.md](RUNNING.md); outputs: [OUTPUTS.md](OUTPUTS.md); training and the INT8
encoder: [MODEL.md](MODEL.md). Every command refuses unknown and abbreviated flags (exit 2, with
the flag it probably meant).
"""


@contextlib.contextmanager
def _without_caption_environment() -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("CAPTION_")}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


def _pipeline_parser() -> argparse.ArgumentParser:
    from beam_pipeline.options import CaptionOptions

    parser = argparse.ArgumentParser(prog="python run_pipeline.py", add_help=False)
    CaptionOptions._add_argparse_args(parser)  # noqa: SLF001 - Beam's hook: the only place our flags are declared
    return parser


def _parsers() -> list[tuple[str, str, Callable[[], argparse.ArgumentParser]]]:
    """(title, introduction, parser factory) of every documented command, in order."""
    from caption_index.cli import build_parser as index_parser
    from caption_report.cli import build_parser as report_parser
    from training.quantize import build_parser as quantize_parser
    from training.train import build_parser as train_parser

    return [
        (
            "run_pipeline.py (caption-images)",
            "`python run_pipeline.py --input GLOB --output OUT_DIR [flags]`. Beam's own flags (`--runner`, "
            "`--direct_running_mode`, `--direct_num_workers`, `--setup_file`, Dataflow's, Dask's) are accepted "
            "too and are not listed here. Environment: `CAPTION_ENCODER_WEIGHTS` (default of `--encoder_weights`), "
            "`CAPTION_CACHE_DIR` (weights and converted graphs), `CAPTION_MODEL_THREADS` (cores per process).",
            _pipeline_parser,
        ),
        (
            "python -m training.train (caption-train)",
            "Trains the decoders (and ensembles, SCST) and writes a model artifact; resumes where it stopped.",
            train_parser,
        ),
        (
            "python -m training.quantize",
            "Adds an INT8 encoder to an artifact (needs the `int8` extra), behind a quality gate.",
            quantize_parser,
        ),
        (
            "python -m caption_report (caption-report)",
            "Writes the HTML gallery of a pipeline output directory.",
            report_parser,
        ),
        (
            "python -m caption_index (caption-index)",
            "Searches, or exports, an index made by `run_pipeline.py --search_index`.",
            index_parser,
        ),
    ]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _flag(action: argparse.Action) -> str:
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        value = "{" + ",".join(str(c) for c in action.choices) + "}"
    elif action.metavar is not None:
        value = str(action.metavar)
    else:
        value = action.dest.upper()
    if not action.option_strings:
        return value
    names = ", ".join(action.option_strings)
    return names if action.nargs == 0 else f"{names} {value}"


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    default = action.default
    if default is None or default is False or default == argparse.SUPPRESS or action.nargs == 0:
        return ""
    text, home = str(default), os.path.expanduser("~")
    if home not in ("", "~", "/") and text.startswith(home + os.sep):  # the same file on every machine
        text = "~" + text[len(home) :]
    return f"`{text}`"


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "prog": prog}
    return text


def _table(actions: list[argparse.Action], prog: str) -> list[str]:
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for action in actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        rows.append(f"| `{_cell(_flag(action))}` | {_cell(_default(action))} | {_cell(_help(action, prog))} |")
    return rows if len(rows) > 2 else []


def _parser_section(parser: argparse.ArgumentParser, level: str) -> list[str]:
    out: list[str] = []
    for group in parser._action_groups:  # noqa: SLF001 - argparse keeps its groups only there
        table = _table(group._group_actions, parser.prog)  # noqa: SLF001 - as above
        if not table:
            continue
        if group.title not in ("options", "optional arguments", "positional arguments"):
            out += [f"{level} {group.title}", ""]
        out += table + [""]
    for action in parser._actions:  # noqa: SLF001 - as above
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += [f"{level} {parser.prog} {name}", ""] + _parser_section(sub, level + "#")
    return out


def render() -> str:
    """The whole of docs/USAGE.md, as the parsers declare the flags now."""
    lines = [HEADER]
    with _without_caption_environment():
        for title, intro, factory in _parsers():
            lines += [f"## {title}", "", intro, ""] + _parser_section(factory(), "###")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"{REGENERATE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/USAGE.md is not current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not USAGE.exists() or USAGE.read_text() != text:
            print(f"{USAGE.relative_to(ROOT)} is not current: run `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    USAGE.write_text(text)
    print(f"wrote {USAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
