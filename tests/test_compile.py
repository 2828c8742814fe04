"""torch.compile(fullgraph=True) traces through a model that uses a compiled mixer, whatever its
backend: the per-call path reads plain Python data, the generated torch code is a registered module,
and the Triton kernels are torch.library custom ops (their lane is in test_triton.py). aot_eager
runs dynamo and AOTAutograd (forward and backward graphs) without inductor's C++ compile."""

import pytest
import torch

import mixerc as mx
from mixerc.settings import settings


class Net(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.mixer = mx.compile("mamba2", dims=dict(h=2, p=4, n=4, g=1), backend=backend, dtype=torch.float64)
        self.proj = torch.nn.Linear(4, 4, dtype=torch.float64)

    def forward(self, x, dt, B, C, seq_idx):
        y, s = self.mixer(x=self.proj(x), dt=dt, B=B, C=C, seq_idx=seq_idx, return_final_state=True)
        return (y * y).sum() + s.sum()


@pytest.mark.parametrize("backend", ["reference", "recurrent", "chunked"])
def test_fullgraph_forward_and_backward(backend):
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(*s, generator=g, dtype=torch.float64) for s in [(2, 9, 2, 4), (2, 9, 2), (2, 9, 1, 4), (2, 9, 1, 4)]]
    seq_idx = torch.tensor([[0] * 4 + [1] * 5, [0] * 9])
    net = Net(backend)
    eager = net(*args, seq_idx)
    eager_grads = torch.autograd.grad(eager, list(net.parameters()))
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    out = compiled(*args, seq_idx)
    grads = torch.autograd.grad(out, list(net.parameters()))
    torch.testing.assert_close(out, eager)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["chunked"] + ["triton"] * bool(settings().triton_interpret))
def test_fullgraph_hydra_layer(backend):
    """The Hydra layer (conv, projections, the quasiseparable mixer, gated norm) under torch.compile."""
    from mixerc.nn import Hydra

    torch.manual_seed(0)
    layer = Hydra(d_model=8, d_state=4, headdim=4, chunk_size=16, backend=backend, dtype=torch.float64)
    u = torch.randn(2, 11, 8, dtype=torch.float64)
    eager = layer(u).square().sum()
    eager_grads = torch.autograd.grad(eager, list(layer.parameters()))
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(u).square().sum()
    grads = torch.autograd.grad(out, list(layer.parameters()))
    torch.testing.assert_close(out, eager)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b)
