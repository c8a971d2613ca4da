"""Docstrings and --help state contracts; measured numbers (timings, speeds, sizes measured on
some machine) live in docs/, where the machine and the command are named. This test reads the
docstrings and the help/description strings of the project's packages (no imports executed) and
refuses the shapes a measurement takes: an approximate quantity ("~0.4 s", "≈ 1.4 GB"), a speed
("25 images/s", "3 ms"), a speed-up ("1.2x faster") or a duration ("took 6 minutes")."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.test_architecture import ROOT, module_files

MEASUREMENT = re.compile(
    r"(~|≈|about )\s?\d[\d.,]*\s?(s|ms|sec|seconds|minutes|MB|GB|MiB|GiB|images/s)\b"
    r"|(?<![A-Za-z0-9_])\d[\d.,]*\s?(ms|images/s|img/s)\b"
    r"|\d(\.\d+)?\s?[x×]\s(faster|slower)"
    r"|\b(took|takes)\s~?\d"
)


def contract_texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every docstring and every help= / description= / epilog= string in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                texts.append((node.body[0].lineno, doc))
        if isinstance(node, ast.keyword) and node.arg in ("help", "description", "epilog"):
            texts += [
                (n.lineno, n.value)
                for n in ast.walk(node.value)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
            ]
    return texts


def measurements(path: Path) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line}: {found.group(0)!r}"
        for line, text in contract_texts(path)
        for found in MEASUREMENT.finditer(text)
    ]


def test_the_pattern_finds_measurements_and_spares_contracts(tmp_path: Path):
    source = tmp_path / "m.py"
    source.write_text(
        '"""Starts in ~0.4 s instead of ~3 s; 1.2x faster than TensorFlow."""\n'
        'def f():\n    """Runs at 25 images/s; a filter took 6 minutes."""\n'
        'p.add_argument("--x", help="backoff from 0.5 s, at most 10 s; 89.5 Mpx; ~1/batch; int64 ms keys")\n'
    )
    found = [g.group(0) for _, text in contract_texts(source) for g in MEASUREMENT.finditer(text)]
    assert found == ["~0.4 s", "~3 s", "1.2x faster", "25 images/s", "took 6"]


def test_no_docstring_or_help_quotes_a_measurement():
    files = list(module_files().values()) + [ROOT / "run_pipeline.py"]
    assert [m for path in files for m in measurements(path)] == []
