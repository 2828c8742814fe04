"""The compile driver: spec -> traced IR -> passes -> plan -> generated code -> `CompiledMixer`."""

from __future__ import annotations

import torch

from . import codegen, compiled, validate
from .dsl import Spec
from .ir import SpecError
from .ir.dims import RESERVED
from .ir.passes import run_passes
from .loader import load_spec
from .runtime import CompiledMixer


def check_dims(dims) -> dict:
    if dims is None:
        return {}
    if not isinstance(dims, dict):
        raise SpecError(f"dims must be a dict such as dict(h=8, p=64), got {type(dims).__name__}")
    out = {}
    for k, v in dims.items():
        if k in RESERVED:
            raise SpecError(f"dims: {k!r} is the {'batch' if k == 'b' else 'sequence'} dim and stays "
                            "symbolic; it comes from the inputs, leave it out of dims")
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpecError(f"dims: {k}={v!r} must be a positive integer")
        out[k] = v
    return out


def trace(spec, dims: dict | None = None):
    """The verified IR graph of ``spec`` (a `Spec`, a built-in name or a path) for ``dims``."""
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    sizes = check_dims(dims)
    axes = [ax for ax in spec.seq_axes if ax in sizes]
    if axes:
        raise SpecError(f"dims: {axes[0]!r} is a sequence axis of spec {spec.name!r} and stays symbolic; it "
                        "comes from the inputs, leave it out of dims")
    graph = run_passes(spec.trace(), sizes)
    used = {d for n in graph.topo() for d in (n.dims or ())}
    extra = sorted(set(sizes) - used)
    if extra:
        raise SpecError(f"dims names {', '.join(map(repr, extra))}, not a dim of spec {spec.name!r} "
                        f"(its dims: {', '.join(sorted(used - set(RESERVED)))})")
    return spec, graph, sizes


def compile(spec, *, dims: dict, backend: str = "auto", dtype: torch.dtype | None = None,
            chunk_size: int | None = None, parameters: bool = True) -> CompiledMixer:
    """Compile a spec into an `nn.Module`.

    ``dims``: sizes of every dim except ``b`` and ``l``; ``backend``: ``auto`` (on CPU the default
    lowerings, compiled by inductor with ``MIXERC_CPU_COMPILE=1``: `mixerc.compiled`), ``compiled``,
    ``reference``, ``recurrent``, ``chunked`` or ``triton`` (``MIXERC_BACKEND`` overrides ``auto``);
    ``dtype``: of the parameters (default: torch's default dtype); ``chunk_size``: of ``chunked``;
    ``parameters=False``: the module holds no parameters and every call passes ``params={...}``
    (for layers that own them under their own names, as `mixerc.nn` does).
    """
    validate.compile_args(dtype, backend, parameters)
    spec, graph, sizes = trace(spec, dims)
    # validates backend and chunk size up front; "compiled" runs the default lowerings (mixerc/compiled.py)
    plan = codegen.plan(graph, "auto" if backend == compiled.NAME else backend, chunk_size)
    return CompiledMixer(spec, graph, sizes, backend=backend, dtype=dtype, chunk_size=chunk_size,
                         parameters=parameters, plan=plan)
