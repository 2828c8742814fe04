"""User-written specs (not built-ins) through every lowering, against the independent references of
tests/ref/ssm.py, in float64: forward, final state, gradients of every input / the initial state /
every parameter, step, seq_idx, lengths 1, 63 and 200 with chunk size 64, strong decays.

The specs below cover the three decay kinds of the semiseparable structure:

- ``gated``: scalar decay per head from a sigmoid/clamp prologue (B and C per head, no groups);
- ``linattn`` / ``linattn_fm``: no decay (linear attention), B and C in groups, the second with feature
  maps on B and C and an (h p) skip parameter;
- ``diag``: diagonal decay per state with A_log (h n), B and C in groups, p > 1 (the built-in mamba
  has p = 1 and one group).

The references recompute each spec's prologue in plain torch and call the loop / matrix views.
"""

from __future__ import annotations

import functools
import textwrap
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

import mixerc as mx
from ref import assert_close, assert_step_from_init_state, compare_with_refs, step_through
from ref import ssm as R
from ref.models import segment_ids

F64 = torch.float64
LOWERINGS = ["reference", "recurrent", "chunked"]
CHUNK = 64
RTOL = 1e-9  # fp64; the lowerings reorder sums, nothing more


# ----------------------------------------------------------------------------------------------
# the specs
# ----------------------------------------------------------------------------------------------
@mx.spec
def gated(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n"),
          A: mx.Param("h", init=mx.init.log_uniform(1, 16)), D: mx.Param("h", init=1.0)):
    delta = mx.sigmoid(dt) * 0.5 + mx.clamp(dt, min=0.0, max=1.0)
    M = mx.semiseparable(C=C, B=B, log_decay=-mx.exp(A) * delta)
    return M @ (x * delta) + D * x


@mx.spec
def linattn(x: mx.Seq("b l h p"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n")):
    return mx.semiseparable(C=C, B=B) @ x


@mx.spec
def linattn_fm(x: mx.Seq("b l h p"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n"),
               D: mx.Param("h p", init=1.0)):
    M = mx.semiseparable(C=mx.silu(C), B=mx.softplus(B))
    return M @ x + D * x


@mx.spec
def diag(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n"),
         A_log: mx.Param("h n", init=mx.init.s4d_real()),
         dt_bias: mx.Param("h", init=mx.init.inv_softplus_dt(1e-3, 1e-1)),
         D: mx.Param("h", init=1.0)):
    delta = mx.softplus(dt + dt_bias)
    M = mx.semiseparable(C=C, B=B, log_decay=-mx.exp(A_log) * delta)
    return M @ (x * delta) + D * x


# ----------------------------------------------------------------------------------------------
# the references: each spec's prologue in plain torch, then the structure (loop or matrix view)
# ----------------------------------------------------------------------------------------------
def ref_gated(structure, ins, prm, S0, seq_idx):
    x, dt = ins["x"], ins["dt"]
    delta = torch.sigmoid(dt) * 0.5 + torch.clamp(dt, min=0.0, max=1.0)  # (b, l, h)
    log_decay = -torch.exp(prm["A"]) * delta
    y, S = structure(x * delta[..., None], ins["B"], ins["C"], log_decay, S0, seq_idx)
    return y + prm["D"][:, None] * x, S


def ref_linattn(structure, ins, prm, S0, seq_idx):
    return structure(ins["x"], ins["B"], ins["C"], None, S0, seq_idx)


def ref_linattn_fm(structure, ins, prm, S0, seq_idx):
    x = ins["x"]
    y, S = structure(x, F.softplus(ins["B"]), F.silu(ins["C"]), None, S0, seq_idx)
    return y + prm["D"] * x, S


def ref_diag(structure, ins, prm, S0, seq_idx):
    x = ins["x"]
    delta = R.softplus(ins["dt"] + prm["dt_bias"])  # (b, l, h)
    log_decay = -torch.exp(prm["A_log"]) * delta[..., None]  # (b, l, h, n)
    y, S = structure(x * delta[..., None], ins["B"], ins["C"], log_decay, S0, seq_idx)
    return y + prm["D"][:, None] * x, S


STRUCTURES = {"loop": R.semiseparable_loop, "dense": R.semiseparable_dense}


@dataclass(frozen=True)
class UserCase:
    id: str
    spec: object
    dims: tuple
    ref: Callable
    inputs: tuple  # ((name, dims string), ...)
    params: tuple  # ((name, dims string), ...)

    @property
    def dims_dict(self):
        return dict(self.dims)

    def shape(self, dims: str, b: int, l: int):
        sizes = dict(self.dims_dict, b=b, l=l)
        return tuple(sizes[d] for d in dims.split())

    def state_shape(self, b):
        d = self.dims_dict
        return (b, d["h"], d["p"], d["n"])


CASES = {c.id: c for c in (
    UserCase("gated", gated, (("h", 4), ("p", 3), ("n", 5)), ref_gated,
             (("x", "b l h p"), ("dt", "b l h"), ("B", "b l h n"), ("C", "b l h n")),
             (("A", "h"), ("D", "h"))),
    UserCase("linattn", linattn, (("h", 4), ("p", 3), ("n", 5), ("g", 2)), ref_linattn,
             (("x", "b l h p"), ("B", "b l g n"), ("C", "b l g n")), ()),
    UserCase("linattn_fm", linattn_fm, (("h", 4), ("p", 3), ("n", 5), ("g", 1)), ref_linattn_fm,
             (("x", "b l h p"), ("B", "b l g n"), ("C", "b l g n")), (("D", "h p"),)),
    UserCase("diag", diag, (("h", 4), ("p", 3), ("n", 5), ("g", 2)), ref_diag,
             (("x", "b l h p"), ("dt", "b l h"), ("B", "b l g n"), ("C", "b l g n")),
             (("A_log", "h n"), ("dt_bias", "h"), ("D", "h"))),
)}


def make_params(case: UserCase, seed: int, A_max: float = 16.0):
    """A / A_log: log of values in [1, A_max]; dt_bias ~ 0.5 N(0,1); D ~ N(0,1)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, dims in case.params:
        shape = case.shape(dims, 0, 0)
        if name in ("A", "A_log"):
            out[name] = torch.log(1 + (A_max - 1) * torch.rand(*shape, generator=gen, dtype=F64))
        elif name == "dt_bias":
            out[name] = 0.5 * torch.randn(*shape, generator=gen, dtype=F64)
        else:
            out[name] = torch.randn(*shape, generator=gen, dtype=F64)
    return out


def make_inputs(case: UserCase, b: int, l: int, seed: int, dt_shift: float = 0.0):
    gen = torch.Generator().manual_seed(seed)
    out = {name: torch.randn(*case.shape(dims, b, l), generator=gen, dtype=F64) for name, dims in case.inputs}
    if "dt" in out:
        out["dt"] = out["dt"] + dt_shift
    if case.id == "linattn":
        # no decay: keep the running sums of x B^T moderate over 200 positions
        out["B"] = out["B"] * 0.3
    return out


def make_state(case: UserCase, b: int, seed: int):
    gen = torch.Generator().manual_seed(seed + 1000)
    return torch.randn(*case.state_shape(b), generator=gen, dtype=F64)


def compile_case(case: UserCase, lowering: str, params, dtype=F64):
    m = mx.compile(case.spec, dims=case.dims_dict, backend=lowering, dtype=dtype, chunk_size=CHUNK)
    if params:
        m.load_state_dict({k: v.to(dtype) for k, v in params.items()})
    return m


def _weights(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=F64)


def _loss(y, S):
    return (y * _weights(y.shape, 1)).sum() + (S * _weights(S.shape, 2)).sum()


def run_module(m, inputs, S0, seq_idx):
    ins = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    s0 = None if S0 is None else S0.clone().requires_grad_()
    for prm in m.parameters():
        prm.grad = None
    y, S = m(**ins, initial_state=s0, return_final_state=True, seq_idx=seq_idx)
    _loss(y, S).backward()
    grads = {k: v.grad for k, v in ins.items()}
    if s0 is not None:
        grads["initial_state"] = s0.grad
    grads.update({k: p.grad for k, p in m.named_parameters()})
    return y.detach(), S.detach(), grads


def run_reference(case, structure, params, inputs, S0, seq_idx):
    ins = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    prm = {k: v.clone().requires_grad_() for k, v in params.items()}
    s0 = None if S0 is None else S0.clone().requires_grad_()
    y, S = case.ref(structure, ins, prm, s0, seq_idx)
    _loss(y, S).backward()
    grads = {k: v.grad for k, v in ins.items()}
    if s0 is not None:
        grads["initial_state"] = s0.grad
    grads.update({k: v.grad for k, v in prm.items()})
    return y.detach(), S.detach(), grads


SEQ = {
    # length-1 segments first, in the middle, around the chunk edge 64 and last
    "len1-segments": lambda b: torch.stack([segment_ids([1, 29, 1, 33, 1, 134, 1]),
                                            segment_ids([64, 1, 135], first_id=5)][:b]),
}


@functools.lru_cache(maxsize=None)
def _case(case_id, b, l, seed, with_init, seq_key, dt_shift, A_max):
    case = CASES[case_id]
    params = make_params(case, seed, A_max)
    inputs = make_inputs(case, b, l, seed, dt_shift)
    S0 = make_state(case, b, seed) if with_init else None
    seq_idx = None if seq_key is None else SEQ[seq_key](b)
    refs = {name: run_reference(case, fn, params, inputs, S0, seq_idx) for name, fn in STRUCTURES.items()}
    return case, params, inputs, S0, seq_idx, refs


def check(case_id, lowering, *, b=2, l=63, seed=0, with_init=True, seq_key=None, dt_shift=0.0,
          A_max=16.0, rtol=RTOL, globally_scaled=()):
    case, params, inputs, S0, seq_idx, refs = _case(case_id, b, l, seed, with_init, seq_key, dt_shift, A_max)
    m = compile_case(case, lowering, params)
    y, S, grads = run_module(m, inputs, S0, seq_idx)
    assert tuple(y.shape) == case.shape("b l h p", b, l) and y.dtype == F64
    compare_with_refs(f"{case_id}/{lowering}", refs, y, S, grads, rtol=rtol, globally_scaled=globally_scaled)


CASE_IDS = list(CASES)


# ----------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("l", [1, 63, 200], ids=lambda l: f"l{l}")
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_forward_state_and_gradients(case_id, l, lowering):
    check(case_id, lowering, l=l, seed=l)


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_without_initial_state(case_id, lowering):
    check(case_id, lowering, l=70, seed=3, with_init=False)


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_seq_idx(case_id, lowering):
    check(case_id, lowering, l=200, seed=4, seq_key="len1-segments")


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("case_id", ["gated", "diag"])
def test_strong_decays(case_id, lowering):
    """A up to 800: exp(log_decay) underflows to 0 in fp64 within a step or two (gated: Δ up to 1.5,
    Δ A up to 1200; diag: dt + dt_bias around +6, Δ A up to ~4800) next to heads with A ~ 1.

    d/dA(_log) is judged against the largest gradient of the case, not its own size: the true value is
    tiny where decays underflow, and lowerings that take differences of cumulative sums of Δ A (sums up
    to ~1e5 here) carry absolute rounding there; see EXTREME_GLOBALLY_SCALED in test_lowerings.py."""
    scaled = ("A",) if case_id == "gated" else ("A_log",)
    check(case_id, lowering, l=200, seed=6, dt_shift=6.0, A_max=800.0, globally_scaled=scaled)


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_step_equals_forward(case_id, lowering):
    case = CASES[case_id]
    l = 70
    params = make_params(case, 8)
    inputs = make_inputs(case, 2, l, 8)
    S0 = make_state(case, 2, 8)
    m = compile_case(case, lowering, params)
    y, S = m(**inputs, initial_state=S0, return_final_state=True)
    y_steps, state = step_through(m, inputs, S0)
    assert_close(f"{case_id}/{lowering} step outputs vs forward", y.detach(), y_steps.detach())
    assert_close(f"{case_id}/{lowering} step state vs forward", S.detach(), state.detach())
    y_r, S_r = case.ref(R.semiseparable_loop, inputs, params, S0, None)
    assert_close(f"{case_id}/{lowering} step outputs vs reference", y_r, y_steps.detach())
    assert_close(f"{case_id}/{lowering} step state vs reference", S_r, state.detach())
    # from init_state (zeros): equals the forward with no initial state
    assert_step_from_init_state(f"{case_id}/{lowering}", m, inputs)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_init_state_follows_the_compile_dtype(case_id):
    """mx.compile(..., dtype=float64).init_state(b): zeros of the state shape in float64, also for
    a spec with no parameters (linattn)."""
    case = CASES[case_id]
    for dtype in (F64, torch.float32):
        s = compile_case(case, "auto", None, dtype=dtype).init_state(2)
        assert tuple(s.shape) == case.state_shape(2)
        assert s.dtype == dtype, f"{case_id}: init_state dtype {s.dtype} after compile(dtype={dtype})"
        assert not s.any()


def test_parameters_follow_the_spec():
    m = compile_case(CASES["diag"], "auto", None)
    assert dict((k, tuple(v.shape)) for k, v in m.state_dict().items()) == \
        {"A_log": (4, 5), "dt_bias": (4,), "D": (4,)}
    assert all(isinstance(p, torch.nn.Parameter) for p in m.parameters())
    m = compile_case(CASES["gated"], "auto", None)
    assert set(m.state_dict()) == {"A", "D"}
    # init=mx.init.log_uniform(1, 16): A stores log of values in [1, 16]
    assert bool((m.A >= -1e-12).all() and (m.A <= torch.log(torch.tensor(16.0, dtype=F64)) + 1e-12).all())
    assert bool((m.D == 1).all())
    assert list(compile_case(CASES["linattn"], "auto", None).parameters()) == []


SPEC_FILE = '''
import mixerc as mx


@mx.spec
def file_mixer(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n"),
               A: mx.Param("h", init=mx.init.log_uniform(1, 16)), D: mx.Param("h", init=1.0)):
    delta = mx.sigmoid(dt) * 0.5 + mx.clamp(dt, min=0.0, max=1.0)
    M = mx.semiseparable(C=C, B=B, log_decay=-mx.exp(A) * delta)
    return M @ (x * delta) + D * x
'''


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_spec_loaded_from_a_file(tmp_path, lowering):
    """mx.load_spec(path) of a .py file with one @mx.spec: the same mixer as ``gated``."""
    path = tmp_path / "my_mixer.py"
    path.write_text(textwrap.dedent(SPEC_FILE))
    spec = mx.load_spec(str(path))
    case, params, inputs, S0, _, refs = _case("gated", 2, 70, 9, True, None, 0.0, 16.0)
    m = mx.compile(spec, dims=case.dims_dict, backend=lowering, dtype=F64, chunk_size=CHUNK)
    m.load_state_dict(params)
    y, S, grads = run_module(m, inputs, S0, None)
    y_r, S_r, g_r = refs["loop"]
    assert_close("file spec y", y_r, y)
    assert_close("file spec state", S_r, S)
    for k in g_r:
        assert_close(f"file spec d/d{k}", g_r[k], grads[k])


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_chunked_float32_smoke(case_id):
    """chunked in fp32 against the fp64 loop reference: fp32 unit roundoff ~6e-8, sums over 200
    positions, so 1e-4 of the output's size."""
    case, params, inputs, S0, _, refs = _case(case_id, 2, 200, 200, True, None, 0.0, 16.0)
    m = compile_case(case, "chunked", params, dtype=torch.float32)
    y, S = m(**{k: v.float() for k, v in inputs.items()}, initial_state=S0.float(), return_final_state=True)
    assert y.dtype == torch.float32
    y_r, S_r, _ = refs["loop"]
    assert_close(f"{case_id} chunked fp32 y", y_r, y.detach().double(), rtol=1e-4, atol_rel=1e-4)
    assert_close(f"{case_id} chunked fp32 state", S_r, S.detach().double(), rtol=1e-4, atol_rel=1e-4)


def test_external_parameters_match_own():
    """parameters=False: a layer passes its own tensors per call (mixerc.nn does); same result."""
    own = mx.compile("mamba2", dims=dict(h=4, p=8, n=8, g=2), dtype=torch.float64)
    ext = mx.compile("mamba2", dims=dict(h=4, p=8, n=8, g=2), parameters=False)
    assert not list(ext.parameters())
    g = torch.Generator().manual_seed(0)
    x, dt = torch.randn(2, 9, 4, 8, generator=g, dtype=torch.float64), torch.randn(2, 9, 4, generator=g, dtype=torch.float64)
    B, C = (torch.randn(2, 9, 2, 8, generator=g, dtype=torch.float64) for _ in range(2))
    p = dict(own.named_parameters())
    torch.testing.assert_close(ext(x=x, dt=dt, B=B, C=C, params=p), own(x=x, dt=dt, B=B, C=C), rtol=0, atol=0)
    s = own.init_state(2)
    y1, _ = own.step(s, x=x[:, 0], dt=dt[:, 0], B=B[:, 0], C=C[:, 0])
    y2, _ = ext.step(s, x=x[:, 0], dt=dt[:, 0], B=B[:, 0], C=C[:, 0], params=p)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    with pytest.raises(mx.InputError, match="parameters=False; pass params="):
        ext(x=x, dt=dt, B=B, C=C)
    with pytest.raises(mx.InputError, match="exactly the spec's parameters"):
        ext(x=x, dt=dt, B=B, C=C, params={"A_log": p["A_log"]})
    with pytest.raises(mx.ShapeError, match=r"params\['D'\]: expected shape \(4,\)"):
        ext(x=x, dt=dt, B=B, C=C, params={**p, "D": torch.ones(3)})
