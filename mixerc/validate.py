"""Checks at mixerc's entry points that the per-input checks of `runtime.CompiledMixer` do not make,
and the answers at the edges (``b = 0``, ``l = 0``).

- `compile_args`: ``mx.compile``'s ``dtype``, ``backend``, ``chunk_size`` and ``parameters``.
- `RESERVED_NAMES`: names a spec input or parameter may not take, because the call (``mixer(...)``,
  ``mixer.step(...)``) or the generated code already uses them; `Spec.trace` refuses them.
- `no_positional`: the forward pre-hook that turns ``mixer(x, dt, B, C)`` into an `InputError`
  naming the keyword form; `positional` the same for ``step``.
- `tensors`: no ``meta`` tensor (it has no data; fake tensors under ``torch.compile`` report their
  real device), no complex tensor.
- `states`: a state must be a real floating tensor on the inputs' device.
- `batch`: ``init_state``'s batch, an integer >= 0.
- `empty_output` / `passed_states`: with ``b = 0`` or ``l = 0`` the output is empty but still part of
  the autograd graph (a backward runs and gives zero gradients), and a final state is a copy of the
  initial state (never the caller's own tensor, which a later in-place ``step`` would change).

Every check reads only tensor metadata (dtype, device, shape): no device sync, no data read.
"""

from __future__ import annotations

import numbers

import torch

from .ir import InputError

# the call's own keywords (forward, step, materialize), and names the generated modules bind
RESERVED_NAMES = {
    "seq_idx": "the packed-sequence keyword of mixer(...)",
    "initial_state": "the initial-state keyword of mixer(...)",
    "return_final_state": "a keyword of mixer(...)",
    "params": "the parameters keyword of mixer(...) and mixer.step(...)",
    "state": "the state argument of mixer.step(state, ...)",
    "cu_seqlens": "the varlen keyword of mixer(...)",
    "lengths": "the varlen keyword of mixer(...)",
    "self": "the module itself in mixer(...)",
    "initial_states": "a keyword of the generated mixer function",
    "configs": "a keyword of the generated Triton mixer function",
    "step": "a keyword of the generated Triton mixer function",
    "F": "torch.nn.functional in the generated torch code",
}


def reserved_name(name: str) -> str | None:
    """Why ``name`` cannot name a spec input or parameter, or None."""
    return RESERVED_NAMES.get(name)


# -- mx.compile ------------------------------------------------------------------------------------
def compile_args(dtype, backend, parameters) -> None:
    """``dtype``: None or a real floating torch.dtype; ``backend``: a string; ``parameters``: a bool.
    (``dims`` and ``chunk_size`` are checked where they are used, by the compiler and the planner.)"""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point
                                  and not dtype.is_complex):
        hint = f"torch.{dtype}" if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None),
                                                                       torch.dtype) else "torch.float32"
        raise InputError(f"mx.compile: dtype={dtype!r} must be None or a floating torch.dtype (float32, "
                         f"float64, float16 or bfloat16), the parameters' dtype; e.g. dtype={hint}")
    if not isinstance(backend, str):
        raise InputError(f"mx.compile: backend={backend!r} must be a string such as 'auto', 'chunked' or "
                         "'triton'")
    if not isinstance(parameters, bool):
        raise InputError(f"mx.compile: parameters={parameters!r} must be True or False")


# -- calls ------------------------------------------------------------------------------------------
def _keyword_form(mixer) -> str:
    return ", ".join(f"{n}={n}" for n in mixer._input_dims)


def positional(mixer, args: tuple, call: str) -> None:
    """Positional inputs are refused: their order would be a guess."""
    if args:
        raise InputError(f"{call} takes the spec's inputs by keyword, got {len(args)} positional "
                         f"argument(s); write {call}({'state, ' if 'step' in call else ''}{_keyword_form(mixer)})")


def no_positional(mixer, args: tuple) -> None:
    """A forward pre-hook of `CompiledMixer` (``register_forward_pre_hook``)."""
    if args:
        positional(mixer, args, "mixer")


def tensors(inputs: dict) -> None:
    """No meta and no complex tensor among ``inputs`` (name -> tensor; others are left to the
    shape checks)."""
    for name, t in inputs.items():
        if not isinstance(t, torch.Tensor):
            continue
        if t.is_complex():
            raise InputError(f"input {name!r} is complex ({t.dtype}); mixerc computes in real floating "
                             "point: pass its real part (t.real) or split real and imaginary parts into "
                             "two inputs")
        if t.device.type == "meta":
            raise InputError(f"input {name!r} is on the meta device (shape only, no data); pass a tensor "
                             "on cpu or cuda (torch.compile's fake tensors are accepted: they report their "
                             "real device)")


def states(states, what: str, device) -> None:
    """Each state tensor is real floating point, on ``device`` (the inputs')."""
    for k, s in enumerate(states or ()):
        if s is None:
            continue
        name = what if len(states) == 1 else f"{what}[{k}]"
        if s.is_complex() or not s.is_floating_point():
            raise InputError(f"{name} has dtype {s.dtype}; a state is a real floating-point tensor "
                             "(float32 or float64): make one with mixer.init_state(batch), or convert "
                             "it with .float()")
        if s.device.type == "meta":
            raise InputError(f"{name} is on the meta device (shape only, no data); pass a state on the "
                             "inputs' device")
        if device is not None and s.device != device:
            raise InputError(f"{name} is on {s.device} but the inputs are on {device}; move it with "
                             f".to({str(device)!r})")


def batch(value, dtype) -> None:
    """``init_state(batch, dtype=...)``: batch an integer >= 0, dtype None or real floating."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InputError(f"init_state: batch={value!r} must be an integer >= 0 (the number of sequences)")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InputError(f"init_state: dtype={dtype!r} must be None or a real floating torch.dtype")


# -- b = 0 or l = 0 ----------------------------------------------------------------------------------
class _Empty(torch.autograd.Function):
    """An empty output that depends on ``tensors``: backward gives each a zero gradient (their true
    gradient: nothing was computed from them)."""

    @staticmethod
    def forward(ctx, shape, dtype, device, *tensors):
        ctx.specs = [(t.shape, t.dtype, t.device) for t in tensors]
        return torch.zeros(shape, dtype=dtype, device=device)

    @staticmethod
    def backward(ctx, grad):
        return (None, None, None, *(torch.zeros(s, dtype=d, device=v) for s, d, v in ctx.specs))


def empty_output(shape, dtype, device, tensors) -> torch.Tensor:
    """A zero-size output of ``shape``, connected to the autograd graph of every tensor that needs a
    gradient (none: a plain empty tensor)."""
    grads = [t for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad]
    if not grads or not torch.is_grad_enabled():
        return torch.zeros(shape, dtype=dtype, device=device)
    return _Empty.apply(tuple(shape), dtype, device, *grads)


def passed_states(states, shapes, dtype, device) -> tuple:
    """The final states of an empty sequence: a copy of each initial state (in the compute dtype), or
    zeros where none was given."""
    if states is None:
        return tuple(None if sh is None else torch.zeros(sh, dtype=dtype, device=device) for sh in shapes)
    return tuple(None if s is None else s.to(dtype).clone() for s in states)
