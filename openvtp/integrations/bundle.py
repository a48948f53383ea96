"""One self-contained Python module made from an openvtp module and the openvtp modules it imports.

`openvtp export --format diffusers` writes its `diffusers_vtp.py` this way, so that the exported folder loads
without openvtp while its layers stay openvtp's own source, not a second copy kept by hand. The modules are
read as files (nothing is imported) and laid out dependencies first, each verbatim except for its docstring
(kept as a comment), its imports and `__all__`: imports of other packages are gathered at the top, imports
of openvtp modules are dropped (those modules are in the bundle, under the same names), and so are
`if TYPE_CHECKING:` blocks. Relative and absolute imports of openvtp are both followed.

What the bundle cannot express is an error, not a silent change: a name imported under another name, a
module imported as an object, an openvtp import inside a function, or two modules defining one name.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "openvtp"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


class BundleError(Exception):
    pass


def module_path(name: str) -> Path:
    """The source file of openvtp module `name` (a package's `__init__.py`)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        raise BundleError(f"{name} is not an {PACKAGE} module")
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    raise BundleError(f"no source file for {name} under {PACKAGE_DIR}")


def _is_package(name: str) -> bool:
    return module_path(name).name == "__init__.py"


def _internal_target(node: ast.ImportFrom, importer: str) -> str | None:
    """The openvtp module a `from ... import` statement reads, or None for another package."""
    if node.level:
        base = importer.split(".") if _is_package(importer) else importer.split(".")[:-1]
        if node.level > 1:
            base = base[:-(node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))
    if (node.module or "").split(".")[0] == PACKAGE:
        return node.module
    return None


def _is_type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, (ast.Name, ast.Attribute)) and \
        ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
        if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


class _Module:
    """One module's source split into what the bundle keeps and what it gathers or drops."""

    def __init__(self, name: str):
        self.name, self.path = name, module_path(name)
        self.text = self.path.read_text(encoding="utf-8")
        tree = ast.parse(self.text, str(self.path))
        self.doc = ast.get_docstring(tree, clean=True)
        self.deps: list[str] = []           # openvtp modules it imports, in order
        self.needs: list[tuple[str, str]] = []  # (module, name) imported from them
        self.external: list[ast.stmt] = []  # imports of other packages
        self.defines: list[str] = []
        dropped: list[ast.stmt] = []
        for i, node in enumerate(tree.body):
            if i == 0 and self.doc is not None:
                dropped.append(node)
            elif isinstance(node, ast.ImportFrom) and node.module == "__future__":
                dropped.append(node)
            elif isinstance(node, ast.ImportFrom) and (target := _internal_target(node, name)) is not None:
                self._internal(node, target)
                dropped.append(node)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                if isinstance(node, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in node.names):
                    raise BundleError(f"{self.path}:{node.lineno}: `import {PACKAGE}...` cannot be bundled; "
                                      f"use `from {PACKAGE}... import name`")
                self.external.append(node)
                dropped.append(node)
            elif _is_type_checking(node) or _defined_names(node) == ["__all__"]:
                dropped.append(node)
            else:
                self.defines += _defined_names(node)
                self._no_nested_imports(node)
        skip = {ln for node in dropped for ln in range(node.lineno, node.end_lineno + 1)}
        self.body = "\n".join(line for ln, line in enumerate(self.text.splitlines(), 1) if ln not in skip)

    def _internal(self, node: ast.ImportFrom, target: str) -> None:
        for alias in node.names:
            if alias.asname not in (None, alias.name) or alias.name == "*":
                raise BundleError(f"{self.path}:{node.lineno}: `{ast.unparse(node)}`: a bundle keeps one name "
                                  "per object; import it under its own name")
            pkg = module_path(target).parent
            if _is_package(target) and ((pkg / alias.name / "__init__.py").is_file() or
                                        (pkg / f"{alias.name}.py").is_file()):
                raise BundleError(f"{self.path}:{node.lineno}: `{ast.unparse(node)}` imports the module "
                                  f"{target}.{alias.name}; import the names it defines instead")
            self.needs.append((target, alias.name))
        if target not in self.deps:
            self.deps.append(target)

    def _no_nested_imports(self, node: ast.stmt) -> None:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id == "TYPE_CHECKING":
                raise BundleError(f"{self.path}:{sub.lineno}: TYPE_CHECKING outside an `if TYPE_CHECKING:` block "
                                  "cannot be bundled")
            if isinstance(sub, ast.ImportFrom) and _internal_target(sub, self.name) is not None or \
                    isinstance(sub, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in sub.names):
                raise BundleError(f"{self.path}:{sub.lineno}: an {PACKAGE} import inside a function or class "
                                  "cannot be bundled; import at module level")


def _ordered(root: str) -> list[_Module]:
    """`root` and every openvtp module it imports, each after the modules it imports."""
    done: dict[str, _Module] = {}
    active: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in active:
            raise BundleError(f"import cycle: {' -> '.join(active + [name])}")
        active.append(name)
        mod = _Module(name)
        for dep in mod.deps:
            visit(dep)
        active.pop()
        done[name] = mod

    visit(root)
    return list(done.values())


def _external_imports(modules: list[_Module]) -> list[str]:
    """Other packages' imports, standard library first, `from` imports of one module merged, each name once;
    one name bound to two objects is an error. `TYPE_CHECKING` goes, as its blocks do."""
    plain: list[str] = []
    froms: dict[str, list[str]] = {}
    bound: dict[str, str] = {n: f"{mod.name}.{n}" for mod in modules for n in mod.defines}
    for mod in modules:
        for node in mod.external:
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                source = f"{node.module}.{alias.name}" if isinstance(node, ast.ImportFrom) else alias.name
                if bound.setdefault(local, source) != source:
                    raise BundleError(f"{mod.path}: `{ast.unparse(node)}` binds {local} to {source}, elsewhere "
                                      f"it is {bound[local]}")
                if isinstance(node, ast.Import):
                    line = ast.unparse(ast.Import(names=[alias]))
                    if line not in plain:
                        plain.append(line)
                elif source != "typing.TYPE_CHECKING":
                    names = froms.setdefault(node.module, [])
                    if ast.unparse(alias) not in names:
                        names.append(ast.unparse(alias))
    lines = plain + [f"from {m} import {', '.join(names)}" for m, names in froms.items() if names]

    def stdlib(line: str) -> bool:
        return line.split()[1].split(".")[0] in sys.stdlib_module_names

    return [line for line in lines if stdlib(line)] + [line for line in lines if not stdlib(line)]


def _squeeze(text: str) -> str:
    """At most two blank lines in a row, none at either end."""
    out: list[str] = []
    for line in text.strip("\n").splitlines():
        if line.strip() or not (len(out) >= 2 and not out[-1].strip() and not out[-2].strip()):
            out.append(line.rstrip())
    return "\n".join(out)


def bundle(root: str, note: str = "") -> str:
    """The source of one module holding `root` and the openvtp modules it imports (transitively).

    Its docstring is `root`'s, then `note`. Raises BundleError where the result would not behave as the
    modules do, and checks that it compiles.
    """
    modules = _ordered(root)
    owner: dict[str, str] = {}
    for mod in modules:
        for n in set(mod.defines):
            if owner.setdefault(n, mod.name) != mod.name:
                raise BundleError(f"{n} is defined by both {owner[n]} and {mod.name}; a bundle needs one")
    for mod in modules:
        for target, n in mod.needs:
            if n not in owner:
                raise BundleError(f"{mod.name} imports {n} from {target}, which the bundle does not define")
    main = modules[-1]
    doc = (main.doc or "").strip() + (f"\n\n{note.strip()}" if note.strip() else "")
    head = '"""' + doc.replace('"""', r'\"\"\"') + '\n"""\nfrom __future__ import annotations\n\n'
    parts = [head + "\n".join(_external_imports(modules))]
    for mod in modules:
        body = _squeeze(mod.body)
        if not body:
            continue
        rel = mod.path.relative_to(PACKAGE_DIR.parent).as_posix()
        lines = [f"# ---- {rel} " + "-" * max(0, 100 - len(rel) - 8)]
        if mod is not main and mod.doc:
            lines += [f"# {line}".rstrip() for line in mod.doc.splitlines()]
        parts.append("\n".join(lines) + "\n\n\n" + body)
    source = "\n\n\n".join(parts) + "\n"
    compile(source, f"<bundle of {root}>", "exec")
    return source
