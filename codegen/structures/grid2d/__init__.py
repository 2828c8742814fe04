"""The 2-D (Roesser) state space model over a (variate x time) grid, Chimera's structure: the torch
lowerings in `torch_lowering` (reference, materialize, recurrent, grid, fft2, step) with the wavefront
that ``grid`` runs in `wave` and its fused C loops on the CPU in `native` (C source: `native_c`), the
lattice-path element formula in sympy in `formula`, the Triton kernels' rendering in `triton_lowering`
(templates/grid2d/) and the lines that call either in `emit`. The math is in docs/grid2d.md.

A spec using it declares ``@mx.spec(seq_axes=("v", "l"))``; the IR node is `mixerc.ir.structures.Grid2d`.
"""

from __future__ import annotations

from mixerc.ir.structures import Grid2d

from ..base import StructureLowering
from .emit import emit_apply
from .triton_lowering import TRITON

LOWERING = StructureLowering(
    node=Grid2d(),
    torch_module=f"{__name__}.torch_lowering",
    alias="_g2",
    torch_helpers={f"{__name__}.wave": "_g2w", f"{__name__}.native": "_g2n", f"{__name__}.native_c": "_g2c"},
    emit_apply=emit_apply,
    default_chunk=lambda layout: 16,
    step="step",
    triton=TRITON,
)
