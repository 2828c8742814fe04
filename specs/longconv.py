"""Long convolution: an explicit, learned kernel per channel, as long as the sequence.

    y_t = Σ_{s=0..min(t, k-1)} kernel[h, s] x_{t-s} + D_h x_t

Matrix form: y = T x + D x with T[i, j] = kernel[i - j] for 0 <= i - j < k (a causal Toeplitz
matrix per channel h), computed by FFT in O(l log l). Initialisation: safari's "random" kernel
init, N(0, 0.002²). safari also regularises the kernel with a Squash ``sign(k)·relu(|k| - λ)``
(and optional smoothing); that needs an absolute value, which is not a spec op, so it is left out.

Fu, Epstein, Nguyen, Thomas, Zhang, Dao, Rudra, Ré, "Simple Hardware-Efficient Long Convolutions
for Sequence Modeling", ICML 2023 (arXiv:2302.06646); HazyResearch/safari
``standalone_long_convs.py`` and ``src/models/sequence/long_conv.py``.
"""

import mixerc as mx


@mx.spec(example_dims=dict(h=4, k=64))
def longconv(x: mx.Seq("b l h"),
             kernel: mx.Param("h k", init=mx.init.normal(0.002)),
             D: mx.Param("h", init=mx.init.normal(1.0))):
    return mx.toeplitz(kernel=kernel) @ x + D * x
