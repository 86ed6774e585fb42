"""The package's layers import only downward, and the project's own modules are imported at module top.

Read from the source with ``ast`` (nothing is imported): every ``import`` / ``from ... import`` of a project
module, absolute or relative, at any depth, is resolved to the file that defines it and compared by layer.
The layers are the README's "Layout" section.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("retrieval", "encoders", "rerankers", "benchmarks")

# (layer, name, path prefixes relative to the repository): a module may import from its own layer or below.
LAYERS = [
    (0, "core", ("retrieval/version.py", "retrieval/types.py", "retrieval/stage.py", "retrieval/util.py",
                 "retrieval/latency.py", "retrieval/cpu.py",
                 "retrieval/shards.py",
                 "retrieval/java.py", "retrieval/data.py", "retrieval/evaluation.py", "retrieval/cli.py", "retrieval/card.py",
                 "retrieval/terrier.py",
                 "retrieval/lora/")),
    (1, "stages", ("retrieval/stages/", "retrieval/index/")),
    (2, "models", ("encoders/", "rerankers/")),
    (3, "pipeline", ("retrieval/pipeline/",)),
    (3, "distributed", ("retrieval/distributed/",)),
    (4, "apps", ("retrieval/service/", "retrieval/__main__.py", "retrieval/__init__.py")),
    (5, "benchmarks", ("benchmarks/",)),
]


def layer_of(rel: str) -> tuple[int, str]:
    matches = [(len(prefix), layer, name) for layer, name, prefixes in LAYERS for prefix in prefixes
               if rel == prefix or (prefix.endswith("/") and rel.startswith(prefix))]
    if not matches:
        raise AssertionError(f"{rel} belongs to no layer: add it to LAYERS here and to the README's Layout")
    _, layer, name = max(matches)
    return layer, name


def module_file(module: str, root: Path = REPO) -> str | None:
    """The file (relative to ``root``) that defines a project module, or None for anything else."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root / Path(*module.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py").relative_to(root).as_posix()
    if (base / "__init__.py").is_file():
        return (base / "__init__.py").relative_to(root).as_posix()
    raise AssertionError(f"import of {module!r}, which is not a module of this project")


def _imports(tree: ast.AST, rel: str):
    """(imported module, line, at module top?) for every import statement of the file."""
    package = rel[:-3].replace("/", ".")
    if not rel.endswith("__init__.py"):
        package = package.rsplit(".", 1)[0]
    else:
        package = package[: -len(".__init__")]
    top = set(map(id, tree.body))
    guarded = {id(n) for node in tree.body if isinstance(node, (ast.If, ast.Try)) for n in ast.walk(node)}
    for node in ast.walk(tree):
        at_top = id(node) in top or id(node) in guarded
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, at_top
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            yield module, node.lineno, at_top
            for alias in node.names:  # `from package import submodule`
                yield f"{module}.{alias.name}", node.lineno, at_top


def violations(root: Path = REPO, files: list[Path] | None = None) -> tuple[list[str], list[str]]:
    """(upward imports, project imports deferred into functions), one line each."""
    upward, deferred = [], []
    files = files or [p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))]
    for path in files:
        rel = path.relative_to(root).as_posix()
        layer, name = layer_of(rel)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        for module, line, at_top in _imports(tree, rel):
            try:
                target = module_file(module, root)
            except AssertionError:
                if module.rsplit(".", 1)[0] != module and module_file(module.rsplit(".", 1)[0], root):
                    continue  # `from package import name`: a name, not a submodule
                raise
            if target is None or target == rel:
                continue
            t_layer, t_name = layer_of(target)
            if t_layer > layer:
                upward.append(f"{rel}:{line} ({name}, layer {layer}) imports {module} ({t_name}, layer {t_layer})")
            if not at_top:
                deferred.append(f"{rel}:{line} imports {module} inside a function or class")
    return upward, deferred


def test_no_module_imports_upward():
    upward, _ = violations()
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_project_imports_are_at_module_top():
    _, deferred = violations()
    assert not deferred, "imports of the project's own modules belong at module top:\n" + "\n".join(deferred)


def test_the_check_catches_an_upward_and_a_deferred_import(tmp_path):
    """The checker itself can fail: a stage module that imports the pipeline, and a core module that imports
    the data loader inside a function."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    for sub in ("stages", "pipeline"):
        (tmp_path / "retrieval" / sub).mkdir()
        (tmp_path / "retrieval" / sub / "__init__.py").write_text("")
    (tmp_path / "retrieval" / "pipeline" / "build.py").write_text("X = 1\n")
    (tmp_path / "retrieval" / "data.py").write_text("Y = 1\n")
    bad = tmp_path / "retrieval" / "stages" / "bm25.py"
    bad.write_text("from ..pipeline.build import X\n")
    lazy = tmp_path / "retrieval" / "util.py"
    lazy.write_text("def f():\n    from .data import Y\n    return Y\n")
    upward, deferred = violations(tmp_path, [bad, lazy])
    assert upward == ["retrieval/stages/bm25.py:1 (stages, layer 1) imports retrieval.pipeline.build (pipeline, layer 3)"]
    assert deferred == ["retrieval/util.py:2 imports retrieval.data inside a function or class"]


def test_every_file_has_a_layer():
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            layer_of(path.relative_to(REPO).as_posix())


@pytest.mark.parametrize("package", ["retrieval", "encoders", "rerankers", "retrieval.pipeline", "retrieval.lora"])
def test_packages_export_their_main_names(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
