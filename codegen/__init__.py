"""mixerc.codegen: the structure registry, the lowering planner and the code generators.

Imports `mixerc.ir` (and `mixerc.rt`, whose helpers the torch lowerings use) only; the runtime in
`mixerc` calls in here.
"""

from .planner import STEP, Plan, StructurePlan, plan
from .structures import StructureLowering, backends, lowering_of, register, torch_backends
from .torch_emit import generate, load
from .triton_emit import generate as generate_triton
from .triton_emit import triton_key

__all__ = ["STEP", "Plan", "StructurePlan", "StructureLowering", "backends", "torch_backends", "lowering_of", "plan",
           "register", "generate", "load", "generate_triton", "triton_key"]
