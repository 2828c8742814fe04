"""A spec using the toy structure: importing the package registers it (``mx.toy_shift``)."""

import toy_shift  # noqa: F401  (registers mx.toy_shift)

import mixerc as mx


@mx.spec(example_dims=dict(h=2, p=3))
def toy_mixer(x: mx.Seq("b l h p"), gate: mx.Seq("b l h"), w: mx.Param("h", init=0.5)):
    M = mx.toy_shift(a=mx.sigmoid(gate) * w)
    return M @ x + x
