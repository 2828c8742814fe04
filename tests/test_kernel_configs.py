"""Kernel configs are per mixer and per call: two mixers of the same spec and dims (one generated
module) run different configs side by side, each forward's backward runs that forward's config, and
the module's default never changes (interpreter lane, tiny shapes)."""

import pytest
import torch

import mixerc as mx
from mixerc.settings import settings

pytestmark = pytest.mark.skipif(not settings().triton_interpret and not torch.cuda.is_available(),
                                reason="needs a GPU or TRITON_INTERPRET=1 (tests/conftest.py sets it)")

DIMS = dict(h=2, p=16, n=16, g=1)


def _inputs(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    ins = {}
    for name, dims in m._input_dims.items():
        shape = [2 if d == "b" else 40 if d == "l" else m.sizes[d] for d in dims]
        ins[name] = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    return ins


def _fwd_bwd(m, ins, backend=None):
    y = m(**ins) if backend is None else m._run(backend, ins, None, None)[0]
    w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    grads = torch.autograd.grad((y * w).sum(), [*ins.values(), *m.parameters()])
    return y.detach(), grads


def test_two_mixers_run_different_configs_at_once():
    m16 = mx.compile("mamba2", dims=DIMS, backend="triton", dtype=torch.float64)
    m32 = mx.compile("mamba2", dims=DIMS, backend="triton", dtype=torch.float64)
    m32.load_state_dict(m16.state_dict())
    module = m16._triton_module()
    assert module is m32._triton_module()  # one generated module for both
    default = dict(module.k0_DEFAULT)
    m16.set_kernel_config(0, chunk=16)
    m32.set_kernel_config(0, chunk=32, BS=256)
    assert m16.kernel_configs()[0]["config"]["chunk"] == 16
    assert m32.kernel_configs()[0]["config"] == {**default, "chunk": 32, "BS": 256}
    assert dict(module.k0_DEFAULT) == default and not hasattr(module, "k0_CONFIG")
    with pytest.raises(TypeError):
        module.k0_DEFAULT["chunk"] = 16  # immutable
    ins = _inputs(m16)
    ref_y, ref_g = _fwd_bwd(m16, ins, backend="chunked")
    # both forwards first, then both backwards: each backward must run its own forward's config
    y16 = m16(**ins)
    y32 = m32(**ins)
    w = torch.linspace(-1, 1, y16.numel(), dtype=y16.dtype).view_as(y16)
    params16, params32 = list(m16.parameters()), list(m32.parameters())
    g16 = torch.autograd.grad((y16 * w).sum(), [*ins.values(), *params16])
    g32 = torch.autograd.grad((y32 * w).sum(), [*ins.values(), *params32])
    for y, g in ((y16, g16), (y32, g32)):
        torch.testing.assert_close(y.detach(), ref_y, rtol=1e-9, atol=1e-9)
        for a, r in zip(g, ref_g):
            torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)
    assert dict(module.k0_DEFAULT) == default


def test_a_config_per_call_is_checked():
    m = mx.compile("mamba2", dims=DIMS, backend="triton", dtype=torch.float64)
    module = m._triton_module()
    for bad, match in (({"chunk": 24}, r"kernel config chunk=24 is outside its space \[16, 32"),
                       ({"BQ": 16}, "unknown kernel config 'BQ'; tunable: chunk")):
        with pytest.raises(mx.BackendError, match=match):
            module.mixer(**{k: v.detach() for k, v in _inputs(m).items()},
                         **{k: v.detach() for k, v in m.named_parameters()}, configs=(bad,))
    assert m.kernel_configs()[0]["config"] == dict(module.k0_DEFAULT)


def test_torch_compile_traces_a_mixer_with_its_own_config():
    """The per-call config is plain data torch.compile traces (fullgraph: no break on it)."""
    m = mx.compile("mamba2", dims=DIMS, backend="triton", dtype=torch.float64)
    m.set_kernel_config(0, chunk=16)
    ins = {k: v.detach() for k, v in _inputs(m).items()}
    fn = torch.compile(lambda **kw: m(**kw), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(**ins), m(**ins), rtol=0, atol=0)
