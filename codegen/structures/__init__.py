"""The structure registry: one lowering package per structure kind, registered once.

Every structure is an IR node kind (`mixerc.ir.structures`) plus one package here: its torch
lowerings (``torch_lowering.py``, copied into standalone generated modules), the lines a generated
mixer calls them with, and its Triton lowering with its templates (``templates/<name>/``), all
described by the package's `StructureLowering`. Everything that dispatches on a structure (the
emitters, the planner's defaults, the runtime's decode step, the DSL constructor ``mx.<name>``)
reads `lowering_of`. `register` adds one (the built-ins below; `mixerc.register_structure` for
users).
"""

from __future__ import annotations

import importlib
import inspect

from mixerc.ir import STRUCTURES, BackendError, StructureDef
from mixerc.ir.kernels import KERNEL_OPS
from mixerc.ir.ops import ELEMENTWISE
from mixerc.ir.seqops import SEQUENCE_OPS

from .base import StructureLowering

LOWERINGS: dict[str, StructureLowering] = {}
RESERVED_OPS = {"seq", "param", "const", "apply", "groups_to_heads"}  # IR ops a structure name would shadow
# run-time helpers the torch lowerings import, copied with them into standalone modules
RT_MODULES = {"mixerc.rt.segments": "_seg", "mixerc.rt.native": "_nat"}


def register(lowering: StructureLowering) -> StructureLowering:
    """Make a structure kind known to the compiler: its IR node to tracing and the passes, its
    lowering package to the code generators. Registering the same kind again replaces it."""
    if not isinstance(lowering, StructureLowering):
        raise BackendError(f"register takes a StructureLowering, got {type(lowering).__name__}")
    node = lowering.node
    if not isinstance(node, StructureDef) or not node.name.isidentifier():
        raise BackendError(f"StructureLowering.node must be a StructureDef instance with an identifier "
                           f"name, got {node!r}")
    if not node.lowerings or node.default not in node.lowerings:
        raise BackendError(f"structure {node.name!r}: lowerings {node.lowerings!r} must name at least one "
                           f"and include its default {node.default!r}")
    if node.lowerings[0] != "reference":
        raise BackendError(f"structure {node.name!r}: its first lowering must be 'reference', the dense oracle "
                           f"every other lowering is checked against (got {node.lowerings!r})")
    taken = set(ELEMENTWISE) | set(KERNEL_OPS) | set(SEQUENCE_OPS) | RESERVED_OPS
    other = STRUCTURES.get(node.name)
    if node.name in taken or (node.name not in LOWERINGS and other is not None and type(other) is not type(node)):
        raise BackendError(f"structure name {node.name!r} is taken by an op or another structure; choose another")
    others = {a for n, low in LOWERINGS.items() if n != node.name for a in _aliases(low)} | set(RT_MODULES.values())
    mine = _aliases(lowering)
    for alias in mine:
        if alias in others or mine.count(alias) > 1 or not alias.isidentifier():
            raise BackendError(f"structure {node.name!r}: alias {alias!r} is taken or not an identifier")
    if ("triton" in node.lowerings) != (lowering.triton is not None):
        raise BackendError(f"structure {node.name!r}: its node lists a triton lowering exactly when its "
                           f"package has one (lowerings {node.lowerings!r}, triton={lowering.triton!r})")
    try:
        inspect.signature(lowering.emit_apply).bind(*range(8))
    except (TypeError, ValueError):
        raise BackendError(f"structure {node.name!r}: emit_apply must take (graph, node, k, splan, names, "
                           "tag, alias, scale)") from None
    for name in (lowering.torch_module, *lowering.torch_helpers):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise BackendError(f"structure {node.name!r}: torch module {name!r} does not import ({e})") from e
    module = importlib.import_module(lowering.torch_module)
    missing = [f for f in (*node.lowerings, "materialize") if f != "triton" and not callable(getattr(module, f, None))]
    if missing:
        raise BackendError(f"structure {node.name!r}: {lowering.torch_module} defines no function "
                           f"{', '.join(missing)} (one per torch lowering, plus materialize)")
    STRUCTURES[node.name] = node
    LOWERINGS[node.name] = lowering
    return lowering


def lowering_of(structure: str) -> StructureLowering:
    """The registered lowering package of a structure kind."""
    if structure not in LOWERINGS:
        raise BackendError(f"structure {structure!r} has no registered lowering package; known: "
                           f"{', '.join(LOWERINGS)}")
    return LOWERINGS[structure]


def _aliases(low: StructureLowering) -> list[str]:
    return [low.alias, *low.torch_helpers.values()]


def torch_modules() -> dict[str, str]:
    """Every module a standalone generated module may copy from, with its alias: each structure's torch
    module, then its helpers, then the run-time modules."""
    out = {}
    for low in LOWERINGS.values():
        out[low.torch_module] = low.alias
        out.update(low.torch_helpers)
    return {**out, **RT_MODULES}


def backends() -> tuple[str, ...]:
    """``auto`` and every lowering some registered structure has."""
    return ("auto",) + tuple(dict.fromkeys(low for s in STRUCTURES.values() for low in s.lowerings))


def torch_backends() -> tuple[str, ...]:
    return tuple(b for b in backends()[1:] if b != "triton")


def code_files() -> list[str]:
    """Source files of the registered packages that live outside mixerc (a user's structure: its
    node, its emission, its torch and Triton modules): part of the Triton cache key with the
    generators' own files."""
    out = []
    for low in LOWERINGS.values():
        mods = (low.torch_module, *low.torch_helpers, type(low.node).__module__, low.emit_apply.__module__,
                type(low.triton).__module__ if low.triton else None)
        for mod in dict.fromkeys(m for m in mods if m and not m.startswith("mixerc.")):
            path = inspect.getsourcefile(importlib.import_module(mod))
            if path and path not in out:
                out.append(path)
    return out


# the built-in structures, in the order the generated code and the docs list them
from . import grid2d, semiseparable, quasiseparable, toeplitz  # noqa: E402

for _package in (semiseparable, quasiseparable, toeplitz, grid2d):
    register(_package.LOWERING)
