"""S4D: a diagonal, time-invariant SSM per channel, run as a causal convolution (a Toeplitz matrix).

    A_n = -exp(A_re_log_n) + i A_im_n,   Δ = exp(log_dt),   n = 0 .. n2-1 (conjugate pairs, N = 2 n2)
    K[t] = 2 Re Σ_n C_n (exp(Δ A_n) - 1) / A_n · exp(t Δ A_n)        (ZOH, B = 1 folded into C)
    y_t = Σ_{s=0..t} K[s] x_{t-s} + D x_t

Matrix form: y = T_K x + D x with T_K[i, j] = K[i - j] for i >= j (one kernel per channel h).
Equivalently h_t = Ā h_{t-1} + B̄ x_t, y_t = 2 Re(C h_t) with Ā = exp(Δ A); the convolution view
runs in O(l log l) by FFT and keeps no state between calls. Initialisation S4D-Lin: Re A = -1/2,
Im A = π n; C ~ complex N(0, 1) (real and imaginary parts with variance 1/2 each);
log Δ ~ U(log 1e-3, log 1e-1). The kernel length ``k`` is a compile-time dim: compile with k = the
longest sequence (a longer kernel is truncated to the sequence, a shorter one is zero beyond).

Gu, Gupta, Goel, Ré, "On the Parameterization and Initialization of Diagonal State Space Models",
NeurIPS 2022 (arXiv:2206.11893); state-spaces/s4 ``models/s4/s4d.py`` (the minimal S4D kernel and
FFT convolution) and ``src/models/sequence/kernels/ssm.py`` (``SSMKernelDiag``).
"""

import math

import mixerc as mx


@mx.spec(example_dims=dict(h=4, n2=8, k=64))
def s4d(x: mx.Seq("b l h"),
        log_dt: mx.Param("h", init=mx.init.log_uniform_dt(1e-3, 1e-1)),
        A_re_log: mx.Param("h n2", init=math.log(0.5)),
        A_im: mx.Param("h n2", init=mx.init.s4d_lin_imag()),
        C_re: mx.Param("h n2", init=mx.init.normal(0.5 ** 0.5)),
        C_im: mx.Param("h n2", init=mx.init.normal(0.5 ** 0.5)),
        D: mx.Param("h", init=mx.init.normal(1.0))):
    K = mx.s4d_kernel(log_dt, A_re_log, A_im, C_re, C_im, length="k", disc="zoh")  # (h, k)
    return mx.toeplitz(kernel=K) @ x + D * x
