"""Hydra: a bidirectional quasiseparable mixer per head, as goombalab/hydra computes it.

    Δᶠ_t = softplus(dt_fwd_t + dt_bias),  Δᵇ_t = softplus(dt_bwd_t + dt_bias),  A = -exp(A_log)
    y = shift(SS_fwd) x + flip · shift(SS_bwd) · flip x + (D + delta) ⊙ x

    y_t = Σ_{s<t} (C_fwd[t-1]·B_fwd[s]) exp(A Σ_{k=s+1..t-1} Δᶠ_k) Δᶠ_s x_s
        + Σ_{s>t} (C_bwd[t+1]·B_bwd[s]) exp(A Σ_{k=t+1..s-1} Δᵇ_k) Δᵇ_s x_s  +  (D + delta_t) x_t

Every input is in the original time order (the upstream code flips the backward half of a
doubled batch; here the structure reads it reversed). x, A, dt_bias and the diagonal are shared by
both directions; B, C and dt are per direction; ``delta`` is the data-dependent diagonal fc_D(x)
(per head), D its learned offset. Head i reads B/C group i // (h // g).

Hwang, Lahoti, Dao, Gu, "Hydra: Bidirectional State Space Models Through Generalized Matrix
Mixers", 2024 (arXiv:2407.09941); goombalab/hydra:hydra/modules/hydra.py.
"""

import mixerc as mx


@mx.spec(example_dims=dict(h=4, p=8, n=16, g=2))
def hydra(x: mx.Seq("b l h p"), dt_fwd: mx.Seq("b l h"), dt_bwd: mx.Seq("b l h"),
          B_fwd: mx.Seq("b l g n"), C_fwd: mx.Seq("b l g n"),
          B_bwd: mx.Seq("b l g n"), C_bwd: mx.Seq("b l g n"), delta: mx.Seq("b l h"),
          A_log: mx.Param("h", init=0.0),
          dt_bias: mx.Param("h", init=mx.init.inv_softplus_dt(1e-3, 1e-1)),
          D: mx.Param("h", init=1.0)):
    A = -mx.exp(A_log)
    d_fwd = mx.softplus(dt_fwd + dt_bias)
    d_bwd = mx.softplus(dt_bwd + dt_bias)
    M = mx.quasiseparable(C=C_fwd, B=B_fwd, log_decay=A * d_fwd, scale=d_fwd,
                          C_bwd=C_bwd, B_bwd=B_bwd, log_decay_bwd=A * d_bwd, scale_bwd=d_bwd,
                          diag=D + delta)
    return M @ x
