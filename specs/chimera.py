"""Chimera's mixer (Behrouz, Santacatterina, Zabih, "Chimera: Effectively Modeling Multivariate Time
Series with 2-Dimensional State Space Models", NeurIPS 2024) over a (variate v x time l) grid: two
selective 2-D SSM heads, one for the trend and one for the seasonal patterns, each run forward and
backward along the variates, summed, plus a skip, times a data-dependent gate (the third head).

Four Roesser 2-D SSMs (mx.grid2d) k in {tf, tb, sf, sb}: trend (t) or season (s), forward (f) or
backward (b) along v. Per module, with per-head parameters and per-cell (input-dependent) inputs:

    Δ1 = softplus(dt1_k + dt1_bias_k)   (time step)      Δ2 = softplus(dt2_k + dt2_bias_k)   (variate step)
    a1 = -exp(A1_log_k)                 a4 = -exp(A4_log_k)
    h1[v,t] = exp(a1 Δ1) h1[v,t-1] + A2_k φ1 h2[v,t-1] + φ1 x[v,t] B1_k[v,t]
    h2[v,t] = A3_k φ2 h1[v-1,t] + exp(a4 Δ2) h2[v-1,t] + φ2 x[v,t] B2_k[v,t]
    y_k[v,t] = h1[v,t] . C1_k[v,t] + h2[v,t] . C2_k[v,t]

    trend  (zero-order hold, Mamba's input rule):       φ1 = Δ1,                 φ2 = Δ2
    season (exact zero-order hold of the coupled ODE):  φ1 = (exp(a1 Δ1) - 1)/a1, φ2 = (exp(a4 Δ2) - 1)/a4

    y = (y_tf + y_tb + y_sf + y_sb + D x) * silu(z)

A backward module (tb, sb) runs on the grid reversed along v: every per-cell input of it (x, its dt's,
B's and C's) is flipped along v, the module runs forward, and its output is flipped back, so that
its h2 carries information from the variates after v. Time stays causal in every module: decoding
along l (`step`, one time step for every variate) is exact. Every input is given in the original
variate order. Head i reads B/C group i // (h // g).

What the paper says and what is reconstructed here (no code of the authors is public; the method
section's equations were not available; docs/chimera.md has the math):

- "two hidden states": h1 moves along time, h2 along the variates; "A1 and A2 control the emphasis
  on past cross-time and cross-variate information" in the time update, A3, A4 in the variate update;
  y = C1 h1 + C2 h2. This is the Roesser model; the reading is this project's.
- "B, C and Δ are functions of the input" (selectivity), the A's are not: here the A's are learned
  scalars per head (the 2-D analogue of Mamba-2, one of the paper's special cases, "2-D Mamba-2").
  The paper restricts A1, A2 to a structured form that recovers autoregressive processes; that
  structure is not reproduced (reconstruction: scalar per head).
- ZOH discretisation with two step sizes, Δ1 along time and Δ2 along the variates. "Smaller Δ1
  captures long-term progression, larger Δ1 captures seasonal patterns", with "different
  discretisation processes" for the trend and the seasonal head. Reconstruction: the trend head uses
  Mamba's simplified ZOH (input factor Δ) with small initial Δ1 (log-uniform in [1e-3, 1e-1]); the
  seasonal head uses the exact ZOH of the coupled ODE dh1/dt1 = a1 h1 + A2 h2 + B1 x with h2 and x
  held over the step (input and coupling factor (exp(a1 Δ1) - 1)/a1) with large initial Δ1
  (log-uniform in [1e-1, 1]). Along the variates both use their own rule with Δ2 in [1e-2, 1].
- "forward and backward modules along the variate axis" (the variates have no natural order):
  separate parameters and inputs per direction, outputs summed (reconstructed combination rule).
- The third head, "data-dependent gating": reconstructed as a SiLU gate silu(z) of a per-cell input z
  on the sum of the heads and the skip D x (as Mamba's z branch).
"""

import mixerc as mx


def _flip(t):
    return mx.flip(t, axis="v")


def _module(x, dt1, dt2, B1, C1, B2, C2, A1_log, A2, A3, A4_log, dt1_bias, dt2_bias, exact, backward):
    """One 2-D SSM module's output y_k (see the module docstring); ``exact``: the seasonal head's exact
    ZOH factors, else the trend head's Δ; ``backward``: run on the grid reversed along v."""
    if backward:
        x, dt1, dt2, B1, C1, B2, C2 = (_flip(t) for t in (x, dt1, dt2, B1, C1, B2, C2))
    d1 = mx.softplus(dt1 + dt1_bias)
    d2 = mx.softplus(dt2 + dt2_bias)
    la1 = -mx.exp(A1_log) * d1
    la4 = -mx.exp(A4_log) * d2
    if exact:  # (exp(a Δ) - 1) / a with a = -exp(A_log): positive, -> Δ for small a Δ
        f1 = (1.0 - mx.exp(la1)) / mx.exp(A1_log)
        f2 = (1.0 - mx.exp(la4)) / mx.exp(A4_log)
    else:
        f1, f2 = d1, d2
    M = mx.grid2d(C1=C1, B1=B1, C2=C2, B2=B2, log_a1=la1, a2=A2 * f1, a3=A3 * f2, log_a4=la4,
                  scale1=f1, scale2=f2)
    y = M @ x
    return _flip(y) if backward else y


_A = dict(init=mx.init.log_uniform(1, 16))
_C = dict(init=mx.init.uniform(-0.1, 0.1))
_TREND = dict(init=mx.init.inv_softplus_dt(1e-3, 1e-1))
_SEASON = dict(init=mx.init.inv_softplus_dt(1e-1, 1.0))
_VARIATE = dict(init=mx.init.inv_softplus_dt(1e-2, 1.0))


@mx.spec(example_dims=dict(h=2, p=4, n=4, g=1), seq_axes=("v", "l"))
def chimera(x: mx.Seq("b v l h p"), z: mx.Seq("b v l h p"),
            dt1_tf: mx.Seq("b v l h"), dt2_tf: mx.Seq("b v l h"),
            B1_tf: mx.Seq("b v l g n"), C1_tf: mx.Seq("b v l g n"), B2_tf: mx.Seq("b v l g n"),
            C2_tf: mx.Seq("b v l g n"),
            dt1_tb: mx.Seq("b v l h"), dt2_tb: mx.Seq("b v l h"),
            B1_tb: mx.Seq("b v l g n"), C1_tb: mx.Seq("b v l g n"), B2_tb: mx.Seq("b v l g n"),
            C2_tb: mx.Seq("b v l g n"),
            dt1_sf: mx.Seq("b v l h"), dt2_sf: mx.Seq("b v l h"),
            B1_sf: mx.Seq("b v l g n"), C1_sf: mx.Seq("b v l g n"), B2_sf: mx.Seq("b v l g n"),
            C2_sf: mx.Seq("b v l g n"),
            dt1_sb: mx.Seq("b v l h"), dt2_sb: mx.Seq("b v l h"),
            B1_sb: mx.Seq("b v l g n"), C1_sb: mx.Seq("b v l g n"), B2_sb: mx.Seq("b v l g n"),
            C2_sb: mx.Seq("b v l g n"),
            A1_log_tf: mx.Param("h", **_A), A4_log_tf: mx.Param("h", **_A),
            A2_tf: mx.Param("h", **_C), A3_tf: mx.Param("h", **_C),
            dt1_bias_tf: mx.Param("h", **_TREND), dt2_bias_tf: mx.Param("h", **_VARIATE),
            A1_log_tb: mx.Param("h", **_A), A4_log_tb: mx.Param("h", **_A),
            A2_tb: mx.Param("h", **_C), A3_tb: mx.Param("h", **_C),
            dt1_bias_tb: mx.Param("h", **_TREND), dt2_bias_tb: mx.Param("h", **_VARIATE),
            A1_log_sf: mx.Param("h", **_A), A4_log_sf: mx.Param("h", **_A),
            A2_sf: mx.Param("h", **_C), A3_sf: mx.Param("h", **_C),
            dt1_bias_sf: mx.Param("h", **_SEASON), dt2_bias_sf: mx.Param("h", **_VARIATE),
            A1_log_sb: mx.Param("h", **_A), A4_log_sb: mx.Param("h", **_A),
            A2_sb: mx.Param("h", **_C), A3_sb: mx.Param("h", **_C),
            dt1_bias_sb: mx.Param("h", **_SEASON), dt2_bias_sb: mx.Param("h", **_VARIATE),
            D: mx.Param("h", init=1.0)):
    y_tf = _module(x, dt1_tf, dt2_tf, B1_tf, C1_tf, B2_tf, C2_tf, A1_log_tf, A2_tf, A3_tf, A4_log_tf,
                   dt1_bias_tf, dt2_bias_tf, exact=False, backward=False)
    y_tb = _module(x, dt1_tb, dt2_tb, B1_tb, C1_tb, B2_tb, C2_tb, A1_log_tb, A2_tb, A3_tb, A4_log_tb,
                   dt1_bias_tb, dt2_bias_tb, exact=False, backward=True)
    y_sf = _module(x, dt1_sf, dt2_sf, B1_sf, C1_sf, B2_sf, C2_sf, A1_log_sf, A2_sf, A3_sf, A4_log_sf,
                   dt1_bias_sf, dt2_bias_sf, exact=True, backward=False)
    y_sb = _module(x, dt1_sb, dt2_sb, B1_sb, C1_sb, B2_sb, C2_sb, A1_log_sb, A2_sb, A3_sb, A4_log_sb,
                   dt1_bias_sb, dt2_bias_sb, exact=True, backward=True)
    return (y_tf + y_tb + y_sf + y_sb + D * x) * mx.silu(z)
