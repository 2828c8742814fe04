"""What a structure's lowering package tells the code generators: `StructureLowering`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

from mixerc.ir import StructureDef
from mixerc.ir.dims import fmt

from ..layout import value_name
from ..regions import no_fusion


@dataclass(frozen=True)
class StructureLowering:
    """The lowering package of one structure kind, registered once (`register`) beside its IR node.

    ``node``: the IR node kind (`mixerc.ir.StructureDef`) it lowers.
    ``torch_module``: import path of the module holding its torch lowerings, one function per
    name in ``node.lowerings`` other than ``triton`` (plus ``materialize``: the dense matrix), each
    ``fn(x, <roles in canonical layout>..., seq_idx=None, ...) -> (y, final_state or None)``. That
    module is copied into standalone generated modules (`codegen.copier`): it imports torch, the
    standard library and `mixerc.rt` only, and holds no code-generation helpers.
    ``alias``: how generated code names that module's copies (``_ss``).
    ``torch_helpers``: further modules of the package that ``torch_module`` imports from, each with its
    alias (``{module: "_g2w"}``), under the same rules; they are copied beside it, so a long lowering
    can live in files of a readable size.
    ``emit_apply(graph, node, k, splan, names, tag, alias, scale)``: the generated lines of one
    application (they assign ``_y{k}``, ``_s{k}`` and the apply node's name; see
    `codegen.layout.apply_lines`). ``scale``: ``(x, s)`` when the value is ``x * s`` fused into the
    call (only with ``x_scale``).
    ``x_scale``: the torch lowerings take ``x_scale=`` (a (b, l, H) factor of the value, as
    Mamba-2's ``x * dt``), so the product is never materialised.
    ``skip``: the ``scan`` lowering takes ``skip=`` (D of an output ``y + D x``), and ``emit_apply`` a
    ``skip`` argument (D's IR value) when the writer fused one (`codegen.writer.fusable_skips`).
    ``default_chunk(layout)``: the chunk size of ``chunked``/``triton`` when none is given.
    ``step``: the torch lowering that decodes one position (``recurrent``); None for a structure
    without a state (no ``step``).
    ``value_ops``: IR value ops this package generates (``s4d_kernel``): op -> ``emit(graph, node,
    names, sizes, tag, alias)`` returning its lines, calling ``alias.<op>`` of the torch module.
    ``triton``: the Triton lowering (a `TritonLowering`), or None.
    """

    node: StructureDef
    torch_module: str
    alias: str
    emit_apply: Callable
    torch_helpers: dict = field(default_factory=dict)
    x_scale: bool = False
    skip: bool = False
    default_chunk: Callable[[dict], int] = lambda layout: 64
    step: str | None = "recurrent"
    value_ops: dict = field(default_factory=dict)
    triton: "TritonLowering | None" = None

    @property
    def name(self) -> str:
        return self.node.name


def kernel_call_lines(graph, k: int, sp, emit_apply: Callable, extra: str) -> list[str]:
    """The generated mixer's lines for application ``k`` of a structure whose Triton kernels run inside
    its torch lowering's call (``k{k}_lowering``): the structure's ``emit_apply`` with ``extra`` arguments."""
    names = {n.name: value_name(graph, n.name) for n in graph.topo()}
    n = graph.node(sp.node)
    return emit_apply(graph, n, k, sp, names, f"  # {fmt(n.dims)}", None, fn=f"k{k}_lowering", extra=extra)


class TritonLowering(ABC):
    """The Triton lowering of one structure kind (``StructureLowering.triton``).

    ``templates``: its folder under ``templates/``; ``notation``: docstring lines naming what its
    kernels' names mean (the generated module's header lists them).
    """

    templates: str = ""
    notation: str = ""

    def fusion(self, graph, splan):
        """The spec's nodes its kernels compute (a `codegen.regions.Fusion`, in ``splan.fusion``):
        none by default, the kernels read what torch computed."""
        return no_fusion(graph, splan.node)

    @abstractmethod
    def render(self, graph, sizes: dict, k: int, splan, opname: str) -> tuple[str, dict[str, list[str]]]:
        """Application ``k``: the module code of its kernels, launchers and ops (names prefixed
        ``k<k>_``, custom ops ``mixerc::<opname>_*``), and ``{node: lines}``: the lines the generated
        ``mixer`` runs in place of those nodes (an empty list: computed by another node's lines).
        The lines read ``_runs`` (segment runs or None), ``initial_states``, ``step`` and
        ``configs`` (one kernel config per application), and assign ``_s<k>``."""
