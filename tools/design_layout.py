"""Draws the package layout of docs/design.md from the code: every unit (a subpackage of bigan,
one of its top-level modules, or a composing package beside it) as a box in its layer, every
import between two units as an arrow from the importer to what it imports.

The graph and the layers are the ones tests/test_package_layers.py checks (read with `ast`,
lazy imports inside functions included), so the picture cannot show a layering the test does
not hold. Drawn with matplotlib (graphviz is not a dependency); boxes within a layer are ordered
by the mean position of their neighbours, a few sweeps up and down, so fewer arrows cross.

    python tools/design_layout.py [--out docs/images/design_layout.png]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.test_package_layers import LAYERS, import_edges  # noqa: E402

ROLES = ["vocabularies,\nbuilding blocks,\npure math", "networks, data", "checkpoints,\ngeneration",
         "training, export,\nimports", "evaluation", "compose: CLI,\nlaunch, serving"]


def label(unit: str) -> str:
    """The name docs/design.md uses: `config/` for a package, `losses.py` for a module."""
    if unit == "bigan":
        return "bigan/__init__"
    path = ROOT.joinpath(*unit.split("."))
    if unit.startswith("bigan."):
        name = unit.removeprefix("bigan.")
        return f"{name}/" if path.is_dir() else f"{name}.py"
    return unit.replace(".", "/") + "/"


def ordered(layers: list[set[str]], edges: set[tuple[str, str]], sweeps: int = 4) -> list[list[str]]:
    """Each layer's units left to right: sorted by name, then by the mean x of the units they
    import or are imported by (the barycenter heuristic), alternately from the top and the bottom."""
    rows = [sorted(units) for units in layers]
    near: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        near[a].add(b)
        near[b].add(a)
    for sweep in range(sweeps):
        x = {u: (i + 0.5) / len(row) for row in rows for i, u in enumerate(row)}
        order = range(len(rows)) if sweep % 2 else reversed(range(len(rows)))
        for k in order:
            rows[k].sort(key=lambda u: sum(x[v] for v in near[u]) / len(near[u]) if near[u] else x[u])
            x.update({u: (i + 0.5) / len(rows[k]) for i, u in enumerate(rows[k])})
    return rows


def draw(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    edges = set(import_edges())
    rows = ordered(LAYERS, edges)
    width, box_w, box_h, gap = 15.0, 1.22, 0.34, 1.25
    pos = {u: (1.4 + (width - 1.4) * (i + 0.5) / len(row), k * gap)
           for k, row in enumerate(rows) for i, u in enumerate(row)}
    fig = Figure(figsize=(width + 0.4, gap * len(rows) + 1.3), layout="constrained")
    ax = fig.add_subplot()
    ax.set(xlim=(0, width + 0.2), ylim=(-0.4, gap * (len(rows) - 1) + 1.2))
    ax.axis("off")
    colours = [f"C{k}" for k in range(len(rows))]
    layer_of = {u: k for k, row in enumerate(rows) for u in row}
    for a, b in sorted(edges):
        (xa, ya), (xb, yb) = pos[a], pos[b]
        same = ya == yb  # beside it in its layer: an arc over the row, top to top
        bend = (-0.3 if xa < xb else 0.3) if same else 0.04
        ax.add_patch(FancyArrowPatch((xa, ya + (box_h if same else -box_h) / 2), (xb, yb + box_h / 2),
                                     arrowstyle="-|>", mutation_scale=8, lw=0.6, alpha=0.55,
                                     color=colours[layer_of[a]], shrinkA=0, shrinkB=1,
                                     connectionstyle=f"arc3,rad={bend}"))
    for k, row in enumerate(rows):
        ax.text(0.05, k * gap, f"layer {k}\n{ROLES[k]}", fontsize=7.5, va="center", color=colours[k])
        w = min(box_w, 0.9 * (width - 1.4) / len(row))  # a gap between neighbours
        for u in row:
            x, y = pos[u]
            ax.add_patch(FancyBboxPatch((x - w / 2, y - box_h / 2), w, box_h,
                                        boxstyle="round,pad=0.02", fc="white", ec=colours[k], lw=1.2,
                                        zorder=3))
            ax.text(x, y, label(u), ha="center", va="center", fontsize=7.5, zorder=4)
    ax.set_title(f"bigan's units by layer, {len(edges)} imports (arrow: importer -> imported; "
                 "tests/test_package_layers.py checks that none points up)", fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=110)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "design_layout.png")
    print(draw(parser.parse_args().out))


if __name__ == "__main__":
    main()
