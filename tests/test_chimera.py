"""The `chimera` spec and the `mixerc.nn.Chimera` layer against references written from the math
(docs/chimera.md) in plain torch, sharing no code with mixerc:

- `module_ref`: one 2-D SSM module cell by cell (explicit loops over v and t); the backward modules
  run the variate recurrence from the last variate to the first (h2 from v + 1) instead of flipping;
  the seasonal factor is ``expm1(a Δ) / a`` (the spec writes ``(1 - exp(a Δ)) / exp(A_log)``);
- `chimera_ref`: the four modules, the skip and the gate; `layer_ref`: the layer's projections, a tap
  loop for the causal conv, the RMSNorm and the output projection around it.

Every torch lowering of the spec matches in fp64: forward, final states, the gradient of every
input and every parameter; fft2 matches on an LTI variant (step sizes from parameters); the layer's
forward and parameter gradients match `layer_ref`, decoding by `step` (from scratch and after a
prefill) matches the forward; bad constructor arguments and inputs raise typed errors.
"""

from __future__ import annotations

import pytest
import torch

import mixerc as mx
from mixerc.nn import Chimera, ConfigError

F64 = torch.float64
MODULES = ("tf", "tb", "sf", "sb")
DIMS = dict(h=2, p=2, n=3, g=1)


# ---------------------------------------------------------------------------------------------- references
def module_ref(x, d1, d2, B1, C1, B2, C2, A1_log, A2, A3, A4_log, exact, backward):
    """One module, cell by cell. x (b, V, L, H, P); d1, d2 (b, V, L, H); B/C (b, V, L, G, N); parameters
    (H,). Returns y (b, V, L, H, P) and the last column (h1, h2), each (b, V, H, P, N), in the order the
    module visits the variates (reversed for a backward module)."""
    b, V, L, H, P = x.shape
    G, N = B1.shape[3], B1.shape[4]
    B1, C1, B2, C2 = (t.repeat_interleave(H // G, dim=3) for t in (B1, C1, B2, C2))
    a1, a4 = -torch.exp(A1_log), -torch.exp(A4_log)
    dec1, dec4 = torch.exp(a1 * d1), torch.exp(a4 * d2)
    f1, f2 = (torch.expm1(a1 * d1) / a1, torch.expm1(a4 * d2) / a4) if exact else (d1, d2)
    zero = x.new_zeros(b, H, P, N)
    h1, h2 = {}, {}
    y = [[None] * L for _ in range(V)]
    order = range(V - 1, -1, -1) if backward else range(V)
    for v in order:
        vp = v + 1 if backward else v - 1
        for t in range(L):
            c = lambda s: s[:, v, t, :, None, None]  # noqa: E731  (b, H) -> (b, H, 1, 1)
            u = x[:, v, t, :, :, None]
            h1[v, t] = (c(dec1) * h1.get((v, t - 1), zero) + A2[:, None, None] * c(f1) * h2.get((v, t - 1), zero)
                        + c(f1) * u * B1[:, v, t, :, None, :])
            h2[v, t] = (A3[:, None, None] * c(f2) * h1.get((vp, t), zero) + c(dec4) * h2.get((vp, t), zero)
                        + c(f2) * u * B2[:, v, t, :, None, :])
            y[v][t] = (h1[v, t] * C1[:, v, t, :, None, :]).sum(-1) + (h2[v, t] * C2[:, v, t, :, None, :]).sum(-1)
    y = torch.stack([torch.stack(row, dim=1) for row in y], dim=1)
    last = [(h1[v, L - 1], h2[v, L - 1]) for v in order] if L else None
    final = None if last is None else torch.stack([torch.stack([s[0] for s in last], 1),
                                                   torch.stack([s[1] for s in last], 1)], 1)
    return y, final


def deltas(inputs, params, k):
    sp = torch.nn.functional.softplus
    return sp(inputs[f"dt1_{k}"] + params[f"dt1_bias_{k}"]), sp(inputs[f"dt2_{k}"] + params[f"dt2_bias_{k}"])


def chimera_ref(inputs, params, delta=deltas):
    """(y, final states of tf, tb, sf, sb) of the chimera spec; ``delta(inputs, params, k)`` gives a
    module's step sizes."""
    x, z = inputs["x"], inputs["z"]
    total, finals = params["D"][:, None] * x, []
    for k in MODULES:
        d1, d2 = delta(inputs, params, k)
        y, final = module_ref(x, d1, d2, *(inputs[f"{r}_{k}"] for r in ("B1", "C1", "B2", "C2")),
                              *(params[f"{p}_{k}"] for p in ("A1_log", "A2", "A3", "A4_log")),
                              exact=k[0] == "s", backward=k[1] == "b")
        total = total + y
        finals.append(final)
    return total * z * torch.sigmoid(z), finals


def random_inputs(b, V, L, dims, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    h, p, n, g = dims["h"], dims["p"], dims["n"], dims["g"]
    out = {"x": torch.randn(b, V, L, h, p, generator=gen, dtype=dtype),
           "z": torch.randn(b, V, L, h, p, generator=gen, dtype=dtype)}
    for k in MODULES:
        out[f"dt1_{k}"] = torch.randn(b, V, L, h, generator=gen, dtype=dtype)
        out[f"dt2_{k}"] = torch.randn(b, V, L, h, generator=gen, dtype=dtype)
        for r in ("B1", "C1", "B2", "C2"):
            out[f"{r}_{k}"] = torch.randn(b, V, L, g, n, generator=gen, dtype=dtype)
    return {k: v.requires_grad_() for k, v in out.items()}


def perturbed_params(mixer, seed=1):
    """The mixer's parameters moved off their init (couplings of either sign, larger), in fp64."""
    gen = torch.Generator().manual_seed(seed)
    mixer.double()
    with torch.no_grad():
        for name, p in mixer.named_parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return dict(mixer.named_parameters())


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ---------------------------------------------------------------------------------------------- the spec
@pytest.mark.parametrize("backend", ["reference", "recurrent", "grid"])
def test_spec_against_the_cell_loop(backend):
    mixer = mx.compile("chimera", dims=DIMS, backend=backend, chunk_size=2)
    params = perturbed_params(mixer)
    inputs = random_inputs(2, 3, 5, DIMS)
    y, finals = mixer(**inputs, return_final_state=True)
    y_ref, finals_ref = chimera_ref(inputs, params)
    assert rel(y, y_ref) < 1e-12
    assert len(finals) == 4
    for k, f, fr in zip(MODULES, finals, finals_ref):
        assert f.shape == (2, 2, 3, 2, 2, 3)
        assert rel(f, fr) < 1e-12, k  # a backward module's state: its own (reversed) variate order
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    leaves = list(inputs.values()) + list(params.values())
    grads = torch.autograd.grad((y * gy).sum(), leaves)
    grads_ref = torch.autograd.grad((y_ref * gy).sum(), leaves)
    names = list(inputs) + list(params)
    assert len(names) == 26 + 25  # every input, every parameter
    for name, g, gr in zip(names, grads, grads_ref):
        assert gr.abs().max() > 0, name  # each one reaches the output
        assert rel(g, gr) < 1e-10, name


def test_step_along_time_equals_the_forward():
    mixer = mx.compile("chimera", dims=DIMS, backend="grid", chunk_size=2)
    params = perturbed_params(mixer)
    inputs = {k: v.detach() for k, v in random_inputs(1, 3, 5, DIMS, seed=3).items()}
    y_ref, _ = chimera_ref(inputs, params)
    state, outs = None, []
    for t in range(5):
        y_t, state = mixer.step(state, **{k: v[:, :, t] for k, v in inputs.items()})
        outs.append(y_t)
    assert rel(torch.stack(outs, 2), y_ref) < 1e-12


LTI_DIMS = dict(h=2, p=2, n=3)


@mx.spec(example_dims=LTI_DIMS, seq_axes=("v", "l"))
def chimera_lti(x: mx.Seq("b v l h p"), B1: mx.Seq("b v l h n"), C1: mx.Seq("b v l h n"),
                B2: mx.Seq("b v l h n"), C2: mx.Seq("b v l h n"),
                d1: mx.Param("h", init=mx.init.uniform(0.2, 1.0)), d2: mx.Param("h", init=mx.init.uniform(0.2, 1.0)),
                A1_log: mx.Param("h", init=mx.init.uniform(-1, 1)), A4_log: mx.Param("h", init=mx.init.uniform(-1, 1)),
                A2: mx.Param("h", init=mx.init.uniform(-0.5, 0.5)), A3: mx.Param("h", init=mx.init.uniform(-0.5, 0.5))):
    """Chimera's seasonal head, forward and backward along v, with step sizes that are parameters:
    every transition is constant over the grid (the LTI case, a 2-D convolution). grid2d takes its scales
    per cell only, so the constant input factors are folded into B (per head)."""
    la1, la4 = -mx.exp(A1_log) * d1, -mx.exp(A4_log) * d2
    f1, f2 = (1.0 - mx.exp(la1)) / mx.exp(A1_log), (1.0 - mx.exp(la4)) / mx.exp(A4_log)
    fl = lambda t: mx.flip(t, axis="v")  # noqa: E731
    fwd = mx.grid2d(C1=C1, B1=f1 * B1, C2=C2, B2=f2 * B2, log_a1=la1, a2=A2 * f1, a3=A3 * f2, log_a4=la4)
    bwd = mx.grid2d(C1=fl(C1), B1=f1 * fl(B1), C2=fl(C2), B2=f2 * fl(B2), log_a1=la1, a2=A2 * f1, a3=A3 * f2,
                    log_a4=la4)
    return fwd @ x + fl(bwd @ fl(x))


@pytest.mark.parametrize("backend", ["fft2", "grid"])
def test_lti_variant_on_fft2(backend):
    mixer = mx.compile(chimera_lti, dims=LTI_DIMS, backend=backend, chunk_size=2).double()
    gen = torch.Generator().manual_seed(7)
    ins = {"x": torch.randn(2, 4, 5, 2, 2, generator=gen, dtype=F64)}
    for r in ("B1", "C1", "B2", "C2"):
        ins[r] = torch.randn(2, 4, 5, 2, 3, generator=gen, dtype=F64)
    ins = {k: v.requires_grad_() for k, v in ins.items()}
    p = dict(mixer.named_parameters())
    y = mixer(**ins)
    parts = [module_ref(ins["x"], p["d1"].expand(2, 4, 5, 2), p["d2"].expand(2, 4, 5, 2), ins["B1"], ins["C1"],
                        ins["B2"], ins["C2"], p["A1_log"], p["A2"], p["A3"], p["A4_log"], True, bwd)[0]
             for bwd in (False, True)]
    y_ref = parts[0] + parts[1]
    assert rel(y, y_ref) < 1e-12
    leaves = list(ins.values()) + list(p.values())
    for name, g, gr in zip(list(ins) + list(p), torch.autograd.grad(y.square().sum(), leaves),
                           torch.autograd.grad(y_ref.square().sum(), leaves)):
        assert rel(g, gr) < 1e-10, name


@pytest.mark.slow
def test_mixerc_check_on_every_torch_lowering():
    """What ``mixerc check chimera`` runs (every torch lowering against reference, step), on a tiny grid."""
    from mixerc.check import run_check

    lows = ("reference", "recurrent", "grid", "triton")  # triton in the interpreter lane
    results = run_check(mx.load_spec("chimera"), DIMS, b=1, l=4, axes={"v": 3}, chunk_size=2, lowerings=lows)
    assert [r.lowering for r in results] == list(lows)
    assert all(r.ok for r in results), results
    assert any(r.step is not None for r in results)  # decode along l was compared


def test_spec_errors():
    with pytest.raises(mx.BackendError, match=r"grid2d cannot run its .fft2. lowering here .*log_a1 per head"):
        mx.compile("chimera", dims=DIMS, backend="fft2")
    mixer = mx.compile("chimera", dims=DIMS)
    ins = {k: v.detach() for k, v in random_inputs(1, 3, 4, DIMS).items()}
    ins["B2_sb"] = ins["B2_sb"][:, :2]
    with pytest.raises(mx.ShapeError, match=r"input 'B2_sb'.*v"):
        mixer(**ins)


# ---------------------------------------------------------------------------------------------- the layer
def _rms(y, w, eps):
    return y * torch.rsqrt(y.square().mean(-1, keepdim=True) + eps) * w


def layer_ref(m: Chimera, u):
    """The layer's forward from its parameters, in plain torch (the conv as a loop over taps)."""
    b, V, L, _ = u.shape
    xz = u @ m.in_proj.weight.T
    x, z = xz[..., :m.d_inner], xz[..., m.d_inner:]
    W = m.d_conv
    w = m.conv1d.weight[:, 0, :]  # (d_inner, W): tap k reads t - (W - 1) + k
    conv = m.conv1d.bias.expand(b, V, L, m.d_inner).clone()
    for k in range(W):
        s = W - 1 - k
        conv[:, :, s:] = conv[:, :, s:] + w[:, k] * x[:, :, :L - s]
    x = conv * torch.sigmoid(conv)
    proj = x @ m.x_proj.weight.T
    h, p, n, g = m.nheads, m.headdim, m.d_state, m.ngroups
    inputs, at = {"x": x.unflatten(-1, (h, p)), "z": z.unflatten(-1, (h, p))}, 0
    for k in MODULES:
        for name, width in (("dt1", h), ("dt2", h), ("B1", g * n), ("C1", g * n), ("B2", g * n), ("C2", g * n)):
            piece = proj[..., at:at + width]
            inputs[f"{name}_{k}"] = piece if name.startswith("dt") else piece.unflatten(-1, (g, n))
            at += width
    assert at == proj.shape[-1]
    y, _ = chimera_ref(inputs, dict(m.mixer.named_parameters()))
    return _rms(y.flatten(-2), m.norm.weight, m.norm.eps) @ m.out_proj.weight.T


def _layer(seed=0, **kw):
    torch.manual_seed(seed)
    m = Chimera(**{**dict(d_model=6, d_state=3, d_conv=3, expand=2, headdim=4, ngroups=1), **kw}).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m


def test_layer_against_the_reference():
    m = _layer()
    u = torch.randn(2, 3, 5, 6, dtype=F64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    y, y_ref = m(u), layer_ref(m, u)
    assert y.shape == (2, 3, 5, 6)
    assert rel(y, y_ref) < 1e-12
    leaves = [u] + list(m.parameters())
    names = ["u"] + [n for n, _ in m.named_parameters()]
    gy = torch.randn(y.shape, dtype=F64, generator=torch.Generator().manual_seed(2))
    for name, g, gr in zip(names, torch.autograd.grad((y * gy).sum(), leaves),
                           torch.autograd.grad((y_ref * gy).sum(), leaves)):
        assert gr.abs().max() > 0, name
        assert rel(g, gr) < 1e-10, name


@pytest.mark.parametrize("prefill", [0, 2])
def test_layer_step_equals_forward(prefill):
    m = _layer(seed=1, headdim=3, ngroups=2)
    V, L = 3, 5  # odd both
    u = torch.randn(2, V, L, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = m(u)
        conv_state, ssm_state = m.allocate_inference_cache(2, V, dtype=F64)
        outs = [m(u[:, :, :prefill], cache=(conv_state, ssm_state))] if prefill else []
        for t in range(prefill, L):
            out, c2, s2 = m.step(u[:, :, t:t + 1], conv_state, ssm_state)
            assert c2 is conv_state and s2 is ssm_state  # updated in place
            outs.append(out)
    assert rel(torch.cat(outs, dim=2), y) < 1e-12


@pytest.mark.parametrize("kw,msg", [
    (dict(d_model=0), r"Chimera: d_model=0 must be a positive integer"),
    (dict(d_model=6, headdim=5), r"Chimera: headdim=5 does not divide d_inner = int\(expand \* d_model\) = 12; "
                                 r"pick a headdim that divides it"),
    (dict(d_model=6, headdim=4, ngroups=2), r"Chimera: ngroups=2 must divide the number of heads 3 "
                                            r"\(d_inner / headdim = 12 / 4\); pick ngroups dividing it"),
    (dict(d_model=6, headdim=4, expand=0.01), r"Chimera: expand=0.01 gives d_inner = int\(expand \* d_model\) = 0"),
    (dict(d_model=6, headdim=4, bias=1), r"Chimera: bias=1 must be True or False"),
    (dict(d_model=6, headdim=4, dtype=torch.int32), r"Chimera: dtype=torch.int32 must be None or a floating"),
    (dict(d_model=6, headdim=4, chunk_size=0), r"Chimera: chunk_size=0 must be a positive integer or None"),
])
def test_bad_constructor_arguments(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        Chimera(**kw)


def test_bad_layer_inputs():
    m = Chimera(6, d_state=2, headdim=4, d_conv=2)
    with pytest.raises(mx.ShapeError, match=r"Chimera: u must be \(b, v, l, d_model=6\), got shape \(2, 5, 6\); "
                                            r"the grid is batch, variates, time, features"):
        m(torch.randn(2, 5, 6))
    with pytest.raises(mx.InputError, match=r"Chimera: u must be a floating torch.Tensor .* got torch.int64 tensor"):
        m(torch.zeros(2, 3, 5, 6, dtype=torch.long))
    conv_state, ssm_state = m.allocate_inference_cache(2, 3)
    assert ssm_state.shape == (2, 4, 2, 3, 3, 4, 2)
    with pytest.raises(mx.ShapeError, match=r"Chimera.step: u must be \(b, v, 1, d_model=6\), got shape"):
        m.step(torch.randn(2, 3, 2, 6), conv_state, ssm_state)
    with pytest.raises(mx.ShapeError, match=r"Chimera.step: ssm_state must have shape \(2, 4, 2, 4, 3, 4, 2\) for "
                                            r"b=2, v=4 \(allocate_inference_cache\(b, v\)\)"):
        m.step(torch.randn(2, 4, 1, 6), m.allocate_inference_cache(2, 4)[0], ssm_state)
    with pytest.raises(mx.InputError, match=r"Chimera.step: conv_state must be contiguous"):
        m.step(torch.randn(2, 3, 1, 6), conv_state.transpose(0, 1).contiguous().transpose(0, 1), ssm_state)
    with pytest.raises(mx.InputError, match=r"Chimera: cache must be \(conv_state, ssm_state\)"):
        m(torch.randn(2, 3, 5, 6), cache=conv_state)
    with pytest.raises(mx.InputError, match=r"allocate_inference_cache: n_variates=0 must be a positive integer"):
        m.allocate_inference_cache(2, 0)
