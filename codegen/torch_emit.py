"""The torch backend: a generated module whose ``mixer`` calls the torch lowerings.

The module is standalone: it imports torch and the standard library only. The lowering functions
the plan calls, and the functions and constants of their own modules that those call
(transitively), are copied into it (`codegen.copier`), each module's copies in a class of the alias
the calls use (``_ss.chunked(...)`` calls ``class _ss``'s copy of the semiseparable
``torch_lowering.chunked``). The runtime executes this very module, so what ``mixerc compile --emit
torch`` writes is what runs.
"""

from __future__ import annotations

import hashlib
import sys
import types

from mixerc.ir import Graph

from .planner import Plan
from .writer import ModuleWriter


def generate(graph: Graph, plan: Plan, sizes: dict, materialize: bool = False) -> str:
    """Python source of ``mixer(**inputs, **params, initial_states=None, seq_idx=None)`` returning
    ``(y, final_states)``. ``materialize``: it returns the matrices ``(M_0, ...)`` (b, H, l, l) of the
    applications instead (every structure's ``materialize``; nothing downstream runs)."""
    return ModuleWriter(graph, plan, sizes, materialize).write()  # the torch emission is the common one


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
