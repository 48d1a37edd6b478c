"""The import graph of the project's packages: no cycle, and every arrow points down the layers.

    avdata  <-  avhubert  <-  clustering, preparation  <-  demo

`avdata` (the data layer) imports no other project package and not fairseq; `avhubert` (the fairseq
plugin) imports neither `clustering`, `preparation` nor `demo`; `clustering` and `preparation` do not
import `demo` nor each other (what they share lives in `avdata`). `tests/` and `bench/` sit above
everything.

Only module-level imports count: those that run when the module is imported (class bodies and
module-level `if`/`try` included). Imports inside functions, and inside an
`if __name__ == "__main__":` block, are not followed: that is how the deprecated `python -m`
aliases (e.g. `preparation/make_synthetic_data.py`) run a module of a higher layer without
importing it (`runpy.run_module` under `__main__`).
"""

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("avdata", "avhubert", "clustering", "preparation", "demo")

# package -> the packages (and third-party top-level modules) it must not import at module level
FORBIDDEN: Dict[str, Set[str]] = {
    "avdata": {"avhubert", "clustering", "preparation", "demo", "fairseq"},
    "avhubert": {"clustering", "preparation", "demo"},
    "clustering": {"preparation", "demo"},
    "preparation": {"clustering", "demo"},
    "demo": set(),
}

# Known violations still to be removed: (importing module, imported module). Keep it empty; an entry
# needs a comment saying who removes it and when.
ALLOWED: Set[Tuple[str, str]] = set()

Edge = Tuple[str, str, int]  # (importing module, imported module, line)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_main_guard(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":` (either operand order)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare) or len(node.test.comparators) != 1:
        return False
    sides = [node.test.left, node.test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    consts = [s.value for s in sides if isinstance(s, ast.Constant)]
    return isinstance(node.test.ops[0], ast.Eq) and names == ["__name__"] and consts == ["__main__"]


def module_level_imports(tree: ast.Module) -> Iterator[ast.stmt]:
    """Import statements that run at import time: not in a function, not under a `__main__` guard."""
    todo: List[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or _is_main_guard(node):
            continue
        else:
            todo.extend(ast.iter_child_nodes(node))


def _resolve_relative(name: str, is_package: bool, node: ast.ImportFrom) -> str:
    base = name.split(".") if is_package else name.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_edges(root: Path, packages=PACKAGES) -> Tuple[Set[str], List[Edge]]:
    """Project modules under `root` and the module-level imports among them or to third parties.

    `from P import N` points at the module `P.N` when that is a project module, else at `P`. Imported
    names outside the project are kept as their top-level name (`fairseq`, `torch`, ...)."""
    files = {module_name(p, root): p for pkg in packages if (root / pkg).is_dir() for p in (root / pkg).rglob("*.py")}
    modules = set(files)
    edges: List[Edge] = []
    for name, path in sorted(files.items()):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in module_level_imports(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                src = _resolve_relative(name, path.name == "__init__.py", node) if node.level else node.module or ""
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in modules else src for a in node.names]
            for target in targets:
                edges.append((name, target if _in_project(target, modules) else target.split(".")[0], node.lineno))
    return modules, edges


def _in_project(target: str, modules: Set[str]) -> bool:
    return target in modules or target.split(".")[0] in PACKAGES


def upward_imports(edges: List[Edge], allowed: Set[Tuple[str, str]] = frozenset()) -> List[str]:
    """`FORBIDDEN` arrows, as 'module:line imports target' lines (`allowed` pairs skipped)."""
    bad = []
    for src, dst, line in edges:
        top_src, top_dst = src.split(".")[0], dst.split(".")[0]
        if top_dst in FORBIDDEN.get(top_src, set()) and (src, dst) not in allowed:
            bad.append(f"{src}:{line} imports {dst}")
    return sorted(set(bad))


def find_cycle(modules: Set[str], edges: List[Edge]) -> Optional[List[str]]:
    """One import cycle among project modules (as a closed path), or None."""
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for src, dst, _ in edges:
        if dst in modules and dst != src:
            graph[src].add(dst)
    state: Dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: List[str]) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for m in sorted(modules):
        if m not in state:
            found = visit(m, [])
            if found:
                return found
    return None


# ------------------------------------------------------------------------------------ the project


def test_no_upward_import_across_layers():
    _, edges = import_edges(REPO)
    assert upward_imports(edges, ALLOWED) == []


def test_allow_list_holds_only_live_violations():
    """An allowed pair that no longer occurs must leave the list (so the list can only shrink)."""
    _, edges = import_edges(REPO)
    live = {(s, d) for s, d, _ in edges}
    assert ALLOWED <= live, sorted(ALLOWED - live)


def test_no_import_cycle():
    modules, edges = import_edges(REPO)
    assert find_cycle(modules, edges) is None


def test_every_package_is_parsed():
    modules, edges = import_edges(REPO)
    assert {m.split(".")[0] for m in modules} == set(PACKAGES)
    assert ("avhubert.model", "avhubert.task") in {(s, d) for s, d, _ in edges}  # a known arrow is seen


# ------------------------------------------------------------------------------------ the checker


def _tree(root: Path, files: Dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    for pkg in PACKAGES:
        (root / pkg).mkdir(exist_ok=True)
        (root / pkg / "__init__.py").touch()
    return root


def test_checker_finds_a_planted_upward_import(tmp_path):
    root = _tree(tmp_path, {
        "avdata/manifest.py": "import os\nfrom avhubert.task import Task\n",
        "avdata/video.py": "from fairseq import utils\n",
        "avhubert/task.py": "from preparation import common\n",
        "preparation/common.py": "from ..clustering import shards\n",  # relative import, resolved
        "clustering/shards.py": "try:\n    import demo.run\nexcept ImportError:\n    pass\n",
    })
    _, edges = import_edges(root)
    assert upward_imports(edges) == [
        "avdata.manifest:2 imports avhubert.task",
        "avdata.video:1 imports fairseq",
        "avhubert.task:1 imports preparation.common",
        "clustering.shards:2 imports demo.run",
        "preparation.common:1 imports clustering.shards",
    ]
    assert upward_imports(edges, {("avdata.video", "fairseq")})[:2] == [
        "avdata.manifest:2 imports avhubert.task", "avhubert.task:1 imports preparation.common"]


def test_checker_ignores_function_level_and_main_guarded_imports(tmp_path):
    root = _tree(tmp_path, {
        "preparation/make_synthetic_data.py": (
            'if __name__ == "__main__":\n    import runpy\n    from demo import run\n'
            "def lazy():\n    import demo.synthetic_data\n"
        ),
        "avhubert/model.py": "class M:\n    from clustering import kmeans\n",  # class bodies run at import
    })
    _, edges = import_edges(root)
    assert upward_imports(edges) == ["avhubert.model:2 imports clustering"]


def test_checker_finds_a_planted_cycle(tmp_path):
    root = _tree(tmp_path, {
        "avhubert/task.py": "from .model import AVHubertModel\n",
        "avhubert/model.py": "from avhubert import task\n",
    })
    modules, edges = import_edges(root)
    assert find_cycle(modules, edges) in (["avhubert.model", "avhubert.task", "avhubert.model"],
                                          ["avhubert.task", "avhubert.model", "avhubert.task"])
    (root / "avhubert" / "model.py").write_text("def f():\n    from avhubert import task\n", encoding="utf-8")
    modules, edges = import_edges(root)
    assert find_cycle(modules, edges) is None
