"""A 2-D selective state space model over a (variate x time) grid: one Roesser 2-D SSM whose step
sizes depend on the input, one per axis, discretised as Mamba does (a scalar decay per head).

    Δ1 = softplus(dt1 + dt1_bias)   (along time l)     Δ2 = softplus(dt2 + dt2_bias)   (along variates v)
    h1[v,t] = exp(-exp(A1_log) Δ1) h1[v,t-1] + A2 Δ1 h2[v,t-1] + Δ1 x[v,t] B1[v,t]
    h2[v,t] = A3 Δ2 h1[v-1,t] + exp(-exp(A4_log) Δ2) h2[v-1,t] + Δ2 x[v,t] B2[v,t]
    y[v,t]  = h1[v,t] C1[v,t] + h2[v,t] C2[v,t] + D x[v,t]

h1 carries information along time, h2 along the variates; the couplings A2 (h2 into the next time
step of h1) and A3 (h1 into the next variate of h2) are learned per head, scaled by the step of the
axis they move along (as the input term is). Head i reads B/C group i // (h // g).

The 2-D SSM follows the Roesser model (Roesser 1975) as Chimera uses it (Behrouz, Santacatterina,
Zabih, "Chimera: Effectively Modeling Multivariate Time Series with 2-Dimensional State Space
Models", NeurIPS 2024); this selective, per-axis discretisation is mixerc's, stated here because no
implementation of Chimera is public.
"""

import mixerc as mx


@mx.spec(example_dims=dict(h=4, p=8, n=8, g=1), seq_axes=("v", "l"))
def ssm2d(x: mx.Seq("b v l h p"), dt1: mx.Seq("b v l h"), dt2: mx.Seq("b v l h"),
          B1: mx.Seq("b v l g n"), C1: mx.Seq("b v l g n"), B2: mx.Seq("b v l g n"), C2: mx.Seq("b v l g n"),
          A1_log: mx.Param("h", init=mx.init.log_uniform(1, 16)),
          A4_log: mx.Param("h", init=mx.init.log_uniform(1, 16)),
          A2: mx.Param("h", init=mx.init.uniform(-0.1, 0.1)),
          A3: mx.Param("h", init=mx.init.uniform(-0.1, 0.1)),
          dt1_bias: mx.Param("h", init=mx.init.inv_softplus_dt(1e-3, 1e-1)),
          dt2_bias: mx.Param("h", init=mx.init.inv_softplus_dt(1e-2, 1.0)),
          D: mx.Param("h", init=1.0)):
    d1 = mx.softplus(dt1 + dt1_bias)
    d2 = mx.softplus(dt2 + dt2_bias)
    M = mx.grid2d(C1=C1, B1=B1, C2=C2, B2=B2, log_a1=-mx.exp(A1_log) * d1, a2=A2 * d1, a3=A3 * d2,
                  log_a4=-mx.exp(A4_log) * d2, scale1=d1, scale2=d2)
    return M @ x + D * x
