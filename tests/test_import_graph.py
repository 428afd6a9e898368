"""The import graph of cvpipe's packages: no import circle, and only command-line entry points import the CLI.

Every module is read with `ast`, not imported: imports at module level, inside functions and under
`if TYPE_CHECKING:` all count (a circle through a function-level import is still two modules that
each need the other). `from package import name` is an import of `package.name` when that is a
module, of `package` otherwise; relative imports are resolved against the importing module.
"""

from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "serving", "pipeline", "bench")
CLI_MODULE = "components.cli"
COMMAND_LINE_MODULES = ("__main__", "cli")  # module names whose only job is a command line


@dataclass(frozen=True)
class Import:
    """One import statement's target module, where it is, and whether it runs only as a command."""

    target: str
    line: int
    entry_point: bool  # inside a function named `main` or under `if __name__ == "__main__":`


def find_modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `packages` under `root` (a package is its __init__.py)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


class _ImportCollector(ast.NodeVisitor):
    """Collects the imports of one module that name one of `modules`."""

    def __init__(self, module: str, is_package: bool, modules: set[str]):
        self.package = module if is_package else module.rpartition(".")[0]
        self.modules = modules
        self.imports: list[Import] = []
        self._entry_depth = 0

    def _known(self, name: str) -> str | None:
        """The most specific module of `modules` that importing `name` runs (None: outside them)."""
        while name and name not in self.modules:
            name = name.rpartition(".")[0]
        return name or None

    def _add(self, node: ast.stmt, name: str | None) -> None:
        if name is not None:
            self.imports.append(Import(name, node.lineno, self._entry_depth > 0))

    def _entry(self, node: ast.AST, is_entry: bool) -> None:
        self._entry_depth += is_entry
        self.generic_visit(node)
        self._entry_depth -= is_entry

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._entry(node, node.name == "main")

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        is_main = (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
                   and len(test.comparators) == 1 and isinstance(test.comparators[0], ast.Constant)
                   and test.comparators[0].value == "__main__")
        self._entry(node, is_main)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, self._known(alias.name))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.package.split(".")[: len(self.package.split(".")) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self._add(node, submodule if submodule in self.modules else self._known(base))


def module_imports(module: str, source: str, is_package: bool, modules: set[str]) -> list[Import]:
    """The imports of `modules` in `module`'s `source`, in any scope; one per statement and target."""
    collector = _ImportCollector(module, is_package, modules)
    collector.visit(ast.parse(source))
    return list(dict.fromkeys(i for i in collector.imports if i.target != module))


def import_graph(modules: dict[str, Path]) -> dict[str, list[Import]]:
    """Module -> the imports of other modules it makes."""
    return {name: module_imports(name, path.read_text(), path.name == "__init__.py", set(modules))
            for name, path in modules.items()}


def import_circles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """One shortest circle per strongly connected group of modules (Tarjan's algorithm), as [a, b, ..., a]."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in {i.target for i in graph.get(module, [])}:
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = set()
            while module not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph):
        if module not in index:
            connect(module)
    return [_shortest_circle(min(group), group, graph) for group in groups]


def _shortest_circle(start: str, group: set[str], graph: dict[str, list[Import]]) -> list[str]:
    """The shortest path from `start` back to itself through `group` (breadth first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for target in sorted({i.target for i in graph[module]} & group):
                if target == start:
                    return [*paths[module], start]
                if target not in paths:
                    paths[target] = [*paths[module], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"{start} is in no circle of {sorted(group)}")


def _describe(circle: list[str], graph: dict[str, list[Import]], modules: dict[str, Path]) -> str:
    steps = []
    for module, target in itertools.pairwise(circle):
        lines = sorted(i.line for i in graph[module] if i.target == target)
        steps.append(f"{module} ({modules[module].relative_to(ROOT)}:{','.join(map(str, lines))})")
    return " -> ".join([*steps, circle[-1]])


def test_the_collector_resolves_every_kind_of_import():
    modules = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.sub.d", "other"}
    source = (
        "import pkg.sub.c\n"
        "from pkg import b, CONSTANT\n"
        "from . import b\n"
        "from .sub import c\n"
        "from .sub.c import name\n"
        "import numpy\n"
        "def helper():\n"
        "    from other import thing\n"
        "def main():\n"
        "    import pkg.b\n"
        "if __name__ == '__main__':\n"
        "    import pkg.sub\n"
    )
    assert [(i.target, i.line, i.entry_point) for i in module_imports("pkg.a", source, False, modules)] == [
        ("pkg.sub.c", 1, False), ("pkg.b", 2, False), ("pkg", 2, False), ("pkg.b", 3, False),
        ("pkg.sub.c", 4, False), ("pkg.sub.c", 5, False), ("other", 8, False), ("pkg.b", 10, True),
        ("pkg.sub", 12, True),
    ]
    package_source = "from . import c\nfrom .d import x\nfrom .. import a\nfrom ..sub import d\n"
    assert [i.target for i in module_imports("pkg.sub", package_source, True, modules)] == [
        "pkg.sub.c", "pkg.sub.d", "pkg.a", "pkg.sub.d"]


def test_circles_are_found_through_any_chain():
    graph = {name: [Import(target, 1, False) for target in targets] for name, targets in {
        "a": ["b"], "b": ["c"], "c": ["a", "d"], "d": [], "e": ["e2"], "e2": ["e"]}.items()}
    assert sorted(import_circles(graph)) == [["a", "b", "c", "a"], ["e", "e2", "e"]]


def test_no_two_modules_import_each_other_directly_or_through_a_chain():
    modules = find_modules()
    graph = import_graph(modules)
    assert any(i.target == CLI_MODULE for i in graph["components.ingest.__main__"]), "the graph misses imports"
    circles = [_describe(circle, graph, modules) for circle in import_circles(graph)]
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_only_command_line_entry_points_import_the_cli_module():
    modules = find_modules()
    misuses = [f"{modules[name].relative_to(ROOT)}:{i.line}" for name, imports in import_graph(modules).items()
               for i in imports
               if i.target == CLI_MODULE and not i.entry_point
               and name.rpartition(".")[2] not in COMMAND_LINE_MODULES]
    assert not misuses, f"library code imports {CLI_MODULE} (only __main__ and cli modules, main() and " \
                        f"`if __name__ == '__main__':` may): {misuses}"
