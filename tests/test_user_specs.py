"""Specs written here (not built in) compile and pass the same checks as the built-ins: every
lowering against the token loop and the product-built matrix of tests/ref, forward, state, gradients
of inputs, parameters and the initial state, seq_idx and step."""

import pytest
import torch

import mixerc as mx
from conftest import assert_close
from ref import math_ref as R

F64 = torch.float64
LOWERINGS = ["reference", "recurrent", "chunked"]


@mx.spec
def gated_ssd(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n"),
              A: mx.Param("h", init=mx.init.log_uniform(1, 16)), D: mx.Param("h", init=1.0)):
    delta = mx.sigmoid(dt) * 0.5 + mx.clamp(dt, min=0.0, max=1.0)
    M = mx.semiseparable(C=C, B=B, log_decay=-mx.exp(A) * delta)
    return M @ (x * delta) + D * x


def gated_ssd_ref(ref, x, dt, B, C, A, D, initial_state=None, seq_idx=None):
    delta = torch.sigmoid(dt) * 0.5 + dt.clamp(0.0, 1.0)
    y, S = ref(x * delta[..., None], B, C, -torch.exp(A) * delta, initial_state, seq_idx)
    return y + D[:, None] * x, S


@mx.spec
def linear_attention(q: mx.Seq("b l h n"), k: mx.Seq("b l h n"), v: mx.Seq("b l h p")):
    return mx.semiseparable(C=q, B=k) @ v


def linear_attention_ref(ref, q, k, v, initial_state=None, seq_idx=None):
    return ref(v, k, q, None, initial_state, seq_idx)


@mx.spec
def diag_decay(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n"),
               A_log: mx.Param("h n", init=mx.init.s4d_real())):
    delta = mx.softplus(dt)
    M = mx.semiseparable(C=C, B=B, log_decay=-mx.exp(A_log) * delta)
    return mx.silu(M @ x)


def diag_decay_ref(ref, x, dt, B, C, A_log, initial_state=None, seq_idx=None):
    h = x.shape[2]
    la = -torch.exp(A_log) * R.softplus(dt)[..., None]
    y, S = ref(x, R.heads_from_groups(B, h), R.heads_from_groups(C, h), la, initial_state, seq_idx)
    return torch.nn.functional.silu(y), S


CASES = {
    "gated_ssd": (gated_ssd, gated_ssd_ref, dict(h=3, p=2, n=4)),
    "linear_attention": (linear_attention, linear_attention_ref, dict(h=2, p=3, n=4)),
    "diag_decay": (diag_decay, diag_decay_ref, dict(h=4, g=2, p=2, n=3)),
}


def random_inputs(m, b, l, gen):
    out = {}
    for name in m.ir.inputs:
        shape = [b if d == "b" else l if d == "l" else m.sizes[d] for d in m.ir.node(name).dims]
        out[name] = torch.randn(*shape, generator=gen, dtype=F64)
    return out


@pytest.mark.parametrize("low", LOWERINGS)
@pytest.mark.parametrize("l", [1, 40])
@pytest.mark.parametrize("case", list(CASES))
def test_user_spec_against_references(case, low, l, gen):
    spec, ref_fn, dims = CASES[case]
    torch.manual_seed(0)
    m = mx.compile(spec, dims=dims, backend=low, dtype=F64, chunk_size=16)
    inputs = random_inputs(m, 2, l, gen)
    s0 = torch.randn(m.state_shapes(2)[0], generator=gen, dtype=F64)
    seq_idx = torch.zeros(2, l, dtype=torch.long)
    seq_idx[0, l // 2:] = 1
    params = {k: v.detach() for k, v in m.named_parameters()}

    def grads(fn):
        leaves = {k: v.clone().requires_grad_(True) for k, v in {**inputs, **params}.items()}
        s = s0.clone().requires_grad_(True)
        y, S = fn({k: leaves[k] for k in inputs}, {k: leaves[k] for k in params}, s)
        loss = (y * torch.sin(torch.arange(y.numel(), dtype=F64)).view_as(y)).sum() + S.square().sum()
        gs = torch.autograd.grad(loss, list(leaves.values()) + [s])
        return y.detach(), S.detach(), dict(zip(list(leaves) + ["initial_state"], gs))

    y, S, g = grads(lambda ins, ps, s: torch.func.functional_call(
        m, ps, kwargs=dict(**ins, initial_state=s, return_final_state=True, seq_idx=seq_idx)))
    for name, ref in (("loop", R.ss_loop), ("matrix", R.ss_matrix)):
        y_r, S_r, g_r = grads(lambda ins, ps, s: ref_fn(ref, **ins, **ps, initial_state=s, seq_idx=seq_idx))
        assert_close(f"y vs {name}", y, y_r, 1e-10)
        assert_close(f"state vs {name}", S, S_r, 1e-10)
        for k in g_r:
            assert_close(f"d/d{k} vs {name}", g[k], g_r[k], 1e-10)


@pytest.mark.parametrize("case", list(CASES))
def test_user_spec_step(case, gen):
    spec, _, dims = CASES[case]
    m = mx.compile(spec, dims=dims, dtype=F64)
    inputs = random_inputs(m, 1, 11, gen)
    y = m(**inputs)
    state, ys = m.init_state(1), []
    for t in range(11):
        y_t, state = m.step(state, **{k: v[:, t] for k, v in inputs.items()})
        ys.append(y_t)
    assert_close("step", torch.stack(ys, 1), y, 1e-12)


def test_user_spec_from_a_file_through_the_cli_checker(tmp_path):
    from mixerc.check import run_check

    path = tmp_path / "my_mixer.py"
    path.write_text(
        "import mixerc as mx\n\n"
        "@mx.spec\n"
        "def my_mixer(x: mx.Seq('b l h p'), dt: mx.Seq('b l h'), B: mx.Seq('b l h n'), C: mx.Seq('b l h n'),\n"
        "             A: mx.Param('h', init=mx.init.log_uniform(1, 16))):\n"
        "    delta = mx.softplus(dt)\n"
        "    return mx.semiseparable(C=C, B=B, log_decay=-mx.exp(A) * delta) @ (x * delta)\n")
    spec = mx.load_spec(str(path))
    assert spec.name == "my_mixer"
    results = run_check(spec, dict(h=2, p=3, n=4), b=2, l=29)
    assert [r.lowering for r in results] == LOWERINGS
    assert all(r.ok for r in results), results
