"""mixerc.ir: named dims, op and structure nodes, the graph, passes and the cost model.

The bottom layer: imports neither `mixerc` nor `mixerc.codegen`.
"""

from . import cost, dims, ops, passes
from .errors import BackendError, InputError, MixercError, ShapeError, SpecError
from .graph import Graph, Loc, Node
from .structures import STRUCTURES, StructureDef

__all__ = ["Graph", "Loc", "Node", "STRUCTURES", "StructureDef", "cost", "dims", "ops", "passes",
           "MixercError", "SpecError", "ShapeError", "InputError", "BackendError"]
