"""Strict command lines: every CLI of the project refuses an unknown flag (exit 2) and names the
flag it probably meant, instead of running on with a default. Light: argparse and difflib only."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


def did_you_mean(flag: str, known: Iterable[str]) -> str:
    """``" (did you mean --beam_width?)"`` for the known flag closest to ``flag`` ("--x=1" counts as
    "--x"), or "" when none is close."""
    close = difflib.get_close_matches(flag.split("=", 1)[0], sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_arguments_message(unknown: Sequence[str], known: Iterable[str]) -> str:
    """One message for the arguments a parser did not recognise: each unknown flag with its
    did-you-mean; values that belong to no flag are listed too."""
    known = list(known)
    flags = [a for a in unknown if a.startswith("-")]
    parts = [f"unknown flag {flag}{did_you_mean(flag, known)}" for flag in flags]
    if not flags:
        parts.append("unexpected argument(s): " + " ".join(unknown))
    return "; ".join(parts)


class StrictArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose unknown-flag error says which flag was probably meant (exit 2,
    as argparse). Abbreviated flags are refused too (``allow_abbrev=False``): a prefix that
    matches today may match two flags tomorrow."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:
        """Parse, refusing unknown flags first (before argparse complains about a missing required
        flag that the typo was meant to be)."""
        argv = list(sys.argv[1:] if args is None else args)
        flags = argv[: argv.index("--")] if "--" in argv else argv
        unknown = [
            a
            for a in flags
            if a.startswith("-")
            and len(a) > 1
            and not _NUMBER.match(a)
            and a.split("=", 1)[0] not in self._option_string_actions
        ]
        if unknown:
            self.error(unknown_arguments_message(unknown, self._option_string_actions))
        parsed, extra = self.parse_known_args(argv, namespace)
        if extra:
            self.error(unknown_arguments_message(extra, self._option_string_actions))
        return parsed
