"""Specs whose dims are not in the canonical (b, l, head, value) order, lack a head or a value dim,
or use a data-independent decay: every lowering against the matrix written out by hand."""

import pytest
import torch

import mixerc as mx

LOWERINGS = ["reference", "recurrent", "chunked"]


@mx.spec
def permuted(x: mx.Seq("b l p h"), B: mx.Seq("b l n"), C: mx.Seq("b l n"),
             A: mx.Param("h", init=mx.init.uniform(0.1, 1.0))):
    return mx.semiseparable(C=C, B=B, log_decay=-A) @ x


@mx.spec
def shared_decay(x: mx.Seq("b l d"), B: mx.Seq("b l n"), C: mx.Seq("b l n"), a: mx.Seq("b l")):
    return mx.semiseparable(C=C, B=B, log_decay=-mx.softplus(a)) @ x


@mx.spec
def grouped_diag(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n"),
                 A_log: mx.Param("h n", init=mx.init.s4d_real())):
    Bh = mx.groups_to_heads(B) * mx.sigmoid(dt)
    M = mx.semiseparable(C=mx.groups_to_heads(C), B=Bh, log_decay=-mx.exp(A_log) * mx.softplus(dt))
    return M @ x


def _compile(spec, dims, low, chunk=8):
    torch.manual_seed(0)
    return mx.compile(spec, dims=dims, backend=low, dtype=torch.float64, chunk_size=chunk)


def _lower(l):
    return torch.ones(l, l, dtype=torch.bool).tril()


@pytest.mark.parametrize("low", LOWERINGS)
@pytest.mark.parametrize("l", [1, 16, 21])
def test_permuted_value_dims_and_param_decay(low, l):
    m = _compile(permuted, dict(h=3, p=2, n=4), low)
    g = torch.Generator().manual_seed(l)
    x = torch.randn(2, l, 2, 3, generator=g, dtype=torch.float64)
    B, C = (torch.randn(2, l, 4, generator=g, dtype=torch.float64) for _ in range(2))
    y = m(x=x, B=B, C=C)
    A = m.A.detach()
    i = torch.arange(l)
    decay = torch.exp(-A[:, None, None] * (i[:, None] - i[None, :]).clamp_min(0))  # (h, i, j)
    M = torch.einsum("bin,bjn->bij", C, B)[:, None] * decay * _lower(l)  # (b, h, i, j)
    torch.testing.assert_close(y, torch.einsum("bhij,bjph->biph", M, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("low", LOWERINGS)
def test_decay_without_head_dim(low):
    m = _compile(shared_decay, dict(d=3, n=4), low)
    g = torch.Generator().manual_seed(0)
    l = 19
    x = torch.randn(2, l, 3, generator=g, dtype=torch.float64)
    B, C = (torch.randn(2, l, 4, generator=g, dtype=torch.float64) for _ in range(2))
    a = torch.randn(2, l, generator=g, dtype=torch.float64)
    y = m(x=x, B=B, C=C, a=a)
    la = -torch.nn.functional.softplus(a)
    M = torch.zeros(2, l, l, dtype=torch.float64)
    for i in range(l):
        for j in range(i + 1):
            M[:, i, j] = (C[:, i] * B[:, j]).sum(-1) * torch.exp(la[:, j + 1:i + 1].sum(-1))
    torch.testing.assert_close(y, torch.einsum("bij,bjd->bid", M, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("low", LOWERINGS)
def test_groups_to_heads_and_diagonal_decay(low):
    m = _compile(grouped_diag, dict(h=4, g=2, p=2, n=3), low)
    g = torch.Generator().manual_seed(1)
    l = 13
    x = torch.randn(1, l, 4, 2, generator=g, dtype=torch.float64)
    dt = torch.randn(1, l, 4, generator=g, dtype=torch.float64)
    B, C = (torch.randn(1, l, 2, 3, generator=g, dtype=torch.float64) for _ in range(2))
    y = m(x=x, dt=dt, B=B, C=C)
    A = -torch.exp(m.A_log.detach())  # (h, n)
    la = A * torch.nn.functional.softplus(dt)[..., None]  # (1, l, h, n)
    expected = torch.zeros_like(x)
    for h in range(4):
        grp = h // 2
        for i in range(l):
            for j in range(i + 1):
                w = (C[0, i, grp] * B[0, j, grp] * torch.sigmoid(dt[0, j, h])
                     * torch.exp(la[0, j + 1:i + 1, h].sum(0))).sum()
                expected[0, i, h] += w * x[0, j, h]
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)
