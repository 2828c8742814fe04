"""The quasiseparable structure's lowering package (Hydra's matrix): torch lowerings in
`torch_lowering`, the Triton launch on the semiseparable kernels (both directions in one grid)."""

from __future__ import annotations

from mixerc.ir.structures import Quasiseparable

from ..base import StructureLowering
from .emit import emit_apply
from .triton_lowering import TRITON


LOWERING = StructureLowering(
    node=Quasiseparable(),
    torch_module=f"{__name__}.torch_lowering",
    alias="_qs",
    emit_apply=emit_apply,
    step=None,
    triton=TRITON,
)
