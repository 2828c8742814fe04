"""Torch code generation: the IR plus a `Plan` become the source of one Python function.

The function takes the spec's inputs and parameters by name (plus ``initial_states``, a tuple with
one state per structure application or None, and ``seq_idx``) and returns ``(y, final_states)``.
Elementwise nodes become torch expressions with named-dim broadcasting resolved statically;
structure applications become calls into the lowering module of their structure
(`codegen/ss_torch.py` for semiseparable) on the canonical layout. Every line carries the spec
line it came from.

The generated torch module is standalone: it imports torch (and the standard library) only. The
lowering functions the plan calls, and the functions and constants of their own modules that those
call (transitively), are copied into it from the lowering modules' source, each module's copies in a
class of the alias the calls use (``_ss.chunked(...)`` calls ``class _ss``'s copy of
`ss_torch.chunked`). The runtime executes this very module, so what ``mixerc compile --emit torch``
writes is what runs. Only the Triton emitter's module (``hook``) imports the lowering modules.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import os
import re
import sys
import textwrap
import types
from dataclasses import dataclass, field, replace

from mixerc.ir import STRUCTURES, Graph
from mixerc.ir.dims import GROUP_OF, fmt
from mixerc.ir.ops import ELEMENTWISE

from .planner import TORCH_BACKENDS as TORCH_LOWERINGS
from .planner import Plan
from .regions import fusable_scale, single_use


# The torch module of each structure's lowerings; the generated code imports it as the alias. The
# module defines ``emit_apply(graph, node, k, splan, names, tag, alias, scale)``: the generated lines
# of one application (they assign the apply node's name and ``_s{k}``, its final state or None), and
# ``X_SCALE``: whether its lowerings take ``x_scale`` (see `_fusable_scales`).
STRUCTURE_MODULES = {
    "semiseparable": ("mixerc.codegen.ss_torch", "_ss"),
    "quasiseparable": ("mixerc.codegen.qs_torch", "_qs"),
    "toeplitz": ("mixerc.codegen.toeplitz_torch", "_tp"),
}
# value ops that generate convolution kernels (`mixerc.ir.kernels`): the module emitting them
KERNEL_MODULES = {"s4d_kernel": STRUCTURE_MODULES["toeplitz"]}


def structure_module(name: str):
    return importlib.import_module(STRUCTURE_MODULES[name][0])


def _permuted(expr: str, src: tuple, order: list) -> str:
    """``expr`` (dims ``src``) permuted to the dims ``order`` (same names)."""
    if list(src) == list(order):
        return expr
    return f"{expr}.permute({', '.join(str(src.index(d)) for d in order)})"


def align(expr: str, src: tuple, dst: tuple) -> str:
    """``expr`` with dims ``src`` viewed so that it broadcasts against dims ``dst`` (``src`` a
    subset of ``dst``): a permute when the order differs, ``None`` axes where dims are missing."""
    if src == dst or not src:
        return expr
    expr = _permuted(expr, src, [d for d in dst if d in src])
    index = [":" if d in src else "None" for d in dst]
    while index and index[0] == "None":  # leading axes broadcast on their own
        index.pop(0)
    if all(i == ":" for i in index):
        return expr
    return f"{expr}[{', '.join(index)}]"


def to_canonical(expr: str, src: tuple, canon: list) -> str:
    """View dims ``src`` in the canonical order ``canon`` (None entries: size-1 axes)."""
    out = _permuted(expr, src, [d for d in canon if d is not None and d in src])
    for axis, d in enumerate(canon):
        if d is None or d not in src:
            out = f"{out}.unsqueeze({axis})"
    return out


def from_canonical(expr: str, canon: list, dst: tuple) -> str:
    """Inverse of `to_canonical`: drop size-1 axes and permute to ``dst``."""
    kept = tuple(d for d in canon if d is not None and d in dst)
    out = expr
    for axis in reversed([i for i, d in enumerate(canon) if d is None or d not in dst]):
        out = f"{out}.squeeze({axis})"
    return _permuted(out, kept, list(dst))


def structure_operand(graph: Graph, name: str) -> bool:
    """A constant a structure reads (``log_decay=-0.3``): the lowerings index it as a tensor, so the
    generated code holds it in a 0-d tensor variable of the node's name, not as a literal."""
    return graph.node(name).op == "const" and any(u.op in STRUCTURES for u in graph.users(name))


def _literal(v: float) -> str:
    return repr(float(v))


def value_name(graph: Graph, name: str) -> str:
    """How generated code names an IR value: a constant by its literal (unless a structure reads it,
    `structure_operand`: then by a tensor variable), anything else by its node's name."""
    n = graph.node(name)
    return _literal(n.attrs["value"]) if n.op == "const" and not structure_operand(graph, name) else name


def generate(graph: Graph, plan: Plan, sizes: dict, hook=None, materialize: bool = False) -> str:
    """Python source of ``mixer(**inputs, **params, initial_states=None, seq_idx=None)``: a standalone
    module (torch and the standard library only; the lowerings it calls copied in, see the module
    docstring), its lines wrapped to `WIDTH` columns (`wrap`).

    ``hook`` (the Triton emitter's): ``doc`` lines for the docstring, ``imports`` and ``defs``
    (module code before the function), ``preamble`` lines of the function body, a ``skip`` set of
    nodes computed inside kernels, and ``emit(node)`` returning the lines of a node it lowers
    itself (or None); with a hook the module imports the lowering modules instead of copying them,
    and lines are not wrapped. ``materialize``: the function returns the matrices ``(M_0, ...)``
    (b, H, l, l) of the applications instead (every structure's ``materialize``; nothing downstream
    runs)."""
    spec_file = os.path.basename(graph.file or "<spec>")
    names = {}  # IR value -> python expression/variable
    args = graph.inputs + graph.params
    dims = "Dims: " + ", ".join(f"{k}={v}" for k, v in sorted(sizes.items())) + " (b and l stay symbolic)."
    doc = [
        f'"""Generated by mixerc from spec {graph.name!r} ({spec_file}). Do not edit: recompile.',
        "",
        f"backend: {plan.backend}. IR hash: {graph.hash()}.",
        *([dims] if hook else textwrap.wrap(dims, WIDTH)),
        "Every value is a torch tensor with named dims given in its trailing comment; '# spec: f:N'",
        "points to the spec line it comes from.",
        *(hook.doc if hook else []),
    ]
    if hook:
        lines = doc + ['"""', "import torch", "import torch.nn.functional as F"]
        for s in plan.structures:
            mod, alias = STRUCTURE_MODULES[s.structure]
            line = f"import {mod} as {alias}"
            if line not in lines:
                lines.append(line)
        for op, (mod, alias) in KERNEL_MODULES.items():
            line = f"import {mod} as {alias}"
            if graph.nodes_of(op) and line not in lines:
                lines.append(line)
        lines += hook.imports + hook.defs
    else:
        doc += ["Standalone (torch only): the lowerings it calls are copied below, a class per lowering module",
                "named as the calls say, each function with a comment naming the mixerc file it comes from."]
    step = ", step=False, configs=None" if hook else ""
    header = f"def mixer({', '.join(args)}, *, initial_states=None, seq_idx=None{step}):"
    body = list(hook.preamble) if hook else []
    if materialize:
        plan = Plan(plan.backend, [replace(s, lowering="materialize") for s in plan.structures])
    splans = {s.node: (k, s) for k, s in enumerate(plan.structures)}
    scales = _fusable_scales(graph, plan)
    addcmuls = _fusable_addcmuls(graph)
    skip = {graph.node(a).args[1] for a in scales} | {m for m, _ in addcmuls.values()}
    skip |= hook.skip if hook else set()
    if materialize:
        skip |= _downstream(graph, list(splans))
    calls = []  # (lowering module, function) the body calls
    for a in args:
        names[a] = a
    for n in graph.topo():
        own = hook.emit(n) if hook else None
        if own is not None:
            body += own
            names[n.name] = n.name
            continue
        if n.op in ("seq", "param") or n.name in skip:
            continue
        tag = f"  # {fmt(n.dims) if n.dims is not None else 'matrix'}" + (f"  spec: {n.loc}" if n.loc else "")
        if n.op == "const":
            names[n.name] = value_name(graph, n.name)
            if names[n.name] == n.name:  # a structure's operand: a 0-d tensor
                first = graph.inputs[0]
                body.append(f"{n.name} = torch.full((), {_literal(n.attrs['value'])}, dtype={first}.dtype, "
                            f"device={first}.device){tag}")
            continue
        if n.name in addcmuls:  # add(a, mul(u, v)) -> one pass instead of two
            mul, other = addcmuls[n.name]
            ops = [align(names[a], graph.node(a).dims, n.dims) for a in (other,) + graph.node(mul).args]
            body.append(f"{n.name} = torch.addcmul({', '.join(ops)}){tag}")
        elif n.op in ELEMENTWISE and ELEMENTWISE[n.op].torch:
            op = ELEMENTWISE[n.op]
            ops = [f"torch.tensor({names[a]})" if op.tensors and graph.node(a).op == "const"
                   else align(names[a], graph.node(a).dims, n.dims) for a in n.args]
            attrs = {"min": None, "max": None, **n.attrs} if n.op == "clamp" else n.attrs
            body.append(f"{n.name} = {op.torch_expr(ops, attrs)}{tag}")
        elif n.op == "groups_to_heads":
            (a,) = n.args
            src = graph.node(a).dims
            g = n.attrs["group"]
            rep = sizes[GROUP_OF[g]] // sizes[g]
            body.append(f"{n.name} = {names[a]}.repeat_interleave({rep}, dim={src.index(g)}){tag}")
        elif n.op in KERNEL_MODULES:
            mod, alias = KERNEL_MODULES[n.op]
            body += getattr(importlib.import_module(mod), f"emit_{n.op}")(graph, n, names, sizes, tag, alias)
            calls.append((mod, n.op))
        elif n.op == "apply":
            k, sp = splans[n.name]
            body += structure_module(sp.structure).emit_apply(
                graph, n, k, sp, names, tag, STRUCTURE_MODULES[sp.structure][1], scales.get(n.name))
            calls.append((STRUCTURE_MODULES[sp.structure][0], sp.lowering))
        else:
            continue  # structure constructors: consumed by their apply
        names[n.name] = n.name
    out = graph.output
    if materialize:
        body.append(f"return ({''.join(f'_y{k}, ' for k in range(len(plan.structures)))})")
    else:
        body.append(f"return {names[out]}, ({', '.join(f'_s{k}' for k in range(len(plan.structures)))},)")
    if hook:
        lines += ["", "", header] + ["    " + b for b in body]
        return "\n".join(lines) + "\n"
    code = copied_lowerings(calls) + ["", ""] + wrap(header) + [w for b in body for w in wrap("    " + b)]
    return "\n".join(doc + ['"""'] + _imports_used("\n".join(code)) + code) + "\n"


# -- standalone modules: the lowerings copied in ---------------------------------------------------

WIDTH = 120  # the longest generated line (torch modules)
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
    modules: dict = field(default_factory=dict)  # alias -> mixerc module (``from . import ss_torch as _ss``)
    imported: dict = field(default_factory=dict)  # name -> (mixerc module, name) (``from .ss_torch import X``)
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
                elif node.module is None and node.level:
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


def _alias(module: str) -> str:
    """The name a generated module gives a lowering module's copies (``_ss`` for `ss_torch`)."""
    for mod, alias in STRUCTURE_MODULES.values():
        if mod == module:
            return alias
    raise ValueError(f"{module} is not a lowering module (torch_emit.STRUCTURE_MODULES) and cannot be copied")


@functools.lru_cache(maxsize=None)
def _copy(module: str, name: str) -> tuple[tuple, tuple]:
    """One top-level function or constant of a lowering module as generated code: ``(lines,
    needs)``, its source lines (a constant with the comment right above it) where every reference
    to a top-level name of a lowering module reads ``<alias>.<name>``, and the ``(module, name)``
    pairs it references. Raises ValueError for what a copy could not run: a local name that
    shadows a top-level one, an import in the body, a signature, decorator or constant that reads
    another top-level name (evaluated while the namespace class is still being built)."""
    src = _source(module)
    node = src.defs.get(name)
    where = f"{src.path}: {name}"
    if not isinstance(node, (ast.FunctionDef, ast.Assign, ast.AnnAssign)):
        raise ValueError(f"{where}: not a top-level function or constant of the module, cannot copy it")
    known = set(src.defs) | set(src.imported) | set(src.modules)
    if isinstance(node, ast.FunctionDef):
        own, a = set(), node.args
        heads = node.decorator_list + a.defaults + [d for d in a.kw_defaults if d is not None]
        heads += [x.annotation for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg]
                  if x is not None and x.annotation is not None] + ([node.returns] if node.returns else [])
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
            new = _alias(src.modules[t.id])
        else:  # a name of its own module, or one imported from another lowering module
            needs.append(src.imported.get(t.id, (module, t.id)))
            new = f"{_alias(needs[-1][0])}.{needs[-1][1]}"
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


def copied_lowerings(calls) -> list[str]:
    """Module code defining what ``calls`` (``(lowering module, function)`` pairs) need: per lowering
    module, in `STRUCTURE_MODULES` order, a class named as the module's alias holding the copies of
    the called functions and of every top-level function and constant they use, transitively, in
    source order, each with a comment naming where it came from."""
    todo, seen = list(dict.fromkeys(calls)), set()
    while todo:
        item = todo.pop()
        if item not in seen:
            seen.add(item)
            todo += _copy(*item)[1]
    out = []
    for module, alias in dict.fromkeys(STRUCTURE_MODULES.values()):
        names = [n for m, n in seen if m == module]
        if not names:
            continue
        src = _source(module)
        order = sorted({id(src.defs[n]): n for n in names}.values(), key=lambda n: src.defs[n].lineno)
        doc = [f"Copied from {src.path}: what this mixer calls and what that uses.", ""]
        doc += src.doc.splitlines()
        out += ["", "", f"class {alias}:", '    """' + doc[0]]
        out += [("    " + d).rstrip() for d in doc[1:]] + ['    """']
        for n in order:
            out += ["", f"    # from {src.path}: {n}"]
            if isinstance(src.defs[n], ast.FunctionDef):
                out.append("    @staticmethod")
            out += [("    " + ln).rstrip() for ln in _copy(module, n)[0]]
    return out


def _imports_used(code: str) -> list[str]:
    """The import lines ``code`` needs: `BASE_IMPORTS` and the lowering modules' own imports whose
    name it reads (standard library first)."""
    used = {t.id for t in ast.walk(ast.parse(code)) if isinstance(t, ast.Name)}
    candidates = dict(BASE_IMPORTS)
    for module, _ in STRUCTURE_MODULES.values():
        for bound, line in _source(module).imports:
            candidates.setdefault(bound, line)
    lines = [line for bound, line in candidates.items() if bound in used]
    std = [ln for ln in lines if ln.split()[1].split(".")[0] in sys.stdlib_module_names]
    return std + [ln for ln in lines if ln not in std]


# -- line wrapping -----------------------------------------------------------------------------------


def _scan(code: str) -> tuple[list[int], list[bool], int]:
    """Per character of one line of code: the bracket depth before it (a closing bracket: after it)
    and whether it lies inside a string literal; and where a comment starts (``len(code)`` if none)."""
    depth, quoted, d, quote, i = [], [], 0, None, 0
    while i < len(code):
        c = code[i]
        if quote is not None or c in "'\"":  # inside a string, or opening one
            if quote is None:
                quote = c * 3 if code.startswith(c * 3, i) else c
                n = len(quote)
            elif c == "\\":
                n = 2
            elif code.startswith(quote, i):
                n, quote = len(quote), None
            else:
                n = 1
            depth += [d] * n
            quoted += [True] * n
            i += n
            continue
        if c == "#":
            return depth, quoted, i
        depth.append(d)
        quoted.append(False)
        if c in "([{":
            d += 1
        elif c in ")]}":
            d -= 1
            depth[-1] = d
        i += 1
    return depth[:len(code)], quoted[:len(code)], len(code)


def _break(code: str, width: int) -> list[str] | None:
    """``code`` (no comment) broken at the top-level commas of its first bracket that has some:
    the items aligned after the bracket, or indented by 8 on the next lines when that column is
    too far right. None when it has no such bracket."""
    indent = code[:len(code) - len(code.lstrip())]
    depth, quoted, _ = _scan(code)
    for o in (i for i, c in enumerate(code) if c in "([{" and depth[i] == 0):
        close = next((i for i in range(o + 1, len(code)) if depth[i] == 0 and code[i] in ")]}"), None)
        commas = [] if close is None else [i for i in range(o + 1, close)
                                            if code[i] == "," and depth[i] == 1 and not quoted[i]]
        if not commas:
            continue
        items = [code[a:b].strip() for a, b in zip([o + 1] + [c + 1 for c in commas], commas + [close])]
        items = [it + "," for it in items[:-1]] + [items[-1] + code[close:]]
        out, cur, pad = [], code[:o + 1], " " * (o + 1)
        if o + 1 + max(len(it) for it in items) > width:  # hanging indent
            out, cur, pad = [cur], None, indent + " " * 8
        for it in items:
            if cur is None:
                cur = pad + it
            elif cur.endswith(("(", "[", "{")):
                cur += it
            elif len(cur) + 1 + len(it) > width:
                out.append(cur)
                cur = pad + it
            else:
                cur += " " + it
        return out + [cur]
    return None


def wrap(line: str, width: int = WIDTH) -> list[str]:
    """``line`` as lines of at most ``width`` columns where it can be: broken at the top-level commas
    of its first bracket that has some (`_break`), again for any piece still too long; a trailing
    comment stays on the last line, or goes on its own line above when it does not fit there."""
    if len(line) <= width:
        return [line]
    indent = line[:len(line) - len(line.lstrip())]
    _, _, at = _scan(line)
    code, comment = line[:at].rstrip(), line[at:]
    out = _break(code, width)
    if out is None:
        return [indent + comment, code] if comment else [line]
    out = [w for piece in out for w in (wrap(piece, width) if len(piece) > width else [piece])]
    if comment:
        if len(out[-1]) + 2 + len(comment) <= width:
            out[-1] += "  " + comment
        else:
            out.insert(0, indent + comment)
    return out


def _net_depth(line: str) -> int:
    """Brackets opened minus closed by one line of code (strings and the comment skipped)."""
    _, quoted, at = _scan(line)
    return sum((c in "([{") - (c in ")]}") for c, q in zip(line[:at], quoted) if not q)


def drop_unused_imports(source: str) -> str:
    """``source`` without its top-level import lines whose name nothing else in it uses."""
    lines = source.split("\n")
    out, in_text = [], False
    for i, line in enumerate(lines):
        quotes = line.count('"""') + line.count("'''")
        m = None if in_text or quotes else re.fullmatch(r"(?:from \S+ )?import \S+(?: as (\w+))?", line)
        in_text ^= bool(quotes % 2)  # inside a triple-quoted string: text, not code
        if m:
            name = m.group(1) or line.split()[-1].split(".")[0]
            rest = "\n".join(lines[:i] + lines[i + 1:])
            if not re.search(rf"(?<![\w.]){re.escape(name)}\b", rest):
                continue
        out.append(line)
    return "\n".join(out)


def wrap_module(source: str, width: int = WIDTH) -> str:
    """``source`` with every statement that has a line over ``width`` columns joined (its bracketed
    continuation lines) and broken again by `wrap`; everything else, and the text of triple-quoted
    strings, as it was."""
    lines, out, i, in_text = source.split("\n"), [], 0, False
    while i < len(lines):
        line = lines[i]
        if in_text or line.count('"""') % 2 or line.count("'''") % 2:
            in_text ^= bool(line.count('"""') % 2 or line.count("'''") % 2)
            out.append(line)
            i += 1
            continue
        group, net = [line], _net_depth(line)
        while net > 0 and i + len(group) < len(lines):
            group.append(lines[i + len(group)])
            net += _net_depth(group[-1])
        i += len(group)
        if all(len(g) <= width for g in group) or any(_scan(g)[2] < len(g) for g in group[:-1]):
            out += group  # fits, or a comment inside the statement: kept as written
            continue
        joined = group[0].rstrip()
        for g in group[1:]:
            g = g.strip()
            joined += g if joined.endswith(("(", "[", "{")) or g.startswith((")", "]", "}")) else " " + g
        out += wrap(joined, width)
    return "\n".join(out)


def _downstream(graph: Graph, applies: list[str]) -> set[str]:
    """Every node that reads an apply node's output, directly or not."""
    out, stack = set(), list(applies)
    while stack:
        for u in graph.users(stack.pop()):
            if u.name not in out:
                out.add(u.name)
                stack.append(u.name)
    return out


def _fusable_scales(graph: Graph, plan: Plan) -> dict[str, tuple[str, str]]:
    """Apply nodes whose value is ``x * s`` with ``s`` over (b, l, head) only, as Mamba-2's
    ``x * dt``: the lowering multiplies block by block instead of materialising the product.
    Returns ``{apply: (x, s)}``."""
    out = {}
    for sp in plan.structures:
        if sp.lowering in TORCH_LOWERINGS and structure_module(sp.structure).X_SCALE:
            pair = fusable_scale(graph, sp.node, sp.layout)
            if pair:
                out[sp.node] = pair
    return out


def _fusable_addcmuls(graph: Graph) -> dict[str, tuple[str, str]]:
    """``add`` nodes with an operand ``mul`` of two tensors used only there:
    ``{add: (mul, other operand)}`` (``torch.addcmul`` takes no Python numbers)."""
    out = {}
    for n in graph.nodes_of("add"):
        for a, other in (n.args, n.args[::-1]):
            mul = graph.node(a)
            if (mul.op == "mul" and single_use(graph, a) and a != other
                    and all(graph.node(v).op != "const" for v in mul.args + (other,))):
                out[n.name] = (a, other)
                break
    return out


def apply_lines(graph: Graph, n, k: int, s, names: dict, tag: str, what: str, args: str) -> list[str]:
    """The common shape of a structure's generated call (for `emit_apply` of the lowering modules):
    the applied value as ``_x{k}`` in the canonical (b, l, H, P) layout, ``_y{k}, _s{k} = <args>``
    (args: the call, reading ``_x{k}``), and the output back in the value's own dims (not when
    materialising: then ``_y{k}`` is M)."""
    lay = s.layout
    m = graph.node(n.args[0])
    cx = ["b", "l", lay["head"], lay["value"]]
    out = [f"# {m.name}: {what}, lowering {s.lowering}" + (f"  spec: {m.loc}" if m.loc else ""),
           f"_x{k} = {to_canonical(names[n.args[1]], lay['x'], cx)}  # (b, l, H, P)",
           f"_y{k}, _s{k} = {args}"]
    if s.lowering != "materialize":
        out.append(f"{n.name} = {from_canonical(f'_y{k}', cx, lay['x'])}{tag}")
    return out


def load(source: str, name: str = "<mixerc>"):
    """Execute generated source as a module (registered in ``sys.modules``, so that tools that
    look functions up by module, as torch.compile does, find it) and return its ``mixer``."""
    mod_name = f"mixerc_generated_{hashlib.sha256(source.encode()).hexdigest()[:16]}"
    module = sys.modules.get(mod_name)
    if module is None:
        module = types.ModuleType(mod_name)
        exec(compile(source, name, "exec"), module.__dict__)
        sys.modules[mod_name] = module
    return module.mixer
