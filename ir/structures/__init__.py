"""Structured-matrix node kinds: the built-in `StructureDef`s. A structure is its node here, its
lowering package (`mixerc.codegen.structures.<name>`, registered there) and its templates
(``templates/<name>/``); ARCHITECTURE.md walks through adding one."""

from .base import StructureDef
from .grid2d import Grid2d
from .quasiseparable import Quasiseparable
from .semiseparable import Semiseparable
from .toeplitz import Toeplitz

STRUCTURES: dict[str, StructureDef] = {s.name: s for s in [Semiseparable(), Quasiseparable(), Toeplitz(), Grid2d()]}

__all__ = ["STRUCTURES", "StructureDef", "Semiseparable", "Quasiseparable", "Toeplitz", "Grid2d"]
