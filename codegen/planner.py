"""The lowering planner: which algorithm runs every structured-matrix application.

A `Plan` is plain data (printable, hashable into caches): the backend asked for, the lowering and
chunk size of every ``apply`` node and, on triton, its fusion (`regions.py`): the spec's nodes its
kernels compute (prologue, epilogue). The same analysis feeds `mixerc inspect` and the kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixerc.ir import STRUCTURES, BackendError, Graph

from .regions import Fusion, keep_last_epilogue
from .structures import backends, lowering_of

STEP = "step"  # what `CompiledMixer.step` runs: every structure's own decode lowering (its package's)


@dataclass
class StructurePlan:
    node: str  # the apply node
    structure: str
    lowering: str
    chunk_size: int | None
    layout: dict
    fusion: Fusion | None = None  # triton: the spec's nodes computed inside its kernels (regions.py)


@dataclass
class Plan:
    backend: str
    structures: list[StructurePlan]

    def lowering_of(self) -> dict[str, str]:
        return {s.node: s.lowering for s in self.structures}

    def describe(self) -> str:
        lines = [f"backend: {self.backend}"]
        for s in self.structures:
            lay = s.layout
            chunk = f", chunk {s.chunk_size}" if s.lowering in ("chunked", "triton") else ""
            what = STRUCTURES[s.structure].describe(lay)
            lines.append(f"  {s.node}: {s.structure} ({what}) -> {s.lowering}{chunk}")
            if s.fusion is not None:  # the torch lowerings fuse nothing: torch runs every node
                epilogue = s.fusion.epilogue.nodes if s.fusion.epilogue else []
                lines.append(f"    fused prologue: {', '.join(s.fusion.prologue.nodes) or '-'}")
                lines.append(f"    fused epilogue: {', '.join(epilogue) or '-'}")
        return "\n".join(lines)

    def __str__(self):
        return self.describe()


def plan(graph: Graph, backend: str = "auto", chunk_size: int | None = None) -> Plan:
    """Pick a lowering for every structure. ``auto``: each structure's ``default`` (the runtime
    turns ``auto`` into ``triton`` for CUDA tensors when every structure has that lowering; with a
    ``chunk_size``, ``chunked`` where the default is ``scan``). A named
    backend must be a lowering of every structure in the spec; `STEP`: each structure's decode
    lowering (its package's ``step``), what `CompiledMixer.step` runs."""
    if backend not in backends() + (STEP,):  # every lowering some structure has: it picks that one in each
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(backends())}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise BackendError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    structures = []
    for a in graph.nodes_of("apply"):
        m = graph.node(a.args[0])
        sdef = STRUCTURES[m.op]
        lowering = {"auto": sdef.default, STEP: lowering_of(m.op).step}.get(backend, backend)
        if backend == "auto" and chunk_size is not None and lowering == "scan" and "chunked" in sdef.lowerings:
            lowering = "chunked"  # a chunk size asks for the chunked algorithm; the fused scan has no chunks
        if lowering is None:
            raise BackendError(f"{m.op} has no decode step: {sdef.stateless_reason}")
        if lowering not in sdef.lowerings and not (backend == STEP and lowering == lowering_of(m.op).step):
            raise BackendError(f"{m.op} has no {lowering!r} lowering; available: "
                               f"{', '.join(sdef.lowerings)}")
        if backend not in ("auto", "triton", STEP) and not sdef.supports(lowering, a.attrs["layout"]):
            raise BackendError(f"{m.op} cannot run its {lowering!r} lowering here ({m.loc or m.name}: "
                               f"{sdef.describe(a.attrs['layout'])}); use backend='auto' or another lowering")
        chunk = chunk_size or lowering_of(m.op).default_chunk(a.attrs["layout"])
        structures.append(StructurePlan(a.name, m.op, lowering, int(chunk), a.attrs["layout"]))
    if backend == "triton":
        fusions = [lowering_of(s.structure).triton.fusion(graph, s) for s in structures]
        for s, f in zip(structures, keep_last_epilogue(graph, fusions)):
            s.fusion = f
    return Plan(backend, structures)
