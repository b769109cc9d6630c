"""The package's shape: no module imports another's private names, no import cycles, and the
modules named in Dockerfiles and compose files stay where they are."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "chromaguard"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, *, top_level_only: bool) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for each import in the file."""
    tree = ast.parse(path.read_text())
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:  # TYPE_CHECKING blocks do not run
            continue
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.append((module, [alias.name for alias in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names)
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    modules = _modules()
    offences = []
    for name, path in modules.items():
        for module, names, line in _imports(name, path, top_level_only=False):
            if not module.startswith("chromaguard") or module == name:
                continue
            for taken in names:
                if taken.startswith("_") and not taken.startswith("__") and f"{module}.{taken}" not in modules:
                    offences.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {taken} from {module}")
    assert offences == []


def test_module_level_imports_have_no_cycle() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, set())
        for module, names, _ in _imports(name, path, top_level_only=True):
            for candidate in [f"{module}.{n}" for n in names] + [module]:
                if candidate in modules and candidate != name:
                    edges.add(candidate)
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith("chromaguard") and nxt != "chromaguard" and not node.startswith(nxt + "."):
                if state.get(nxt) == 1:
                    cycles.append(stack[stack.index(nxt):] + [nxt])
                elif nxt not in state:
                    visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


@pytest.mark.parametrize("module", ["chromaguard.probe", "chromaguard._engine_main"])
def test_modules_named_in_deployments_keep_their_paths(module: str) -> None:
    assert module in _modules()


def test_the_probe_uses_the_standard_library_only() -> None:
    """It runs in health checks of images that may not have the dependencies importable fast."""
    path = PACKAGE / "probe.py"
    for module, _, line in _imports("chromaguard.probe", path, top_level_only=False):
        top = module.split(".")[0]
        assert top in {"__future__", "argparse", "json", "os", "socket", "ssl", "sys", "time", "urllib", "http",
                       "typing", "collections", "dataclasses", "ipaddress", "pathlib", "re", "base64"}, (module, line)
