"""Adding a structure kind from outside the package: `register_structure`.

A structure is an IR node kind (a `StructureDef`: roles, layout rules, state dims, the element
formula, the cost) plus its lowering package (a `StructureLowering`: torch lowerings, the lines a
generated mixer calls them with, optionally a Triton lowering). Registering one makes it known to
tracing, the passes, every code generator, ``mixerc check`` and the DSL (``mx.<name>``), exactly
as the built-in ones are (`mixerc.codegen.structures` registers those).
"""

from __future__ import annotations

import sys

from . import codegen, dsl
from .codegen import StructureLowering
from .ir import BackendError, StructureDef

__all__ = ["StructureDef", "StructureLowering", "register_structure"]


def register_structure(lowering: StructureLowering) -> StructureLowering:
    """Register ``lowering`` (its ``node`` is the IR node kind) and add ``mx.<name>``. Raises
    `BackendError` for a malformed registration, or a name ``mx`` already uses for something else."""
    mixerc = sys.modules["mixerc"]
    name = getattr(getattr(lowering, "node", None), "name", None)
    if isinstance(name, str) and hasattr(mixerc, name) and name not in dsl.STRUCTURE_CONSTRUCTORS:
        raise BackendError(f"structure name {name!r} is taken: mx.{name} already exists; choose another name")
    codegen.register(lowering)
    make = dsl.structure_constructor(lowering.node)
    dsl.STRUCTURE_CONSTRUCTORS[lowering.name] = make
    setattr(dsl, lowering.name, make)
    setattr(mixerc, lowering.name, make)
    if lowering.name not in mixerc.__all__:
        mixerc.__all__.append(lowering.name)
    return lowering
