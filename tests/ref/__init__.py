"""Test references (no mixerc imports) and the comparison helper of the correctness tests.

- ``ref.ssm``: token-loop and matrix-view references of the semiseparable mixers, Mamba-2 and Mamba,
  written from docs/semiseparable.md and docs/mixers.md.
- ``assert_close(name, ref, out, rtol=..., atol=...)``: reference first, then the output under test.
  (tests/conftest.py keeps an older ``assert_close(name, out, ref, tol)`` with the other order, used by
  test_semiseparable.py and test_user_specs.py; do not mix the two up.)
"""

from __future__ import annotations

import torch

FP64_RTOL = 1e-9


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, *, rtol: float = FP64_RTOL,
                 atol: float | None = None, atol_rel: float | None = None) -> None:
    """Elementwise |out - ref| <= atol + rtol |ref| (torch.testing.assert_close), failing with a
    message that names the tensor.

    atol defaults to ``atol_rel * max|ref|`` with atol_rel = rtol: an element that is zero or tiny
    because of cancellation (a gradient summed over many positions, an output of a fully decayed
    state) is then judged against the size of the tensor, not its own size. Checks shape, and that
    ``out`` is finite wherever ``ref`` is."""
    ref = ref.detach()
    out = out.detach()
    assert tuple(out.shape) == tuple(ref.shape), \
        f"{name}: shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
    assert out.dtype == ref.dtype, f"{name}: dtype {out.dtype}, expected {ref.dtype}"
    assert torch.isfinite(ref).all(), f"{name}: the reference itself is not finite"
    bad = ~torch.isfinite(out)
    assert not bad.any(), f"{name}: {int(bad.sum())} non-finite values (NaN/inf) in the output"
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    if atol is None:
        atol = (rtol if atol_rel is None else atol_rel) * scale
    if ref.numel():
        err = (out - ref).abs()
        worst = int(err.argmax())
        detail = (f"max abs err {float(err.max()):.3e} at flat index {worst} "
                  f"(ref {float(ref.flatten()[worst]):.6e}, out {float(out.flatten()[worst]):.6e}); "
                  f"max|ref| {scale:.3e}; rtol {rtol:.1e}, atol {atol:.1e}")
    else:
        detail = "empty"
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {detail}\n{m}")


def step_through(m, inputs: dict, state):
    """Decode a whole sequence with ``m.step`` from ``state``: (outputs stacked along l, final state)."""
    l = next(iter(inputs.values())).shape[1]
    ys = []
    for t in range(l):
        y_t, state = m.step(state, **{k: v[:, t] for k, v in inputs.items()})
        ys.append(y_t)
    return torch.stack(ys, 1), state


def assert_step_from_init_state(name: str, m, inputs: dict):
    """Decoding from ``m.init_state`` equals the forward without an initial state."""
    b = next(iter(inputs.values())).shape[0]
    y_steps, state = step_through(m, inputs, m.init_state(b))
    y, S = m(**inputs, return_final_state=True)
    assert_close(f"{name} step from init_state", y.detach(), y_steps.detach())
    assert_close(f"{name} step state from init_state", S.detach(), state.detach())


def compare_with_refs(what: str, refs: dict, y, S, grads: dict, *, rtol: float, globally_scaled=()):
    """y, the final state and every gradient against each reference ``{name: (y, S, grads)}``. Each
    tensor is judged against its own size, except the gradients named in ``globally_scaled``
    (against the largest gradient of the case)."""
    for ref_name, (y_r, S_r, g_r) in refs.items():
        assert_close(f"{what} y vs {ref_name}", y_r, y, rtol=rtol)
        assert_close(f"{what} final state vs {ref_name}", S_r, S, rtol=rtol)
        assert set(grads) == set(g_r), f"{what}: gradients of {sorted(grads)}, expected {sorted(g_r)}"
        global_scale = max(float(v.abs().max()) for v in g_r.values())
        for k in g_r:
            assert grads[k] is not None, f"{what}: no gradient reached {k}"
            atol = rtol * global_scale if k in globally_scaled else None
            assert_close(f"{what} d/d{k} vs {ref_name}", g_r[k], grads[k], rtol=rtol, atol=atol)
