"""Mamba-2 (SSD): a scalar-decay semiseparable mixer per head.

    Δ_t = softplus(dt_t + dt_bias),   A = -exp(A_log)
    S_t = exp(Δ_t A) S_{t-1} + Δ_t x_t ⊗ B_t,    y_t = S_t C_t + D x_t        S: (b, h, p, n)

Matrix form: y = M (x Δ) + D x with M[i, j] = C_i·B_j exp(A Σ_{k=j+1..i} Δ_k). Head i reads B/C
group i // (h // g). Equals mamba-ssm's ``mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D,
dt_bias=dt_bias, dt_softplus=True)``.

Dao & Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured
State Space Duality", ICML 2024 (arXiv:2405.21060).
"""

import mixerc as mx


@mx.spec(example_dims=dict(h=4, p=16, n=16, g=2))
def mamba2(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n"),
           A_log: mx.Param("h", init=mx.init.log_uniform(1, 16)),
           dt_bias: mx.Param("h", init=mx.init.inv_softplus_dt(1e-3, 1e-1)),
           D: mx.Param("h", init=1.0)):
    delta = mx.softplus(dt + dt_bias)
    M = mx.semiseparable(C=C, B=B, log_decay=-mx.exp(A_log) * delta)
    return M @ (x * delta) + D * x
