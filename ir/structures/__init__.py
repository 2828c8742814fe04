"""Structured-matrix node kinds. Adding one: a `StructureDef` subclass here, a lowering in
`mixerc.codegen`, a template in `mixerc.templates`; nothing else in the tree changes."""

from .base import StructureDef
from .semiseparable import Semiseparable

STRUCTURES: dict[str, StructureDef] = {s.name: s for s in [Semiseparable()]}

__all__ = ["STRUCTURES", "StructureDef", "Semiseparable"]
