"""mixerc.codegen: the lowering planner and the code generators (torch and Triton).

Imports `mixerc.ir` only; the runtime in `mixerc` calls in here.
"""

from . import ss_torch
from .planner import BACKENDS, TORCH_BACKENDS, Plan, StructurePlan, plan
from .torch_emit import generate, load
from .triton_emit import generate as generate_triton
from .triton_emit import triton_key

__all__ = ["BACKENDS", "TORCH_BACKENDS", "Plan", "StructurePlan", "plan", "generate", "load", "ss_torch",
           "generate_triton", "triton_key"]
