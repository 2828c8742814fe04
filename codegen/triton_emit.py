"""The Triton backend: one Python module of Triton kernels per spec, dims and plan.

For every structure application, its package's `TritonLowering` renders the kernels, launchers and
``torch.library`` ops from its templates (``templates/<structure>/``: e.g. the semiseparable stage
templates ``ss_chunk_state``, ``ss_state_pass``, ``ss_chunk_scan``, ``ss_bwd_chunk``, ``ss_step``
over ``ss_common``, with the config space and default of ``ss_scalar_config``), with the spec's
own prologue and epilogue (`regions.py` picks them, `tl_expr.py` writes their lines and their
derivatives) bound at the hook calls: a template calls ``prologue(b=..., l=..., h=..., ...)`` or
``epilogue(...)`` at a hook point with the names the spec's code sees there and splices the
returned `HookCode`. Then the same ``mixer`` function the torch backends get (`writer.ModuleWriter`),
calling those ops where the structures are, with one kernel config per application (``configs=``).
"""

from __future__ import annotations

import hashlib
import re

from mixerc.ir import BackendError, Graph, MixercError

from .planner import Plan
from .regions import torch_skip
from .structures import code_files, lowering_of
from .tl_expr import HELPERS
from .triton_common import VERSION, code_hash
from .writer import ModuleWriter

_DOC = "Triton kernels, per structure application k (prefix k<k>_). Notation:"


def triton_key(graph: Graph, sizes: dict, plan: Plan) -> str:
    """Cache key (and op name prefix): spec name, IR hash, dims, plan, versions, generator code."""
    import torch
    import triton
    key = repr((graph.hash(), sorted(sizes.items()), [(s.node, s.chunk_size) for s in plan.structures],
                VERSION, code_hash(code_files()), torch.__version__, triton.__version__))
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return re.sub(r"\W", "_", f"{graph.name}_{digest}")


class TritonWriter(ModuleWriter):
    """The kernels, launchers and ops of every structure application, and ``mixer`` calling the ops
    where the structures are (and skipping the nodes their kernels compute)."""

    def __init__(self, graph: Graph, plan: Plan, sizes: dict):
        super().__init__(graph, plan, sizes)
        self.fusions = [s.fusion for s in plan.structures]  # the planner's analysis (regions.plan_fusions)
        self.defs, self.lines, self.notation = [HELPERS], {}, []
        base = triton_key(graph, sizes, plan)
        for k, sp in enumerate(plan.structures):
            low = lowering_of(sp.structure).triton
            if low is None:
                raise BackendError(f"{sp.structure} has no triton lowering; use backend='chunked'")
            try:
                code, lines = low.render(graph, sizes, k, sp, f"{base}_k{k}")
            except MixercError:
                raise
            except Exception as e:  # noqa: BLE001 - a generator bug: say where, keep the traceback chained
                raise BackendError(f"generating Triton code for {graph.node(sp.node).args[0]} (spec "
                                   f"{graph.node(sp.node).loc}) from templates/{low.templates}/ failed: "
                                   f"{type(e).__name__}: {e}; use backend='chunked' and report the spec") from e
            self.defs.append(code)
            self.lines.update(lines)
            self.notation += [ln for ln in low.notation.splitlines() if ln not in self.notation]

    def doc(self):
        return ["", _DOC] + self.notation

    def imports(self):
        return ["from typing import Optional", "import triton", "import triton.language as tl",
                "from mixerc.rt import triton as _rt"]

    def definitions(self):
        return self.defs

    def keywords(self):
        return ", step=False, configs=None"

    def skipped(self):
        return torch_skip(self.graph, self.fusions)

    def emit_own(self, n):
        return self.lines.get(n.name)


def generate(graph: Graph, plan: Plan, sizes: dict) -> str:
    """Source of a module with the kernels, their ops and ``mixer(...)`` (as the torch backends')."""
    return TritonWriter(graph, plan, sizes).write()
