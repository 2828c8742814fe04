"""mixerc.codegen: the lowering planner and the code generators (torch today).

Imports `mixerc.ir` only; the runtime in `mixerc` calls in here.
"""

from . import ss_torch
from .planner import BACKENDS, TORCH_BACKENDS, Plan, StructurePlan, plan
from .torch_emit import generate, load

__all__ = ["BACKENDS", "TORCH_BACKENDS", "Plan", "StructurePlan", "plan", "generate", "load", "ss_torch"]
