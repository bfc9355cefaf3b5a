"""The package layers of docs/design.md ("Layers"): every package imports only the ones below
it (or beside it, without a cycle), and only the CLI composes everything.

The graph is read from the source with `ast` (every `import`, including those inside functions,
which is where the lazy ones live), so the test sees what a reader sees, without importing torch.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.unit


# Lowest first. A unit is a top-level module of `bigan` or a subpackage, or one of the
# composing packages beside it.
LAYERS: list[set[str]] = [
    {"bigan", "bigan.config", "bigan.layers", "bigan.losses", "bigan.regularizers", "bigan.ema",
     "bigan.augment",
     "bigan.sampling", "bigan.pictures", "bigan.onnx_metadata", "bigan.ort_session"},
    {"bigan.models", "bigan.data"},
    {"bigan.checkpoint", "bigan.generation"},
    {"bigan.train", "bigan.export", "bigan.imports"},
    {"bigan.eval"},
    {"bigan.cli", "launch", "serving", "serving.core", "serving.transports"},
]
LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}
# The server's two wings and what composes them, lowest first (docs/design.md, layer 5): the core
# (engine, batcher, repository, cache, metrics, GPU path) knows no transport; the transports (v1,
# operations, KServe v2 HTTP and gRPC, page, middleware) know the core but not the app, the
# server or the config that compose them.
SERVING_WINGS = ["serving.core", "serving.transports", "serving"]
# What the torch-free server may import of bigan (docs/design.md, layer 5).
SERVING_MAY_IMPORT = {"bigan", "bigan.config", "bigan.sampling", "bigan.pictures",
                      "bigan.onnx_metadata", "bigan.ort_session"}


def unit_of(module: str) -> str | None:
    """`bigan.train.trainer` -> `bigan.train`; `bigan.losses` -> itself; `serving.core.engine` ->
    `serving.core`, `serving.app` -> `serving`; others -> None."""
    parts = module.split(".")
    if parts[0] == "serving" and len(parts) > 1 and f"serving.{parts[1]}" in SERVING_WINGS:
        return f"serving.{parts[1]}"
    if parts[0] in ("launch", "serving"):
        return parts[0]
    if parts[0] != "bigan":
        return None
    return ".".join(parts[:2])


def _from_target(module: str, name: str) -> str:
    """`from bigan import pictures` imports the module bigan.pictures; `from bigan import
    __version__` imports from the package itself."""
    if module == "bigan" and ((ROOT / "bigan" / f"{name}.py").exists()
                              or (ROOT / "bigan" / name).is_dir()):
        return f"bigan.{name}"
    return module


def modules() -> dict[str, Path]:
    """Every module of bigan, serving and launch by dotted name (a package by its own name)."""
    found = {}
    for top in ("bigan", "serving", "launch"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT)
            found[".".join(rel.with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def import_edges() -> dict[tuple[str, str], list[str]]:
    """(importing unit, imported unit) -> the files where that import is written."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for module, path in modules().items():
        rel = path.relative_to(ROOT)
        src = unit_of(module)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [_from_target(node.module, a.name) for a in node.names]
            else:
                continue
            for dst in filter(None, map(unit_of, names)):
                if dst != src:
                    edges[(src, dst)].append(str(rel))
    return edges


def test_every_unit_has_a_layer():
    """Every unit in the tree, not only those an import names: a new package that imports
    nothing of ours and that nothing imports yet still needs its place in the table."""
    units = {unit_of(module) for module in modules()} | {unit for edge in import_edges() for unit in edge}
    missing = sorted(u for u in units if u not in LAYER_OF)
    assert not missing, f"add these to LAYERS (and to docs/design.md's table): {missing}"


def test_no_package_imports_upward():
    upward = {f"{a} (layer {LAYER_OF[a]}) imports {b} (layer {LAYER_OF[b]}) in {sorted(set(files))}"
              for (a, b), files in import_edges().items()
              if a in LAYER_OF and b in LAYER_OF and LAYER_OF[b] > LAYER_OF[a]}
    assert not upward, "\n".join(sorted(upward))


def test_no_package_cycles():
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in import_edges():
        graph[a].add(b)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start]:
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    cycles = sorted({tuple(sorted((a, b))) for a, b in list(import_edges()) if reaches(b, a, set())})
    assert not cycles, f"package cycles through: {cycles}"


def test_only_the_cli_composes_everything():
    top = {unit: unit.split(".")[0] for edge in import_edges() for unit in edge}
    composers = {a for (a, b) in import_edges()
                 if top[b] in ("serving", "launch") and top[a] != top[b]}
    assert composers <= {"bigan.cli", "launch"}, composers
    serving_uses = {b for (a, b) in import_edges()
                    if top[a] == "serving" and b.startswith("bigan")}
    assert serving_uses <= SERVING_MAY_IMPORT, f"serving imports {serving_uses - SERVING_MAY_IMPORT}"


def test_the_serving_core_knows_no_transport():
    """Imports inside serving go down SERVING_WINGS only: core <- transports <- app/server."""
    rank = {unit: i for i, unit in enumerate(SERVING_WINGS)}
    upward = {f"{a} imports {b} in {sorted(set(files))}"
              for (a, b), files in import_edges().items()
              if a in rank and b in rank and rank[b] > rank[a]}
    assert not upward, "\n".join(sorted(upward))


def test_the_graph_is_read():
    """The graph is not vacuous: known edges, lazy imports inside functions included, are found."""
    edges = import_edges()
    assert ("bigan.train", "bigan.checkpoint") in edges
    assert ("bigan.eval", "bigan.generation") in edges
    assert ("serving.core", "bigan.ort_session") in edges
    assert ("serving.transports", "serving.core") in edges
    assert ("serving", "serving.transports") in edges
    assert ("bigan.cli", "launch") in edges
