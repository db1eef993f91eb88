"""A short hash of the package version and the source of every unitscope module a stage imports —
found by reading the import statements of the stage's function in `stages.py` (and of the helpers
it calls) and, recursively, of each module they reach (imports inside functions included, and
the `module:function` factories the models table imports by name) —
given to Snakemake as a param, so that changing any code a stage runs reruns exactly the jobs of
that stage and of the stages after it. A module that imports jinja2 renders the page templates
(`unitscope/templates/`), so their files count for the stages that reach it. Nothing is kept by
hand."""
from __future__ import annotations

import ast
import hashlib
import os
from functools import lru_cache

from . import __version__

PACKAGE = "unitscope"


ROOT = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(ROOT, "templates")


@lru_cache(maxsize=None)
def _renders_templates(module: str) -> bool:
    """Whether a module's source imports jinja2 (anywhere in it)."""
    if "jinja2" not in _source(module)[1]:
        return False
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "jinja2" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "jinja2":
            return True
    return False


def template_files() -> list[str]:
    """Every file of the templates folder, sorted."""
    return sorted(os.path.join(d, f) for d, _, files in os.walk(TEMPLATES) for f in files)


@lru_cache(maxsize=None)
def _source(module: str) -> tuple[str, str] | None:
    """(path, text) of a unitscope module, None if it does not exist. Found by path, not by
    importlib (whose find_spec imports the parent: a stage's whole module, torch and all)."""
    parts = module.split(".")
    if parts[0] != PACKAGE or not all(p.isidentifier() for p in parts):
        return None
    base = os.path.join(ROOT, *parts[1:])
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return path, f.read()
    return None


def imported_modules(text: str, module: str | None = None, is_package: bool = False,
                     tree: ast.AST | None = None) -> set[str]:
    """The unitscope modules a source text imports (absolute and relative, anywhere in it)."""
    found: set[str] = set()
    package = module if is_package else (module.rpartition(".")[0] if module else "")
    for node in ast.walk(tree if tree is not None else ast.parse(text)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                base = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if base.split(".")[0] != PACKAGE:
                continue
            found.add(base)
            for a in node.names:  # `from . import x` may name a module
                if _source(f"{base}.{a.name}") is not None:
                    found.add(f"{base}.{a.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # "unitscope.models.resnet:resnet18": a factory the models table imports by name
            name, colon, attr = node.value.partition(":")
            if colon and name.split(".")[0] == PACKAGE and attr.isidentifier() and _source(name):
                found.add(name)
    # importing a.b.c runs a/__init__ and a/b/__init__ too
    for name in list(found):
        parts = name.split(".")
        found |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return found


@lru_cache(maxsize=None)
def _tree(module: str) -> ast.AST:
    """The parsed source of a unitscope module (parsed once per process)."""
    return ast.parse(_source(module)[1])


@lru_cache(maxsize=None)
def _imports_of(module: str) -> frozenset[str]:
    path, text = _source(module)
    return frozenset(imported_modules(text, module, path.endswith("__init__.py"),
                                      tree=_tree(module)))


@lru_cache(maxsize=None)
def closure(start: frozenset[str]) -> tuple[str, ...]:
    """Every unitscope module reached from `start` through imports, sorted."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        src = _source(name)
        if src is None:
            continue
        seen.add(name)
        todo += _imports_of(name)
    return tuple(sorted(seen))


STAGES = f"{PACKAGE}.stages"


@lru_cache(maxsize=None)
def _stage_functions(stage: str) -> list[ast.FunctionDef]:
    """The function `stage` of stages.py and the module-level helpers it calls."""
    tree = _tree(STAGES)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    if stage not in functions:
        raise ValueError(f"no stage {stage!r}; stages: "
                         f"{', '.join(n for n in functions if not n.startswith('_'))}")
    seen: dict[str, ast.FunctionDef] = {}
    todo = [stage]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = functions[name]
        todo += [n.id for n in ast.walk(functions[name]) if isinstance(n, ast.Name) and n.id in functions]
    return [seen[n] for n in sorted(seen)]


def stage_modules(stage: str) -> tuple[str, ...]:
    """Every unitscope module the stage's function imports, directly, through its helpers, or
    through the modules they import."""
    direct: set[str] = set()
    for fn in _stage_functions(stage):
        direct |= imported_modules(ast.unparse(fn), STAGES)
    direct.discard(STAGES)
    return closure(frozenset(direct))


def stage_fingerprint(stage: str) -> str:
    """12 hex digits that change whenever the package version, the stage's own function, or any
    module it reaches changes."""
    h = hashlib.sha256(__version__.encode())
    for fn in _stage_functions(stage):
        h.update(ast.unparse(fn).encode())
    modules = stage_modules(stage)
    for module in modules:
        h.update(module.encode() + b"\0" + _source(module)[1].encode())
    if any(_renders_templates(m) for m in modules):
        for path in template_files():
            with open(path, "rb") as f:
                h.update(os.path.relpath(path, ROOT).encode() + b"\0" + f.read())
    return h.hexdigest()[:12]
