"""`check`: every lowering of a spec against its ``reference`` lowering, forward and backward, in fp64.

Used by ``mixerc check`` and by the tests. The reference lowering materialises M densely; the
recurrent and chunked lowerings share no code with it beyond the generated prologue/epilogue.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .codegen import TORCH_BACKENDS
from .compiler import compile as compile_spec
from .ir import STRUCTURES
from .ir.dims import BATCH, LENGTH


@dataclass
class CheckResult:
    lowering: str
    forward: float  # max relative error of y
    state: float | None  # of the final state(s); None for a spec without state
    grads: float  # max over inputs, parameters and the initial state
    step: float | None  # of step() over the sequence vs forward (recurrent and triton)
    tol: float

    @property
    def ok(self) -> bool:
        errs = [self.forward, self.state, self.grads, self.step]
        return all(e <= self.tol for e in errs if e is not None)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def random_inputs(mixer, b: int, l: int, generator=None, dtype=torch.float64) -> dict:
    out = {}
    for name in mixer.ir.inputs:
        shape = [b if d == BATCH else l if d == LENGTH else mixer.sizes[d] for d in mixer.ir.node(name).dims]
        out[name] = torch.randn(*shape, generator=generator, dtype=dtype)
    return out


def _flat_states(s):
    return [s] if isinstance(s, torch.Tensor) or s is None else list(s)


def _pack(states):
    """The ``initial_state`` argument: None, one tensor, or a tuple (None for stateless ones)."""
    if not states:
        return None
    return states[0] if len(states) == 1 else tuple(states)


def default_lowerings(graph=None) -> tuple[str, ...]:
    """The torch lowerings (those every structure of ``graph`` has), plus ``triton`` when its
    kernels can run on CPU tensors here."""
    lows = TORCH_BACKENDS + (("triton",) if os.environ.get("TRITON_INTERPRET") == "1" else ())
    if graph is not None:
        applies = [(STRUCTURES[graph.node(a.args[0]).op], a.attrs["layout"]) for a in graph.nodes_of("apply")]
        lows = tuple(low for low in lows if all(sd.supports(low, lay) for sd, lay in applies))
    return lows


def run_check(spec, dims: dict, b: int = 2, l: int = 37, lowerings=None, chunk_size: int = 16,
              seed: int = 0, tol: float = 1e-9, seq_idx: bool = True) -> list[CheckResult]:
    """Compare every lowering with ``reference`` on random fp64 inputs, a random initial state and
    (with ``seq_idx``) three packed segments."""
    g = torch.Generator().manual_seed(seed)
    ref = compile_spec(spec, dims=dims, backend="reference", dtype=torch.float64)
    inputs = random_inputs(ref, b, l, g)
    states = [None if s is None else torch.randn(s, generator=g, dtype=torch.float64)
              for s in ref.state_shapes(b)]
    stateful = any(s is not None for s in states)
    if not stateful:
        states = []
    seg = None
    if seq_idx and l >= 3:
        seg = torch.zeros(b, l, dtype=torch.long)
        seg[:, l // 3:] = 1
        seg[:, (2 * l) // 3:] = 2

    def run(m):
        ins = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        s0 = [None if s is None else s.clone().requires_grad_(True) for s in states]
        y, fin = m(**ins, initial_state=_pack(s0), return_final_state=True, seq_idx=seg)
        fins = [f for f in _flat_states(fin) if f is not None]
        loss = (y * torch.cos(torch.arange(y.numel(), dtype=y.dtype).view_as(y))).sum()
        loss = loss + sum((f * f).sum() for f in fins)
        leaves = list(ins.values()) + list(m.parameters()) + [s for s in s0 if s is not None]
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        grads = [torch.zeros_like(x) if gr is None else gr for x, gr in zip(leaves, grads)]
        return y.detach(), [f.detach() for f in fins], grads

    y_ref, s_ref, g_ref = run(ref)
    with torch.no_grad():  # step() knows no segments: compare it with an unsegmented forward
        y_plain = ref(**inputs, initial_state=_pack(states))
    results = []
    for low in lowerings or default_lowerings(ref.ir):
        m = compile_spec(spec, dims=dims, backend=low, dtype=torch.float64, chunk_size=chunk_size)
        m.load_state_dict(ref.state_dict())
        y, s, grads = run(m)
        step_err = None
        if low in ("recurrent", "triton") and stateful:  # triton's step updates the state in place: copies
            st = tuple(s.clone() for s in states) if len(states) > 1 else states[0].clone()
            ys = []
            for t in range(l):
                yt, st = m.step(st, **{k: v[:, t] for k, v in inputs.items()})
                ys.append(yt)
            step_err = _rel(torch.stack(ys, 1).detach(), y_plain)
        results.append(CheckResult(
            low, _rel(y, y_ref), max((_rel(a, r) for a, r in zip(s, s_ref)), default=None),
            max(_rel(a, r) for a, r in zip(grads, g_ref)), step_err, tol))
    return results
