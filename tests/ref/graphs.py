"""torch.compile backends that count graphs instead of compiling them (no inductor, no C++)."""

from __future__ import annotations

from functorch.compile import make_boxed_func
from torch._dynamo.aot_compile_types import SerializableCallable
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


class TracedGraph(SerializableCallable):
    """A dynamo graph run as traced (no AOTAutograd: autograd differentiates its ops). It serializes to
    its number in this process's `GRAPHS`, so that `mixerc.compiled` can save an entry and load it back
    like an inductor one (within one process: a test's new mixer stands in for a new process)."""

    def __init__(self, gm):
        self.gm = gm

    def __call__(self, *args):
        return self.gm(*args)

    @classmethod
    def serialize_compile_artifacts(cls, fn) -> bytes:
        GRAPHS.append(fn.gm)
        return str(len(GRAPHS) - 1).encode()

    @classmethod
    def deserialize_compile_artifacts(cls, data: bytes):
        return cls(GRAPHS[int(data)])


GRAPHS: list = []


class CountingSaved:
    """A backend for `mixerc.compiled.CompiledFn` (an instance is the backend): counts dynamo graphs in
    ``.graphs`` and returns each as a `TracedGraph` (the precompile path needs a result it can serialize)."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return TracedGraph(gm)
