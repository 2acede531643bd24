"""The package's import structure: no circles, and lower layers never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cad"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, lazy: bool = False) -> set[str]:
    """cad modules imported at module level, or anywhere (``lazy``: function-local imports
    and ``if TYPE_CHECKING:`` blocks included)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    nodes = ast.walk(tree) if lazy else tree.body
    for node in nodes:
        if isinstance(node, ast.If) and not lazy:  # `if TYPE_CHECKING:` blocks do not run
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cad")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cad"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _graph(lazy: bool = False) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _imports(path, lazy) if m in modules} for name, path in modules.items()
    }


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(graph[module]):
            if dep == module or dep.startswith(module + "."):
                continue  # a package importing its own submodules
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


LOWER_NEVER_IMPORTS = {
    "cad.io": ("cad.data", "cad.pipeline", "cad.cli", "cad.api", "cad.scoring", "cad.artifacts"),
    "cad.artifacts": ("cad.pipeline", "cad.cli", "cad.api", "cad.scoring"),
    "cad.evaluate": ("cad.pipeline", "cad.cli", "cad.api"),
    "cad.data": ("cad.pipeline", "cad.cli", "cad.api", "cad.scoring"),
    "cad.finetune": ("cad.pipeline", "cad.cli", "cad.api"),
    "cad.pipeline": ("cad.cli", "cad.api"),
    "cad.scoring": ("cad.pipeline", "cad.cli", "cad.api"),
    "cad.pacs": ("cad.pipeline", "cad.cli", "cad.api", "cad.finetune", "cad.data"),
    "cad.config": ("cad.pipeline", "cad.artifacts", "cad.cli", "cad.api"),
}


def test_lower_layers_never_import_higher_ones():
    problems = []
    for module, deps in _graph(lazy=True).items():
        for layer, forbidden in LOWER_NEVER_IMPORTS.items():
            if module == layer or module.startswith(layer + "."):
                problems += [f"{module} imports {d}" for d in deps if d.startswith(forbidden)]
    assert not problems, problems
