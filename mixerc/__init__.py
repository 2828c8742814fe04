"""mixerc: a compiler for sequence mixers written as structured matrices.

    import mixerc as mx

    @mx.spec
    def my_mixer(x: mx.Seq("b l h p"), ...):
        M = mx.semiseparable(C=C, B=B, log_decay=...)
        return M @ x

    mixer = mx.compile(my_mixer, dims=dict(h=8, p=64, n=64))
"""

# `mixerc.ir`, `mixerc.codegen`, ... live in top-level folders mapped by pyproject.toml.
from . import ir  # noqa: E402
from . import init  # noqa: E402
from .ir import BackendError, InputError, MixercError, ShapeError, SpecError  # noqa: E402
from .dsl import (  # noqa: E402
    OPS, STRUCTURE_CONSTRUCTORS, Matrix, Param, Seq, Spec, Value, add, clamp, diff, div, flip, groups_to_heads,
    mul, neg, s4d_kernel, shift, spec, sub,
)
from .loader import list_specs, load_spec  # noqa: E402
from .compiler import compile, trace  # noqa: E402
from .runtime import CompiledMixer  # noqa: E402
from .cache import CacheWarning  # noqa: E402
from .compiled import CompiledWarning  # noqa: E402
from .tuning import load_tuning, unload_tuning  # noqa: E402
from . import autotune  # noqa: E402,F401  (registers the tuner MIXERC_AUTOTUNE=full runs)

from .structures import StructureDef, StructureLowering, register_structure  # noqa: E402

globals().update(OPS)  # mx.exp, mx.tanh, ...: one per op of the table in ir/ops.py
globals().update(STRUCTURE_CONSTRUCTORS)  # mx.semiseparable, ...: one per registered structure

__version__ = "0.1.0"

__all__ = [
    "spec", "Seq", "Param", "Spec", "Value", "Matrix", "init",
    "add", "sub", "mul", "div", "neg", *OPS, "clamp",
    "groups_to_heads", "diff", "shift", "flip", *STRUCTURE_CONSTRUCTORS, "s4d_kernel", "register_structure",
    "StructureDef",
    "StructureLowering",
    "compile", "trace", "load_spec", "list_specs", "CompiledMixer", "load_tuning", "unload_tuning",
    "MixercError", "SpecError", "ShapeError", "InputError", "BackendError", "CacheWarning",
    "CompiledWarning",
]

