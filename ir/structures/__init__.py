"""Structured-matrix node kinds. Adding one: a `StructureDef` subclass here, a lowering in
`mixerc.codegen`, a template in `mixerc.templates`; nothing else in the tree changes."""

from .base import StructureDef
from .quasiseparable import Quasiseparable
from .semiseparable import Semiseparable
from .toeplitz import Toeplitz

STRUCTURES: dict[str, StructureDef] = {s.name: s for s in [Semiseparable(), Quasiseparable(), Toeplitz()]}

__all__ = ["STRUCTURES", "StructureDef", "Semiseparable", "Quasiseparable", "Toeplitz"]
