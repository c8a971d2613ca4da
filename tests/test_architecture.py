"""Architecture rules, checked on the source (no imports executed):

* no import cycles between the project's modules, deferred imports inside functions included;
* the dependency direction: ``beam_pipeline`` never imports ``training``; ``model`` (the core both
  depend on) imports neither;
* no module of ``model/``, ``training/`` or ``beam_pipeline/`` over 400 lines.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "training", "beam_pipeline")
MAX_LINES = 400


def project_packages() -> list[str]:
    """The top-level project packages: the three above and any other package folder at the root."""
    found = {
        p.parent.name
        for p in ROOT.glob("*/__init__.py")
        if p.parent.name not in ("tests", "bench", "models") and not p.parent.name.startswith(".")
    }
    return sorted(found | set(PACKAGES))


def module_files() -> dict[str, Path]:
    """Module name -> file, for every .py file of the project packages."""
    modules = {}
    for package in project_packages():
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules that ``path`` imports anywhere in its body (top level, functions, type
    checking blocks). ``from pkg import mod`` counts as importing ``pkg.mod`` when that is a module."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    found = set()
    for target in targets:
        # The deepest project module the name refers to (``model.storage.read_bytes`` -> ``model.storage``).
        parts = target.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts:
            found.add(".".join(parts))
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    known = set(modules)
    return {name: imported_modules(path, name, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a closed path ``[a, b, ..., a]``) or None, by depth-first search."""
    white, grey, black = 0, 1, 2
    colour = {node: white for node in graph}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt, white) == grey:
                return stack[stack.index(nxt) :] + [nxt]
            if colour.get(nxt, white) == white and nxt in graph:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        colour[node] = black
        return None

    for node in sorted(graph):
        if colour[node] == white:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def package_edges(graph: dict[str, set[str]], source: str, target: str) -> list[str]:
    """``module -> module`` edges from package ``source`` into package ``target``."""

    def top(name: str) -> str:
        return name.split(".")[0]

    return sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps if top(a) == source and top(b) == target)


# --------------------------------------------------------------------------- the finders can fail


def test_cycle_finder_finds_cycles_in_a_synthetic_graph():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y"}}) == ["y", "y"]
    assert find_cycle({"a": {"b", "d"}, "b": set(), "d": {"e"}, "e": {"d"}}) == ["d", "e", "d"]


def test_import_parser_sees_deferred_relative_and_from_imports(tmp_path):
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c", "other", "other.x"}
    source = tmp_path / "a.py"
    source.write_text(
        "import os\n"
        "from pkg import b\n"
        "def f():\n"
        "    from other.x import thing  # deferred\n"
        "    import pkg.c\n"
        "class K:\n"
        "    def g(self):\n"
        "        from . import b\n"
    )
    assert imported_modules(source, "pkg.a", known) == {"pkg", "pkg.b", "pkg.c", "other.x"}
    graph = {"pkg.a": {"other.x"}, "other.x": {"pkg.b"}, "pkg.b": set()}
    assert package_edges(graph, "other", "pkg") == ["other.x -> pkg.b"]


# --------------------------------------------------------------------------- the rules


def test_the_project_graph_is_found():
    graph = import_graph()
    assert {"model.artifact", "training.train", "beam_pipeline.matching"} <= set(graph)
    assert "model.storage" in graph["model.artifact"]


def test_no_import_cycles_deferred_imports_included():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_beam_pipeline_does_not_import_training():
    assert package_edges(import_graph(), "beam_pipeline", "training") == []


@pytest.mark.parametrize("outer", ["training", "beam_pipeline"])
def test_model_core_imports_neither_training_nor_the_pipeline(outer):
    assert package_edges(import_graph(), "model", outer) == []


def test_no_module_over_400_lines():
    too_long = {}
    for path in module_files().values():
        rel = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            too_long[rel] = lines
    assert too_long == {}


def test_no_cycles_between_top_level_packages():
    """Package level too: the report reads the pipeline's output schema, so the pipeline must not
    call the report (run_pipeline.py does); training and the pipeline use the core, not each other."""
    graph = import_graph()
    packages = {name.split(".")[0] for name in graph}
    package_graph = {a: {b for b in packages if b != a and package_edges(graph, a, b)} for a in packages}
    cycle = find_cycle(package_graph)
    assert cycle is None, "package cycle: " + " -> ".join(cycle or [])
    assert package_edges(graph, "beam_pipeline", "caption_report") == []
    assert package_edges(graph, "model", "caption_report") == []


LIGHT_MODULES = (
    "model.text",
    "model.vocabulary",
    "model.bleu",
    "model.caption_search",
    "model.artifact_config",
    "model.artifact",
    "model.storage",
    "model.tables",
    "model.flickr8k",
    "model.image_loading",
    "model.cli",
)


def test_light_model_modules_import_neither_tensorflow_nor_beam():
    """Reading and checking an artifact, searching captions and reading inputs need no TensorFlow."""
    code = (
        f"import sys; import {', '.join(LIGHT_MODULES)}; "
        "bad = [m for m in ('tensorflow', 'keras', 'apache_beam') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def hard_coded_tmp_paths(source: str) -> list[str]:
    """String constants in ``source`` that name a fixed place under /tmp (debugging leftovers: the
    code must write where the user's flags say, or to ``tempfile``'s folders)."""
    return [
        node.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("/tmp/")
    ]


def test_tmp_path_finder_sees_plain_and_formatted_strings():
    assert hard_coded_tmp_paths('open("/tmp/eng/calls.txt", "a")\nx = f"/tmp/{y}"\nz = "tmp/ok"') == [
        "/tmp/eng/calls.txt",
        "/tmp/",
    ]


def test_no_project_module_writes_to_a_fixed_tmp_path():
    found = {
        path.relative_to(ROOT).as_posix(): hits
        for path in module_files().values()
        if (hits := hard_coded_tmp_paths(path.read_text()))
    }
    found.update(
        {name: hits for name in ("run_pipeline.py",) if (hits := hard_coded_tmp_paths((ROOT / name).read_text()))}
    )
    assert found == {}
