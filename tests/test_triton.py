"""The interpreter lane of the triton backend: the generated Triton kernels, run on CPU tensors in
Triton's interpreter (``TRITON_INTERPRET=1``, set by tests/conftest.py when no GPU is present), against
the independent references of tests/ref/ssm.py (``mamba2_loop``/``mamba2_dense``, ``mamba_loop``/
``mamba_dense``) and, for user-written specs, against the ``reference`` backend of the same spec.

Conventions follow tests/test_lowerings.py: float64 with tight tolerances (the kernels only reorder
sums), a fixed non-uniform loss over y and the final state, and every gradient compared (inputs,
initial state, parameters). Shapes are tiny (the interpreter runs every program instance in Python):
b = 2, l in {1, 16, 37, 53} (l = 16 is exactly one chunk, the others are not multiples of it),
chunk_size = 16 so that several chunks and the state pass between them run.

The built-in specs are listed in ``SPECS``.

Without the interpreter and without a GPU the lane is skipped (the CPU tensors could not run).
"""

from __future__ import annotations

import functools
import re
import time

import pytest
import torch
import torch.nn.functional as F

import mixerc as mx
from mixerc.settings import settings
from ref import assert_close, compare_with_refs, step_through
from ref import ssm as R
from ref.models import Model, make_params, make_state, segment_ids

F64 = torch.float64
CHUNK = 16
RTOL = 1e-9  # fp64: the kernels reorder sums (chunks, cumulative sums), nothing more
INTERPRET = bool(settings().triton_interpret)
DEVICE = "cpu" if INTERPRET else ("cuda" if torch.cuda.is_available() else None)

pytestmark = pytest.mark.skipif(DEVICE is None, reason="no CUDA GPU and TRITON_INTERPRET is not 1 "
                                                       "(tests/conftest.py sets it when no GPU is present)")


# ==============================================================================================
# the specs under test
# ==============================================================================================
MAMBA2 = Model("mamba2", "mamba2", (("h", 4), ("p", 16), ("n", 16), ("g", 2)))
MAMBA2_G1 = Model("mamba2-g1", "mamba2", (("h", 4), ("p", 16), ("n", 16), ("g", 1)))
MAMBA = Model("mamba", "mamba", (("d", 8), ("n", 8)))
MODELS = {m.id: m for m in (MAMBA2, MAMBA2_G1, MAMBA)}

# the built-in specs every test below runs over: add a spec here to cover it
SPECS = [pytest.param("mamba2", id="mamba2"), pytest.param("mamba", id="mamba")]
PARAM_NAMES = ("A_log", "dt_bias", "D")
INPUT_NAMES = ("x", "dt", "B", "C")


def make_inputs(model: Model, b: int, l: int, seed: int, params=None, regime: str = "normal"):
    """x, dt, B, C. ``regime`` "mixed": dt + dt_bias = ±12 at random per position and channel (products
    of near-1 and near-0 decay factors)."""
    gen = torch.Generator().manual_seed(seed)
    d = model.dims_dict
    if model.spec == "mamba2":
        xs, dts, bs = (b, l, d["h"], d["p"]), (b, l, d["h"]), (b, l, d["g"], d["n"])
    else:
        xs, dts, bs = (b, l, d["d"]), (b, l, d["d"]), (b, l, d["n"])
    x = torch.randn(*xs, generator=gen, dtype=F64)
    dt = torch.randn(*dts, generator=gen, dtype=F64)
    if regime == "mixed":
        sign = torch.randint(0, 2, dts, generator=gen).to(F64) * 2 - 1
        dt = 12.0 * sign + 0.3 * dt - params["dt_bias"]
    B = torch.randn(*bs, generator=gen, dtype=F64)
    C = torch.randn(*bs, generator=gen, dtype=F64)
    return {"x": x, "dt": dt, "B": B, "C": C}


def to_dev(tensors: dict, dtype=None):
    return {k: v.to(device=DEVICE, dtype=dtype or v.dtype) for k, v in tensors.items()}


def compile_triton(spec, dims: dict, params=None, dtype=F64, chunk_size=CHUNK):
    m = mx.compile(spec, dims=dims, backend="triton", dtype=dtype, chunk_size=chunk_size).to(DEVICE)
    if params:
        m.load_state_dict({k: v.to(dtype) for k, v in params.items()})
    return m


def compile_model(model: Model, params, dtype=F64):
    return compile_triton(mx.load_spec(model.spec), model.dims_dict, params, dtype)


def _weights(shape, seed):
    """Fixed, non-uniform loss weights so that every output element matters to the gradient."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=F64)


def _loss(y, S):
    return (y * _weights(y.shape, 1).to(y)).sum() + (S * _weights(S.shape, 2).to(S)).sum()


def run_module(m, inputs, S0, seq_idx):
    """Forward + backward of a compiled module: y, final state, and the gradient of every input,
    of the initial state and of every parameter (all back on the CPU)."""
    ins = {k: v.to(DEVICE).clone().requires_grad_() for k, v in inputs.items()}
    s0 = None if S0 is None else S0.to(DEVICE).clone().requires_grad_()
    for prm in m.parameters():
        prm.grad = None
    y, S = m(**ins, initial_state=s0, return_final_state=True,
             seq_idx=None if seq_idx is None else seq_idx.to(DEVICE))
    _loss(y, S).backward()
    grads = {k: v.grad for k, v in ins.items()}
    if s0 is not None:
        grads["initial_state"] = s0.grad
    grads.update({k: p.grad for k, p in m.named_parameters()})
    cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
    return cpu(y), cpu(S), {k: cpu(v) for k, v in grads.items()}


def run_reference(fn, params, inputs, S0, seq_idx):
    ins = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    prm = {k: v.clone().requires_grad_() for k, v in params.items()}
    s0 = None if S0 is None else S0.clone().requires_grad_()
    y, S = fn(ins["x"], ins["dt"], ins["B"], ins["C"], prm["A_log"], prm["dt_bias"], prm["D"],
              initial_state=s0, seq_idx=seq_idx)
    _loss(y, S).backward()
    grads = {k: v.grad for k, v in ins.items()}
    if s0 is not None:
        grads["initial_state"] = s0.grad
    grads.update({k: v.grad for k, v in prm.items()})
    return y.detach(), S.detach(), grads


def compare(what, refs: dict, y, S, grads, *, rtol=RTOL, globally_scaled=()):
    compare_with_refs(what, refs, y, S, grads, rtol=rtol, globally_scaled=globally_scaled)


# ==============================================================================================
# packed sequences: segments of length 1, reused ids, boundaries on chunk edges (Q = 16)
# ==============================================================================================
SEQ_PATTERNS = {
    # row 0: length-1 segments first, on the chunk edges 16 and 32, and last; boundaries at
    # 1, 16, 17, 32, 33, 49, 52. Row 1: one segment with id 7 (the initial state reaches the end).
    "len1-segments": lambda: torch.stack([segment_ids([1, 15, 1, 15, 1, 16, 3, 1]),
                                          torch.full((53,), 7, dtype=torch.int32)]),
    # ids 0, 1, 0, 1, 0 (a repeated id after another one is a new segment); row 1 starts at id 5
    "reused-ids": lambda: torch.stack([
        torch.tensor([0] * 10 + [1] * 6 + [0] * 1 + [1] * 20 + [0] * 16, dtype=torch.int32),
        segment_ids([16, 16, 16, 5], first_id=5)]),  # every boundary on a chunk edge
}


@functools.lru_cache(maxsize=None)
def _case(model_id, b, l, seed, with_init, seq_key=None, regime="normal", A_max=None):
    """Inputs, parameters and both references for one case, computed once."""
    model = MODELS[model_id]
    params = make_params(model, seed, A_max)
    inputs = make_inputs(model, b, l, seed, params, regime)
    S0 = make_state(model, b, seed) if with_init else None
    seq_idx = None if seq_key is None else SEQ_PATTERNS[seq_key]()
    assert seq_idx is None or tuple(seq_idx.shape) == (b, l)
    refs = {name: run_reference(fn, params, inputs, S0, seq_idx) for name, fn in model.ref_fns().items()}
    return model, params, inputs, S0, seq_idx, refs


def check(model_id, *, b=2, l=53, seed=0, with_init=True, seq_key=None, regime="normal", A_max=None,
          globally_scaled=()):
    model, params, inputs, S0, seq_idx, refs = _case(model_id, b, l, seed, with_init, seq_key, regime, A_max)
    m = compile_model(model, params)
    y, S, grads = run_module(m, inputs, S0, seq_idx)
    assert y.dtype == F64 and S.dtype == F64
    compare(f"triton {model_id} l={l}", refs, y, S, grads, globally_scaled=globally_scaled)


# ==============================================================================================
# forward, final state and every gradient
# ==============================================================================================
@pytest.mark.parametrize("l", [1, 16, 37, 53], ids=lambda l: f"l{l}")
@pytest.mark.parametrize("spec", SPECS)
def test_forward_state_and_gradients(spec, l):
    """With an initial state: y, the final state and the gradients of x, dt, B, C, the initial state,
    A_log, dt_bias and D against both references."""
    check(spec, l=l, seed=l)


@pytest.mark.parametrize("spec", SPECS)
def test_without_initial_state(spec):
    check(spec, l=37, seed=3, with_init=False)


@pytest.mark.parametrize("spec", SPECS)
def test_gradients_of_y_only(spec):
    """A loss over y alone (no gradient reaches the final state: the backward's no-dfinal path), from
    an initial state: every gradient against the loop reference."""
    model, params, inputs, S0, _, _ = _case(spec, 2, 20, 13, True)
    m = compile_model(model, params)
    ins = {k: v.to(DEVICE).clone().requires_grad_() for k, v in inputs.items()}
    s0 = S0.to(DEVICE).clone().requires_grad_()
    y = m(**ins, initial_state=s0)
    (y * _weights(y.shape, 1).to(y)).sum().backward()
    r_ins = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    r_prm = {k: v.clone().requires_grad_() for k, v in params.items()}
    r_s0 = S0.clone().requires_grad_()
    y_r, _ = model.ref_fns()["loop"](*(r_ins[k] for k in INPUT_NAMES), *(r_prm[k] for k in PARAM_NAMES),
                                     initial_state=r_s0)
    (y_r * _weights(y_r.shape, 1)).sum().backward()
    assert_close("y", y_r.detach(), y.detach().cpu())
    for k in INPUT_NAMES:
        assert_close(f"y-only d/d{k}", r_ins[k].grad, ins[k].grad.cpu())
    assert_close("y-only d/d initial_state", r_s0.grad, s0.grad.cpu())
    for k, prm in m.named_parameters():
        assert_close(f"y-only d/d{k}", r_prm[k].grad, prm.grad.cpu())


def test_one_group_for_all_heads():
    """g = 1 < h = 4 (the default mamba2 dims above have g = 2 < h = 4)."""
    check("mamba2-g1", l=37, seed=5)


@pytest.mark.parametrize("spec", SPECS)
def test_mixed_extreme_decays(spec):
    """dt + dt_bias = ±12 at random (Δ A up to 192: decays underflow next to decays of ~1); d/dA_log
    judged against the largest gradient of the case (see EXTREME_GLOBALLY_SCALED in test_lowerings.py)."""
    check(spec, l=53, seed=31, regime="mixed", A_max=16.0, globally_scaled=("A_log",))


@pytest.mark.parametrize("pattern", list(SEQ_PATTERNS))
@pytest.mark.parametrize("spec", SPECS)
def test_seq_idx(spec, pattern):
    check(spec, l=53, seed=21, seq_key=pattern)


@pytest.mark.parametrize("spec", SPECS)
def test_plain_forward_returns_y_only(spec):
    model, params, inputs, _, _, refs = _case(spec, 2, 37, 3, False)
    m = compile_model(model, params)
    y = m(**to_dev(inputs))
    assert isinstance(y, torch.Tensor) and y.dtype == F64
    assert_close("triton y", refs["loop"][0], y.detach().cpu())


# ==============================================================================================
# step (decoding)
# ==============================================================================================
@pytest.mark.parametrize("spec", SPECS)
def test_step_equals_forward(spec):
    """Decoding one position at a time from an initial state equals the full forward and the
    reference; without gradients (decoding) the triton step updates the state in place and returns
    that same tensor."""
    model = MODELS[spec]
    l = 20
    params = make_params(model, 8)
    inputs = to_dev(make_inputs(model, 2, l, 8))
    S0 = make_state(model, 2, 8).to(DEVICE)
    m = compile_model(model, params)
    y, S = m(**inputs, initial_state=S0, return_final_state=True)
    cpu_in = {k: v.cpu() for k, v in inputs.items()}
    y_ref, S_ref = model.ref_fns()["loop"](*(cpu_in[k] for k in INPUT_NAMES),
                                           *(params[k] for k in PARAM_NAMES), initial_state=S0.cpu())

    with torch.no_grad():  # decoding: the in-place kernel
        state = S0.clone()
        y0, returned = m.step(state, **{k: v[:, 0] for k, v in inputs.items()})
        same = returned is state
        assert same, ("triton step must return the very state tensor it updated in place; it returned "
                      + ("a view of it" if returned.data_ptr() == state.data_ptr() else "another tensor"))
        assert not torch.equal(state, S0), "triton step did not update the state in place"
        y_rest, final = step_through(m, {k: v[:, 1:] for k, v in inputs.items()}, state)
        assert final is state, "step_through: the state returned by the last step is not the one passed in"
    y_steps = torch.cat([y0[:, None], y_rest], 1)
    assert tuple(y_steps.shape) == tuple(y.shape)
    assert_close("step outputs vs forward", y.detach().cpu(), y_steps.cpu())
    assert_close("step state vs forward", S.detach().cpu(), final.cpu())
    assert_close("step outputs vs reference", y_ref, y_steps.cpu())
    assert_close("step state vs reference", S_ref, final.cpu())

    # from init_state (zeros): equals the forward without an initial state
    y0f, S0f = m(**inputs, return_final_state=True)
    y_z, S_z = step_through(m, inputs, m.init_state(2))
    assert_close("step from init_state", y0f.detach().cpu(), y_z.cpu())
    assert_close("step state from init_state", S0f.detach().cpu(), S_z.cpu())


def test_step_with_inputs_that_require_grad():
    """The torch lowerings' step is differentiable (test_lowerings checks d/d initial_state through
    it). With gradients needed, the triton backend's step takes the differentiable token step (the
    in-place kernel has no backward): gradients reach the inputs and equal the recurrent ones."""
    model, params, inputs, S0, _, _ = _case("mamba2", 2, 3, 5, True)
    m = compile_model(model, params)
    rec = mx.compile("mamba2", dims=model.dims_dict, backend="recurrent", dtype=F64)
    rec.load_state_dict(m.state_dict())
    one = {k: v[:, 0] for k, v in inputs.items()}
    x = one["x"].to(DEVICE).clone().requires_grad_()
    try:
        y_t, _ = m.step(S0.to(DEVICE).clone(), **{**to_dev(one), "x": x})
    except mx.MixercError:
        return  # refusing is fine
    (y_t * _weights(y_t.shape, 3).to(y_t)).sum().backward()
    x_r = one["x"].clone().requires_grad_()
    y_r, _ = rec.step(S0.clone(), **{**one, "x": x_r})
    (y_r * _weights(y_r.shape, 3)).sum().backward()
    assert x.grad is not None, "backward through the triton step reached no input"
    assert_close("step d/dx", x_r.grad, x.grad.cpu())


@pytest.mark.parametrize("spec", SPECS)
def test_prefill_then_step(spec):
    """forward over a prefix, then step from its final state: the last output and the state equal
    the forward over the whole sequence (l = 37: the prefix 36 is not a multiple of the chunk)."""
    model = MODELS[spec]
    params = make_params(model, 9)
    inputs = to_dev(make_inputs(model, 2, 37, 9))
    S0 = make_state(model, 2, 9).to(DEVICE)
    m = compile_model(model, params)
    y, S = m(**inputs, initial_state=S0, return_final_state=True)
    _, state = m(**{k: v[:, :36] for k, v in inputs.items()}, initial_state=S0, return_final_state=True)
    y_t, state = m.step(state, **{k: v[:, 36] for k, v in inputs.items()})
    assert_close("prefill + step y", y[:, 36].detach().cpu(), y_t.cpu())
    assert_close("prefill + step state", S.detach().cpu(), state.cpu())


# ==============================================================================================
# float32 and float16
# ==============================================================================================
@pytest.mark.parametrize("spec", SPECS)
def test_float32(spec):
    """fp32 inputs and parameters against the fp64 references: y, the final state and every gradient
    within 1e-4 of each tensor's size (fp32 unit roundoff ~6e-8, sums over <= 53 positions)."""
    model, params, inputs, S0, _, refs = _case(spec, 2, 53, 41, True)
    m = compile_model(model, params, dtype=torch.float32)
    y, S, grads = run_module(m, {k: v.float() for k, v in inputs.items()}, S0.float(), None)
    assert y.dtype == torch.float32
    y_r, S_r, g_r = refs["loop"]
    tol = dict(rtol=1e-4, atol_rel=1e-4)
    assert_close("fp32 y", y_r, y.double(), **tol)
    assert_close("fp32 state", S_r, S.double(), **tol)
    for k in g_r:
        assert_close(f"fp32 d/d{k}", g_r[k], grads[k].double(), **tol)


# how much larger than the reference lowering's error the kernels' may be; measured on the CPU
# interpreter (l = 53, three seeds): mamba2 1.7x to 2.4x (fp16 tl.dot operands), mamba 1.0x
FP16_FACTOR = 4.0


@pytest.mark.parametrize("spec", SPECS)
def test_float16_inputs(spec):
    """fp16 inputs with fp32 parameters: y comes back in fp16, and its error against an fp64 golden
    (computed from the same fp16-rounded inputs) is within FP16_FACTOR x the error of the ``reference``
    backend in the same precision. The kernels feed fp16 operands to tl.dot (as mamba-ssm does), the
    reference computes in fp32; both round y to fp16."""
    model, params, inputs, _, _, _ = _case(spec, 2, 53, 43, False)
    low = {k: v.half() for k, v in inputs.items()}
    golden, _ = model.ref_fns()["loop"](**{k: v.double() for k, v in low.items()},
                                        **{k: v.float().double() for k, v in params.items()})
    errs = {}
    for backend in ("triton", "reference"):
        m = mx.compile(mx.load_spec(model.spec), dims=model.dims_dict, backend=backend, dtype=torch.float32,
                       chunk_size=CHUNK)
        m.load_state_dict({k: v.float() for k, v in params.items()})
        m = m.to(DEVICE)
        with torch.no_grad():
            y = m(**to_dev(low))
        assert y.dtype == torch.float16
        assert torch.isfinite(y).all()
        errs[backend] = float((y.cpu().double() - golden).abs().max())
    assert errs["triton"] <= FP16_FACTOR * errs["reference"] + 1e-6, errs


# ==============================================================================================
# non-contiguous inputs (the kernels take strides)
# ==============================================================================================
def _strided(t: torch.Tensor) -> torch.Tensor:
    """The same values as ``t`` (b, l, ...) but laid out (l, b, ...) in memory and, when the last dim
    has more than one element, every second element of a twice-as-wide buffer."""
    wide = t.shape[-1] > 1 and t.dim() >= 3
    buf = torch.zeros(t.shape[1], t.shape[0], *t.shape[2:-1], t.shape[-1] * (2 if wide else 1),
                      dtype=t.dtype, device=t.device)
    v = buf.transpose(0, 1)[..., ::2] if wide else buf.transpose(0, 1)
    v.copy_(t)
    assert torch.equal(v, t) and not v.is_contiguous()
    return v


@pytest.mark.parametrize("spec", SPECS)
def test_non_contiguous_inputs(spec):
    """x made by .transpose of a contiguous (l, b, ...) tensor, and every other input strided too
    (and every second element of the last dim): same y, state and gradients as the references."""
    model, params, inputs, S0, _, refs = _case(spec, 2, 37, 12, True)
    ins = {k: _strided(v.to(DEVICE)) for k, v in inputs.items()}
    ins["x"] = inputs["x"].transpose(0, 1).contiguous().to(DEVICE).transpose(0, 1)
    assert not any(v.is_contiguous() for v in ins.values())
    ins = {k: v.requires_grad_() for k, v in ins.items()}
    m = compile_model(model, params)
    s0 = S0.to(DEVICE).clone().requires_grad_()
    y, S = m(**ins, initial_state=s0, return_final_state=True)
    _loss(y, S).backward()
    grads = {k: v.grad.cpu() for k, v in ins.items()}
    grads["initial_state"] = s0.grad.cpu()
    grads.update({k: p.grad.cpu() for k, p in m.named_parameters()})
    compare("triton non-contiguous", refs, y.detach().cpu(), S.detach().cpu(), grads)


# ==============================================================================================
# user-written specs: other prologues and epilogues, no decay, a log_decay given as an input
# ==============================================================================================
@mx.spec
def clamped(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n"),
            z: mx.Seq("b l h p"),
            A_log: mx.Param("h", init=mx.init.log_uniform(1, 16)),
            dt_bias: mx.Param("h", init=mx.init.inv_softplus_dt(1e-3, 1e-1)),
            D: mx.Param("h", init=1.0)):
    delta = mx.clamp(mx.softplus(dt + dt_bias), min=1e-3, max=0.5)
    M = mx.semiseparable(C=C, B=B, log_decay=-mx.exp(A_log) * delta)
    return (M @ (x * delta) + D * x) * mx.sigmoid(z)


@mx.spec
def nodecay(x: mx.Seq("b l h p"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n")):
    return mx.semiseparable(C=C, B=B) @ x


@mx.spec
def given_decay(x: mx.Seq("b l h p"), ld: mx.Seq("b l h"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n")):
    return mx.semiseparable(C=C, B=B, log_decay=ld) @ x


def ref_clamped(ins, prm, S0, seq_idx):
    x = ins["x"]
    delta = torch.clamp(R.softplus(ins["dt"] + prm["dt_bias"]), min=1e-3, max=0.5)
    y, S = R.semiseparable_loop(x * delta[..., None], ins["B"], ins["C"], -torch.exp(prm["A_log"]) * delta,
                                S0, seq_idx)
    return (y + prm["D"][:, None] * x) * torch.sigmoid(ins["z"]), S


def ref_nodecay(ins, prm, S0, seq_idx):
    return R.semiseparable_loop(ins["x"], ins["B"], ins["C"], None, S0, seq_idx)


def ref_given_decay(ins, prm, S0, seq_idx):
    return R.semiseparable_loop(ins["x"], ins["B"], ins["C"], ins["ld"], S0, seq_idx)


USER_DIMS = dict(h=4, p=16, n=16, g=2)
USER = {"clamped": (clamped, ref_clamped), "nodecay": (nodecay, ref_nodecay),
        "given_decay": (given_decay, ref_given_decay)}


def _user_inputs(m, b, l, seed):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, dims in m._input_dims.items():
        shape = [b if d == "b" else l if d == "l" else m.sizes[d] for d in dims]
        out[name] = torch.randn(*shape, generator=gen, dtype=F64)
    if "ld" in out:  # a log decay: negative, factors from exp(-1.5) to 1
        out["ld"] = -1.5 * torch.rand(out["ld"].shape, generator=gen, dtype=F64)
    if "B" in out and "ld" not in out and "dt" not in out:
        out["B"] = out["B"] * 0.3  # no decay: keep the running sums moderate
    return out


@pytest.mark.parametrize("with_seq", [False, True], ids=["one-seq", "seq_idx"])
@pytest.mark.parametrize("name", list(USER))
def test_user_spec(name, with_seq):
    """A user spec against the ``reference`` backend of the same spec (parameters copied through the
    state_dict) and against the independent loop reference with the spec's prologue in torch."""
    spec, ref_fn = USER[name]
    b, l = 2, 37
    ref_m = mx.compile(spec, dims=USER_DIMS, backend="reference", dtype=F64)
    m = compile_triton(spec, USER_DIMS)
    m.load_state_dict(ref_m.state_dict())
    inputs = _user_inputs(ref_m, b, l, seed=17)
    gen = torch.Generator().manual_seed(18)
    S0 = torch.randn(*ref_m.state_shapes(b)[0], generator=gen, dtype=F64)
    seq_idx = SEQ_PATTERNS["len1-segments"]()[:, :l] if with_seq else None
    y, S, grads = run_module(m, inputs, S0, seq_idx)
    refs = {"reference backend": run_module_cpu(ref_m, inputs, S0, seq_idx)}
    ins = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    prm = {k: p.detach().clone().requires_grad_() for k, p in ref_m.named_parameters()}
    s0 = S0.clone().requires_grad_()
    y_r, S_r = ref_fn(ins, prm, s0, seq_idx)
    _loss(y_r, S_r).backward()
    g_r = {k: v.grad for k, v in ins.items()}
    g_r["initial_state"] = s0.grad
    g_r.update({k: v.grad for k, v in prm.items()})
    refs["loop"] = (y_r.detach(), S_r.detach(), g_r)
    compare(f"triton {name}", refs, y, S, grads)
    if not with_seq:  # decoding the first positions from the initial state equals the forward
        short = {k: v[:, :9] for k, v in inputs.items()}
        y9, S9 = ref_m(**short, initial_state=S0, return_final_state=True)
        y_steps, state = step_through(m, to_dev(short), S0.to(DEVICE).clone())
        assert_close(f"triton {name} step outputs", y9.detach(), y_steps.cpu())
        assert_close(f"triton {name} step state", S9.detach(), state.cpu())


def run_module_cpu(m, inputs, S0, seq_idx):
    ins = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    s0 = S0.clone().requires_grad_()
    y, S = m(**ins, initial_state=s0, return_final_state=True, seq_idx=seq_idx)
    _loss(y, S).backward()
    grads = {k: v.grad for k, v in ins.items()}
    grads["initial_state"] = s0.grad
    grads.update({k: p.grad for k, p in m.named_parameters()})
    return y.detach(), S.detach(), grads


def _hooks(src: str, kind: str) -> list[str]:
    """The bodies of the ``-- hook: <kind>`` ... ``-- end hook`` blocks of a generated source."""
    return re.findall(rf"# -- hook: {kind}\b.*?\n(.*?)# -- end hook", src, flags=re.S)


def test_user_prologue_and_epilogue_are_in_the_kernels():
    """A different prologue and epilogue produce a different kernel source: the clamp is spliced into
    the prologue hooks and the sigmoid gate into the epilogue hooks (mamba2 has neither); the step of
    the user spec decodes correctly."""
    src_m2 = compile_triton(mx.load_spec("mamba2"), USER_DIMS).source("triton")
    m = compile_triton(clamped, USER_DIMS)
    src = m.source("triton")
    pro, pro_m2 = _hooks(src, "prologue"), _hooks(src_m2, "prologue")
    epi, epi_m2 = _hooks(src, "epilogue"), _hooks(src_m2, "epilogue")
    assert pro and pro_m2, "no prologue hook point in the generated sources"
    assert pro != pro_m2
    assert all("tl.minimum(tl.maximum(" in h and "0.001" in h and "0.5" in h for h in pro), pro[0]
    assert not any("tl.minimum(" in h for h in pro_m2)
    assert epi and all("sigmoid" in h for h in epi), epi
    assert not any("sigmoid" in h for h in epi_m2)
    ref_m = mx.compile(clamped, dims=USER_DIMS, backend="reference", dtype=F64)
    m.load_state_dict(ref_m.state_dict())
    inputs = _user_inputs(ref_m, 2, 9, seed=19)
    y = ref_m(**inputs)
    y_steps, _ = step_through(m, to_dev(inputs), m.init_state(2))
    assert_close("clamped step vs reference forward", y.detach(), y_steps.cpu())


# ==============================================================================================
# torch.compile
# ==============================================================================================
class Block(torch.nn.Module):
    """A small layer around a compiled triton mixer: projections in, the mixer, a projection out."""

    def __init__(self, mixer, h, p):
        super().__init__()
        self.mixer = mixer
        self.inp = torch.nn.Linear(p, p, dtype=F64)
        self.out = torch.nn.Linear(p, p, dtype=F64)

    def forward(self, x, dt, B, C, S0):
        y, S = self.mixer(x=self.inp(x), dt=dt, B=B, C=C, initial_state=S0, return_final_state=True)
        return self.out(F.silu(y)), S


def _compile_roundtrip(backend):
    torch.manual_seed(0)
    model, params, inputs, S0, _, _ = _case("mamba2", 2, 37, 23, True)
    block = Block(compile_model(model, params), 4, 16).to(DEVICE)
    leaves = [t.to(DEVICE).clone().requires_grad_() for t in (*inputs.values(), S0)]
    outs, grads = [], []
    torch._dynamo.reset()
    for fn in (block, torch.compile(block, fullgraph=True, backend=backend)):
        block.zero_grad()
        for t in leaves:
            t.grad = None
        y, S = fn(*leaves)
        _loss(y, S).backward()
        outs.append((y.detach().cpu(), S.detach().cpu()))
        grads.append([t.grad.cpu() for t in leaves] + [p.grad.cpu() for p in block.parameters()])
    assert_close(f"torch.compile({backend}) y", outs[0][0], outs[1][0], rtol=1e-12)
    assert_close(f"torch.compile({backend}) state", outs[0][1], outs[1][1], rtol=1e-12)
    names = list(inputs) + ["initial_state"] + [n for n, _ in block.named_parameters()]
    assert len(names) == len(grads[0])
    for n, g0, g1 in zip(names, *grads):
        assert_close(f"torch.compile({backend}) d/d{n}", g0, g1, rtol=1e-12)


@pytest.mark.slow  # ~20 s of tracing and interpreted kernels
def test_torch_compile_aot_eager():
    """torch.compile(fullgraph=True) traces through the mixer's custom ops (fake implementations):
    forward and backward equal eager."""
    _compile_roundtrip("aot_eager")


@pytest.mark.slow  # ~110 s of inductor compiles in the interpreter lane: `pytest -m slow`
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_compile_inductor():
    """The default (inductor) backend, once: on a 2-core CPU it takes ~10 s (the Linear/silu around
    the mixer go through inductor's C++ codegen; the mixer's ops stay opaque custom ops)."""
    t0 = time.time()
    _compile_roundtrip("inductor")
    assert time.time() - t0 < 300


# ==============================================================================================
# errors
# ==============================================================================================
def _inputs_m2(b=2, l=5):
    return to_dev(make_inputs(MAMBA2, b, l, 0))


def test_cpu_tensors_without_the_interpreter(monkeypatch):
    """CPU tensors with backend='triton' outside the interpreter: a BackendError that points at the
    chunked backend (the check reads TRITON_INTERPRET at call time)."""
    m = mx.compile("mamba2", dims=MAMBA2.dims_dict, backend="triton", dtype=F64, chunk_size=CHUNK)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = make_inputs(MAMBA2, 2, 5, 0)
    for call in (lambda: m(**cpu), lambda: m.step(m.init_state(2), **{k: v[:, 0] for k, v in cpu.items()})):
        with pytest.raises(mx.BackendError) as info:
            call()
        assert type(info.value) is mx.BackendError
        msg = str(info.value)
        assert "chunked" in msg and "cpu" in msg and "TRITON_INTERPRET" in msg, msg


def test_chunk_size_not_a_power_of_two():
    with pytest.raises(mx.BackendError) as info:
        mx.compile("mamba2", dims=MAMBA2.dims_dict, backend="triton", chunk_size=24)
    assert "chunk_size" in str(info.value) and "24" in str(info.value), str(info.value)


def test_state_dim_too_large():
    with pytest.raises(mx.BackendError) as info:
        mx.compile("mamba2", dims=dict(h=2, p=16, n=512, g=1), backend="triton", chunk_size=CHUNK)
    msg = str(info.value)
    assert "chunked" in msg and "512" in msg, msg
