"""The 2-D (Roesser) state space model over a (variate x time) grid, Chimera's structure: the torch
lowerings in `torch_lowering` (reference, materialize, recurrent, grid, fft2, step) and the lattice-path
element formula in sympy in `formula`. The math is in docs/grid2d.md.

Not registered yet: the IR node (``mx.grid2d``, its layout rules over the sequence axes ``v`` and
``l``) and its ``emit_apply`` come with sequence grids in the IR; these modules do not depend on them.
"""
