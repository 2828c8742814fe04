"""Standalone generated modules: the lowering functions a mixer calls, copied in from source.

A generated torch module imports torch and the standard library only. The functions its body calls
(``_ss.chunked(...)``) and everything of their own modules they use (functions, classes such as an
autograd Function, constants), transitively, are copied from
the lowering modules' source into a class per module, named as the alias the calls use (``class
_ss`` holds the copy of the semiseparable `torch_lowering.chunked`). ``aliases`` maps every module
that may be copied to its alias (`codegen.structures.torch_modules()` by default).
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import sys
from dataclasses import dataclass, field

from .structures import torch_modules

# imports a generated torch module may need besides the copied modules' own: (bound name, line)
BASE_IMPORTS = (("torch", "import torch"), ("F", "import torch.nn.functional as F"))


@dataclass
class _Source:
    """A lowering module's top level, parsed once: definitions (functions and assigned constants),
    how it names the other mixerc modules, and its other imports."""
    name: str  # the module's import name
    lines: list
    doc: str
    defs: dict = field(default_factory=dict)  # name -> ast node
    # alias -> mixerc module (``from ..semiseparable import torch_lowering as _ss``)
    modules: dict = field(default_factory=dict)
    # name -> (mixerc module, name) (``from ..semiseparable.torch_lowering import X``)
    imported: dict = field(default_factory=dict)
    imports: list = field(default_factory=list)  # (bound name, import line) of other modules

    @property
    def path(self) -> str:
        return self.name.replace(".", "/") + ".py"


@functools.lru_cache(maxsize=None)
def _source(module: str) -> _Source:
    text = inspect.getsource(importlib.import_module(module))
    tree = ast.parse(text)
    src = _Source(module, text.splitlines(), ast.get_docstring(tree) or "")
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            src.defs[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                for nm in ast.walk(t):
                    if isinstance(nm, ast.Name):
                        src.defs[nm.id] = node
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = ".".join(module.split(".")[:-node.level] + ([node.module] if node.module else [])) \
                if node.level else node.module
            for a in node.names:
                bound = a.asname or a.name
                if base.split(".")[0] != "mixerc":
                    src.imports.append((bound, f"from {base} import {a.name}" + (f" as {bound}" if a.asname else "")))
                elif f"{base}.{a.name}" in sys.modules:  # a module (``from ..x import torch_lowering``)
                    src.modules[bound] = f"{base}.{a.name}"
                else:
                    src.imported[bound] = (base, a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "mixerc":
                    src.modules[a.asname or a.name] = a.name
                else:
                    line = f"import {a.name}" + (f" as {a.asname}" if a.asname else "")
                    src.imports.append((a.asname or a.name.split(".")[0], line))
    return src


def _alias(module: str, aliases: tuple) -> str:
    """The name a generated module gives a lowering module's copies (``_ss`` for the semiseparable
    torch lowerings); ``aliases``: ``(module, alias)`` pairs."""
    for mod, alias in aliases:
        if mod == module:
            return alias
    raise ValueError(f"{module} is not a lowering module (a registered structure's torch module, or a "
                     "module of mixerc.rt) and cannot be copied")


def _signature(fn: ast.FunctionDef) -> list:
    """What a ``def`` evaluates when it runs (not when it is called): decorators, defaults, annotations."""
    a = fn.args
    heads = fn.decorator_list + a.defaults + [d for d in a.kw_defaults if d is not None]
    return heads + [x.annotation for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg]
                    if x is not None and x.annotation is not None] + ([fn.returns] if fn.returns else [])


@functools.lru_cache(maxsize=None)
def _copy(module: str, name: str, aliases: tuple) -> tuple[tuple, tuple]:
    """One top-level function, class or constant of a lowering module as generated code: ``(lines,
    needs)``, its source lines (a constant with the comment right above it) where every reference
    to a top-level name of a lowering module reads ``<alias>.<name>``, and the ``(module, name)``
    pairs it references. Raises ValueError for what a copy could not run: a local name that
    shadows a top-level one, an import in the body, a signature, decorator or constant that reads
    another top-level name (evaluated while the namespace class is still being built)."""
    src = _source(module)
    node = src.defs.get(name)
    where = f"{src.path}: {name}"
    if not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)):
        raise ValueError(f"{where}: not a top-level function, class or constant of the module, cannot copy it")
    known = set(src.defs) | set(src.imported) | set(src.modules)
    if isinstance(node, ast.FunctionDef):
        own, heads = set(), _signature(node)
        early = {id(t) for h in heads for t in ast.walk(h)}
    elif isinstance(node, ast.ClassDef):  # run while the namespace class is built: bases, decorators, the
        # class body's own statements and its methods' signatures; method bodies run later
        own = set()
        heads = node.decorator_list + node.bases + [k.value for k in node.keywords]
        for st in node.body:
            heads += _signature(st) if isinstance(st, ast.FunctionDef) else [st]
        early = {id(t) for h in heads for t in ast.walk(h)}
    else:
        own = {id(t) for tg in (node.targets if isinstance(node, ast.Assign) else [node.target]) for t in ast.walk(tg)}
        early = {id(t) for t in ast.walk(node)}
    attr_of = {id(t.value): t.attr for t in ast.walk(node) if isinstance(t, ast.Attribute)}
    edits, needs = [], []
    for t in ast.walk(node):
        if isinstance(t, (ast.Import, ast.ImportFrom)):
            raise ValueError(f"{where} imports inside its body; a copy could not run")
        if isinstance(t, ast.arg):
            bound = t.arg
        elif isinstance(t, (ast.FunctionDef, ast.ClassDef)) and t is not node:
            bound = t.name
        elif isinstance(t, ast.ExceptHandler):
            bound = t.name
        elif isinstance(t, ast.Name) and not isinstance(t.ctx, ast.Load) and id(t) not in own:
            bound = t.id
        else:
            bound = None
        if bound in known:
            raise ValueError(f"{where} binds {bound!r}, also a top-level name of its module; rename it")
        if not isinstance(t, ast.Name) or id(t) in own or t.id not in known:
            continue
        if id(t) in early:
            raise ValueError(f"{where} reads {t.id!r} in a signature, decorator or constant; a copy could "
                             "not resolve it")
        if t.id in src.modules:  # _ss.X: X of another lowering module
            if id(t) not in attr_of:
                raise ValueError(f"{where} uses the module {t.id!r} other than as `{t.id}.name`")
            needs.append((src.modules[t.id], attr_of[id(t)]))
            new = _alias(src.modules[t.id], aliases)
        else:  # a name of its own module, or one imported from another lowering module
            needs.append(src.imported.get(t.id, (module, t.id)))
            new = f"{_alias(needs[-1][0], aliases)}.{needs[-1][1]}"
        edits.append((t.lineno, t.col_offset, t.end_col_offset, new))
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    lines = [ln.encode() for ln in src.lines[first - 1:node.end_lineno]]  # ast columns count bytes
    for lineno, a, b, new in sorted(edits, reverse=True):
        i = lineno - first
        lines[i] = lines[i][:a] + new.encode() + lines[i][b:]
    lines = [ln.decode() for ln in lines]
    if not isinstance(node, ast.FunctionDef):  # a constant: the comment that explains it
        while first > 1 and src.lines[first - 2].lstrip().startswith("#"):
            first -= 1
            lines.insert(0, src.lines[first - 1])
    return tuple(lines), tuple(dict.fromkeys(needs))


def _pairs(aliases: dict | None) -> tuple:
    return tuple((torch_modules() if aliases is None else aliases).items())


def copied_lowerings(calls, aliases: dict | None = None) -> list[str]:
    """Module code defining what ``calls`` (``(lowering module, function)`` pairs) need: per module
    of ``aliases`` (``{module: alias}``, in its order), a class named as the module's alias holding
    the copies of the called functions and of every top-level function and constant they use,
    transitively, in source order, each with a comment naming where it came from."""
    pairs = _pairs(aliases)
    todo, seen = list(dict.fromkeys(calls)), set()
    while todo:
        item = todo.pop()
        if item not in seen:
            seen.add(item)
            todo += _copy(*item, pairs)[1]
    out = []
    for module, alias in pairs:
        names = [n for m, n in seen if m == module]
        if not names:
            continue
        src = _source(module)
        order = sorted({id(src.defs[n]): n for n in names}.values(), key=lambda n: src.defs[n].lineno)
        doc = [f"Copied from {src.path}", "(what this mixer calls and what that uses).", ""]
        doc += src.doc.splitlines()
        out += ["", "", f"class {alias}:", '    """' + doc[0]]
        out += [("    " + d).rstrip() for d in doc[1:]] + ['    """']
        for n in order:
            out += ["", f"    # from {src.path}: {n}"]
            if isinstance(src.defs[n], ast.FunctionDef):
                out.append("    @staticmethod")
            out += [("    " + ln).rstrip() for ln in _copy(module, n, pairs)[0]]
    return out


def imports_used(code: str, aliases: dict | None = None) -> list[str]:
    """The import lines ``code`` needs: `BASE_IMPORTS` and the copyable modules' own imports whose
    name it reads (standard library first)."""
    used = {t.id for t in ast.walk(ast.parse(code)) if isinstance(t, ast.Name)}
    candidates = dict(BASE_IMPORTS)
    for module, _ in _pairs(aliases):
        for bound, line in _source(module).imports:
            candidates.setdefault(bound, line)
    lines = [line for bound, line in candidates.items() if bound in used]
    std = [ln for ln in lines if ln.split()[1].split(".")[0] in sys.stdlib_module_names]
    return std + [ln for ln in lines if ln not in std]
