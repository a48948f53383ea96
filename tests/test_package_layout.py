"""The package's folders depend on each other one way: what a folder may import is what sits below it, and the
library (everything but `demo`, `experiments` and `cli`) never imports the demo. Read from the source's import
statements, function-level imports included, so a shortcut taken inside a function fails here too."""
import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).parents[1] / "openvtp"
# each package and what it may import (besides itself and the modules errors / constants)
ALLOWED = {
    "runtime": set(),
    "data": set(),
    "models": {"data", "runtime"},
    "losses": {"runtime"},
    "config": {"models", "runtime"},
    "eval": {"data", "models", "runtime"},
    "train": {"config", "data", "eval", "losses", "models", "runtime"},
    "generation": {"config", "data", "eval", "losses", "models", "runtime"},
    "integrations": {"models", "runtime"},
    "demo": {"config", "data", "eval", "generation", "models", "runtime", "train"},
    "experiments": {"config", "data", "demo", "eval", "generation", "models", "runtime", "train"},
}
BASE = {"errors", "constants"}
LIBRARY = ("runtime", "data", "models", "losses", "config", "eval", "train", "generation", "integrations")


def _imports(path: Path) -> set[str]:
    """Top-level openvtp packages that `path` imports."""
    module = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            names = [".".join(base + ([node.module] if node.module else []))]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("openvtp.")}
    return found


def _graph() -> dict[str, set[str]]:
    graph = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        if path.parent == ROOT:
            continue
        own = path.relative_to(ROOT).parts[0]
        graph[own] |= _imports(path) - {own}
    return graph


def test_every_folder_imports_only_what_sits_below_it():
    graph = _graph()
    assert set(graph) - {"cli"} <= set(ALLOWED), sorted(set(graph) - set(ALLOWED))
    wrong = {pkg: sorted(deps - ALLOWED[pkg] - BASE) for pkg, deps in graph.items()
             if pkg in ALLOWED and deps - ALLOWED[pkg] - BASE}
    assert not wrong, wrong


def test_the_library_never_imports_the_demo_or_the_command_line():
    graph = _graph()
    assert all(not graph[pkg] & {"demo", "experiments", "cli"} for pkg in LIBRARY), \
        {pkg: sorted(graph[pkg] & {"demo", "experiments", "cli"}) for pkg in LIBRARY}


def test_the_allowed_table_has_no_cycle():
    seen, done = set(), set()

    def visit(pkg, path):
        assert pkg not in seen or pkg in done, " -> ".join(path + [pkg])
        if pkg in seen:
            return
        seen.add(pkg)
        for dep in ALLOWED.get(pkg, ()):
            visit(dep, path + [pkg])
        done.add(pkg)

    for pkg in ALLOWED:
        visit(pkg, [])


def test_a_shortcut_inside_a_function_is_seen(tmp_path):
    module = tmp_path / "openvtp" / "eval" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from openvtp.train import loop\n    from ..demo import run\n")
    global ROOT
    kept, ROOT = ROOT, tmp_path / "openvtp"
    try:
        assert _imports(module) == {"train", "demo"}
    finally:
        ROOT = kept
