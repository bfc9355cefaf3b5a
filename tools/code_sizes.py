"""Module and function lengths of a source tree, against the house limits (docs/design.md,
"Sizes"): no module over ~400 lines and no function over ~80, outside tests.

Reads the `.py` files git tracks (and the untracked ones it does not ignore) under ROOT, or
every `.py` file where ROOT is not a git checkout (a `git archive` of an older commit), leaving
out tests/. A function's length runs from its `def` (decorators included) to its last line; a
nested function counts on its own and inside its parent.

    python tools/code_sizes.py [ROOT] [--json]
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
from pathlib import Path

MODULE_LINES, FUNCTION_LINES = 400, 80


def sources(root: Path) -> list[Path]:
    """The .py files under root outside tests/ (and outside hidden and virtual-env folders)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "*.py"], cwd=root,
                                capture_output=True, text=True, check=True).stdout.split()
        files = [root / p for p in listed]
    except (subprocess.CalledProcessError, FileNotFoundError):
        files = list(root.rglob("*.py"))
    return sorted(p for p in files if p.is_file() and not any(
        part == "tests" or part.startswith(".") for part in p.relative_to(root).parts[:-1]))


def sizes(root: Path) -> dict:
    """{"modules": n, "functions": n, "long_modules": [[path, lines]], "long_functions":
    [[path:line name, lines]]}, the long ones longest first."""
    modules, functions = {}, {}
    for path in sources(root):
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = str(path.relative_to(root))
        modules[rel] = len(text.splitlines())
        for node in ast.walk(ast.parse(text, rel)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                functions[f"{rel}:{node.lineno} {node.name}"] = node.end_lineno - start + 1

    def over(found: dict, limit: int) -> list:
        return sorted(([k, n] for k, n in found.items() if n > limit), key=lambda kn: -kn[1])

    return {"modules": len(modules), "functions": len(functions),
            "long_modules": over(modules, MODULE_LINES), "long_functions": over(functions, FUNCTION_LINES)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = sizes(args.root.resolve())
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['modules']} modules, {result['functions']} functions outside tests")
    print(f"modules over {MODULE_LINES} lines: {len(result['long_modules'])}")
    for name, n in result["long_modules"]:
        print(f"  {n:5d}  {name}")
    print(f"functions over {FUNCTION_LINES} lines: {len(result['long_functions'])}")
    for name, n in result["long_functions"]:
        print(f"  {n:5d}  {name}")


if __name__ == "__main__":
    main()
