"""TiM4Rec's time-aware SSD: Mamba-2's scalar-decay semiseparable mixer whose step size is modulated
per position and head by a learned time feature τ.

    Δ̃_t = softplus(dt_t · τ_t + dt_bias),   A = -exp(A_log)
    S_t = exp(Δ̃_t A) S_{t-1} + Δ̃_t x_t ⊗ B_t,    y_t = S_t C_t + D x_t        S: (b, h, p, n)

Matrix form: y = M (x Δ̃) + D x with M[i, j] = C_i·B_j exp(A Σ_{k=j+1..i} Δ̃_k). It is the `mamba2`
spec with ``dt · tau`` in place of ``dt``; head i reads B/C group i // (h // g). Equals upstream's
``mamba_chunk_scan_combined(x, dt * tau, A, B, C, chunk_size, D, dt_bias=dt_bias, dt_softplus=True)``.
The time feature (the model's learned function of the time gaps) is computed outside the spec by
``mixerc.nn.TiM4Rec``; see docs/tim4rec.md.

Fan et al., "TiM4Rec: An Efficient Sequential Recommendation Model Based on Time-Aware Structured
State Space Duality Model", Neurocomputing 2025 (arXiv:2409.16182).
"""

import mixerc as mx


@mx.spec(example_dims=dict(h=4, p=16, n=16, g=2))
def tim4rec(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), tau: mx.Seq("b l h"), B: mx.Seq("b l g n"),
            C: mx.Seq("b l g n"),
            A_log: mx.Param("h", init=mx.init.log_uniform(1, 16)),
            dt_bias: mx.Param("h", init=mx.init.inv_softplus_dt(1e-3, 1e-1)),
            D: mx.Param("h", init=1.0)):
    delta = mx.softplus(dt * tau + dt_bias)
    M = mx.semiseparable(C=C, B=B, log_decay=-mx.exp(A_log) * delta)
    return M @ (x * delta) + D * x
