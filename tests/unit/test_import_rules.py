"""The package's import rules: the import-linter contracts in pyproject.toml, and no import cycles.

Both read the source statically (grimp), so nothing here imports torch or any tunelab module.
"""

from __future__ import annotations

import subprocess
import sys
from collections import deque
from functools import cache
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    """`lint-imports` (the contracts under [tool.importlinter] in pyproject.toml) exits 0."""
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"lint-imports exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"


def _is_ancestor(package: str, module: str) -> bool:
    return module.startswith(package + ".")


@cache
def _grimp_graph() -> grimp.ImportGraph:
    return grimp.build_graph("tunelab", exclude_type_checking_imports=True, cache_dir=None)


def _graph() -> dict[str, set[str]]:
    """tunelab's modules and the tunelab modules each imports (a package stands for its __init__.py).

    Imports of a module's own ancestor packages are left out on purpose: a package's __init__ re-exports
    from its submodules while those submodules import names from the package (`from tunelab.data import
    Prepared`, `from tunelab import __version__`), and Python resolves that as long as the package is
    initialised first. A package importing its own submodules stays in, so a loop that runs through a
    package's __init__ (lm.use -> tasks -> tasks.causal_lm -> lm.use) is still found. Imports under
    `if TYPE_CHECKING:` never run and are left out, as in the import-linter config."""
    graph = _grimp_graph()
    return {m: {i for i in graph.find_modules_directly_imported_by(m) if not _is_ancestor(i, m)}
            for m in graph.modules}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def _one_loop(edges: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest import loop through the component's first module, for the failure message."""
    members, first = set(component), component[0]
    came_from: dict[str, str] = {}
    queue = deque([first])
    while queue:
        node = queue.popleft()
        for child in sorted(edges[node] & members):
            if child == first:
                loop = [node]
                while loop[-1] != first:
                    loop.append(came_from[loop[-1]])
                return [first, *reversed(loop[:-1]), first]
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    return component


def _describe(component: list[str], loop: list[str]) -> str:
    graph = _grimp_graph()
    steps = []
    for importer, imported in zip(loop, loop[1:]):
        lines = sorted(d["line_number"] for d in graph.get_import_details(importer=importer, imported=imported))
        steps.append(f"      {importer} -> {imported} (l.{', l.'.join(map(str, lines))})")
    return f"  {len(component)} modules: {', '.join(component)}\n    for example:\n" + "\n".join(steps)


def test_no_import_cycles() -> None:
    edges = _graph()
    cycles = _cycles(edges)
    assert not cycles, (f"{len(cycles)} import cycle(s) among tunelab's modules (each group imports itself "
                        "through the others):\n" + "\n".join(_describe(c, _one_loop(edges, c)) for c in cycles))
