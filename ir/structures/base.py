"""What every structured-matrix kind tells the compiler about itself."""

from __future__ import annotations

from abc import ABC, abstractmethod

import sympy


class StructureDef(ABC):
    """A structured matrix kind.

    ``roles``: keyword arguments of the constructor (``mx.semiseparable(C=..., B=...)``), in order;
    ``optional``: the roles that may be left out; ``attrs``: keyword arguments that are Python
    constants (``causal=True``), with their defaults; ``lowerings``: algorithm names, the first one
    being the dense oracle; ``default``: the lowering ``backend="auto"`` picks off CUDA (and on CUDA
    when the structure has no ``triton`` lowering).
    """

    name: str = ""
    roles: tuple[str, ...] = ()
    optional: frozenset[str] = frozenset()
    attrs: dict = {}
    lowerings: tuple[str, ...] = ()
    default: str = ""
    support: str = ""  # where `formula` holds, e.g. "i >= j, else 0"
    stateless_reason: str = "is not causal"  # why `state_dims` is None (errors of step/initial_state)
    grid_axes: int = 1  # how many sequence axes it mixes over: 1 (along l) or 2 (a grid, seq_axes=("v", "l"))
    segments: bool = True  # its lowerings take seq_idx (packed sequences along l)
    unsegmented: tuple[str, ...] = ()  # with segments, the lowerings that still refuse seq_idx

    @abstractmethod
    def layout(self, args: dict, x, where: str | None, where_apply: str | None) -> dict:
        """Check the dims of the role arguments (``args[role].dims``; ``args`` also holds the
        values of ``attrs`` under their names) and of the applied tensor ``x``
        and return a small dict describing how they map onto the canonical form. Raises SpecError
        at ``where`` (the constructor's line) for the roles, at ``where_apply`` (the ``@``) for x."""

    def check_sizes(self, layout: dict, sizes: dict, where: str | None) -> None:
        """Checks that need the bound dim sizes (e.g. groups dividing heads). None by default."""

    @abstractmethod
    def state_dims(self, layout: dict) -> tuple | None:
        """Named dims of the recurrent state of one application (batch first, no ``l``), or None
        for a structure that carries no state across calls (non-causal ones: no ``step``)."""

    def supports(self, lowering: str, layout: dict) -> bool:
        """Whether ``lowering`` handles this layout (``backend="auto"`` only picks triton where
        every application supports it)."""
        return lowering in self.lowerings

    def describe(self, layout: dict) -> str:
        """One line for plans and ``mixerc inspect``."""
        return ", ".join(f"{k} {v}" for k, v in layout.items() if isinstance(v, str))

    @abstractmethod
    def formula(self, layout: dict) -> sympy.Expr:
        """The element ``M[i, j]`` as a sympy expression."""

    @abstractmethod
    def cost(self, layout: dict, lowering: str) -> tuple[sympy.Expr, sympy.Expr]:
        """(FLOPs, bytes moved) of one application with this lowering, in dim symbols and ``Q``."""
