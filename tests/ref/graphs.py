"""A torch.compile backend that counts graphs instead of compiling them (no inductor, no C++)."""

from __future__ import annotations

from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd


class Counting:
    """``.backend`` for ``torch.compile(backend=...)``: AOTAutograd's forward graphs (one per dynamo
    graph) and backward graphs, counted in ``.fw`` and ``.bw`` and run as traced."""

    def __init__(self):
        self.fw = self.bw = 0

        def fw(gm, example_inputs):
            self.fw += 1
            return make_boxed_func(gm.forward)

        def bw(gm, example_inputs):
            self.bw += 1
            return make_boxed_func(gm.forward)

        self.backend = aot_autograd(fw_compiler=fw, bw_compiler=bw)
