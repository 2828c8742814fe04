"""Mamba (S6, the selective scan): a diagonal-decay semiseparable mixer per channel.

    Δ_t = softplus(dt_t + dt_bias),   A = -exp(A_log)            (A: d × n, one decay per state)
    S_t = exp(Δ_t A) ⊙ S_{t-1} + Δ_t x_t B_t,    y_t = S_t C_t + D x_t      S: (b, d, n)

Matrix form per channel d: M_d[i, j] = Σ_n C_i[n] exp(A[d, n] Σ_{k=j+1..i} Δ_k) Δ_j B_j[n].
Equals mamba-ssm's ``selective_scan_ref(x, dt, A, B, C, D, delta_bias=dt_bias,
delta_softplus=True)`` in the (b, l, ...) layout.

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023 (arXiv:2312.00752).
"""

import mixerc as mx


@mx.spec(example_dims=dict(d=8, n=8))
def mamba(x: mx.Seq("b l d"), dt: mx.Seq("b l d"), B: mx.Seq("b l n"), C: mx.Seq("b l n"),
          A_log: mx.Param("d n", init=mx.init.s4d_real()),
          dt_bias: mx.Param("d", init=mx.init.inv_softplus_dt(1e-3, 1e-1)),
          D: mx.Param("d", init=1.0)):
    delta = mx.softplus(dt + dt_bias)
    M = mx.semiseparable(C=C, B=B, log_decay=-mx.exp(A_log) * delta)
    return M @ (x * delta) + D * x
