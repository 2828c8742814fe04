"""Lowerings of the 2-D (Roesser) state space model in torch ops, on the canonical grid layout.

    x (b, V, L, H, P)    B1, C1, B2, C2 (b, V, L, G, N)    (head h reads group h // (H // G))
    log_a1, a2, a3, log_a4: None | per head (b, V, L, H) | per state (b, V, L, H, N)
    scale1, scale2: None | (b, V, L, H)       (size-1 axes broadcast in every input)
    initial_state None | (h1, h2), each (b, V, H, P, N): the column before position 0
    seq_idx None | (b, L) integer segment ids along l, shared by every variate (`_keep`; fft2 refuses them)
    returns y (b, V, L, H, P), final_state (h1[:, :, L-1], h2[:, :, L-1]), each (b, V, H, P, N)

Per batch row, head, value channel p and state n, with zero states beyond the first row:

    h1[v,t] = exp(log_a1[v,t]) h1[v,t-1] + a2[v,t] h2[v,t-1] + scale1[v,t] x[v,t,p] B1[v,t,n]
    h2[v,t] = a3[v,t] h1[v-1,t] + exp(log_a4[v,t]) h2[v-1,t] + scale2[v,t] x[v,t,p] B2[v,t,n]
    y[v,t,p] = sum_n h1[v,t] C1[v,t,n] + h2[v,t] C2[v,t,n]

A missing ``log_a1``/``log_a4`` is 0 (factor 1), a missing ``a2``/``a3`` is 0 (no coupling), a
missing scale is 1. docs/grid2d.md derives every lowering from the math.

- `reference`: M over the flattened grid (index v*L + t) from the lattice-path sum: G = sum_k A^k,
  A the one-step transition matrix of the (2 V L)-dim stacked state, M = C G B; the oracle.
- `recurrent`: cell by cell in the recurrence order.
- `grid`: the anti-diagonal wavefront (`Wave`): V + L - 1 steps, each updating every cell with
  v + t = k at once. Work and memory linear in V * L.
- `fft2`: transitions constant over the grid: the states are 2-D causal convolutions of the inputs
  with the impulse response of the transitions (FFTs of size (2V, 2L)).
- `step`: one position along l (L == 1) for every variate: h1 elementwise, then h2 a scan along v.
"""

from __future__ import annotations

import math

import torch

from mixerc.rt.native import usable
from mixerc.rt.segments import continues

from . import native
from .wave import OPS, Wave, skew, unskew

# -- the canonical inputs, normalised ----------------------------------------------------------


def _per_head(t, H):
    """B or C (b, V, L, G, N) read by every head: (b, V, L, H, N)."""
    return t if t.shape[3] == H else t.repeat_interleave(H // t.shape[3], dim=3)


def _coef(t, b, V, L, H, N):
    """A coefficient as (b, V, L, H, 1) (per head) or (b, V, L, H, N) (per state); None stays None."""
    if t is None:
        return None
    if t.dim() == 5:
        return t.expand(b, V, L, H, N)
    return t.expand(b, V, L, H).unsqueeze(-1)


def _scale(t, b, V, L, H):
    return None if t is None else t.expand(b, V, L, H)


def _keep(seq_idx, dtype):
    """(b, 1, L, 1): 0 at the positions where a segment starts (the id changes), else 1; None without
    segments. A segment start cuts both terms of h1 that come from the position before."""
    keep = continues(seq_idx, dtype)
    return None if keep is None else keep[:, None, :, None]


def _factors(log_a1, a2, a3, log_a4, keep):
    """The factors of the four moves (docs/grid2d.md's table): ``f1 = exp(log_a1)``, ``a2``, ``a3``,
    ``f4 = exp(log_a4)``, None where absent (f1, f4: 1; a2, a3: 0); the two moves along l (f1, a2)
    are zero where ``keep`` (`_keep`) is."""
    def cut(t, one):
        if keep is None or (t is None and not one):
            return t
        return keep if t is None else t * (keep if t.dim() == 4 else keep[..., None])

    return dict(f1=cut(None if log_a1 is None else log_a1.exp(), True), a2=cut(a2, False), a3=a3,
                f4=None if log_a4 is None else log_a4.exp())


def _operands(x, B1, C1, B2, C2, log_a1, a2, a3, log_a4, scale1, scale2, seq_idx=None):
    """Every input in canonical, full shape: a dict (the factors ``f1, a2, a3, f4`` (b, V, L, H, 1|N)
    or None (`_factors`), ``B1, C1, B2, C2`` (b, V, L, H, N), ``s1, s2`` (b, V, L, H) or None)."""
    b, V, L, H, P = x.shape
    N = B1.shape[-1]
    f = _factors(log_a1, a2, a3, log_a4, _keep(seq_idx, x.dtype))
    return dict(B1=_per_head(B1, H).expand(b, V, L, H, N), C1=_per_head(C1, H).expand(b, V, L, H, N),
                B2=_per_head(B2, H).expand(b, V, L, H, N), C2=_per_head(C2, H).expand(b, V, L, H, N),
                s1=_scale(scale1, b, V, L, H), s2=_scale(scale2, b, V, L, H),
                **{k: _coef(t, b, V, L, H, N) for k, t in f.items()})


def _scaled(x, s):
    return x if s is None else x * s[..., None]


# -- reference: the lattice-path matrix --------------------------------------------------------


def _one_step(o, b, V, L, H):
    """A (b, H, K, 2VL, 2VL), K = 1 (per head) or N (per state): the single-step transition matrix of
    the stacked state, index ``s * V * L + v * L + t`` (s = 0: h1, s = 1: h2). Row = the cell a step
    lands on, column = the cell it leaves: a step along t lands in h1 (factor exp(log_a1) from h1,
    a2 from h2), a step along v lands in h2 (a3 from h1, exp(log_a4) from h2)."""
    K = max([1] + [o[k].shape[-1] for k in ("f1", "a2", "a3", "f4") if o[k] is not None])
    like = o["B1"]
    n = V * L
    A = like.new_zeros(b, H, K, 2 * n, 2 * n)

    def factor(key, one):  # (b, H, K, V, L); absent: 1 (``one``) or None
        t = o[key]
        if t is None:
            return like.new_ones(b, H, K, V, L) if one else None
        return t.expand(b, V, L, H, K).permute(0, 3, 4, 1, 2)

    idx = torch.arange(n, device=like.device).view(V, L)
    here_t, back_t = idx[:, 1:].reshape(-1), idx[:, :-1].reshape(-1)  # (v, t) <- (v, t-1)
    here_v, back_v = idx[1:, :].reshape(-1), idx[:-1, :].reshape(-1)  # (v, t) <- (v-1, t)
    moves = [(factor("f1", True), 0, 0, here_t, back_t, (slice(None), slice(1, None))),
             (factor("a2", False), 0, 1, here_t, back_t, (slice(None), slice(1, None))),
             (factor("a3", False), 1, 0, here_v, back_v, (slice(1, None), slice(None))),
             (factor("f4", True), 1, 1, here_v, back_v, (slice(1, None), slice(None)))]
    for f, dst, src, rows, cols, cells in moves:
        if f is not None:
            A[..., dst * n + rows, src * n + cols] = f[..., cells[0], cells[1]].reshape(b, H, K, -1)
    return A


def paths(o, b, V, L, H):
    """G (b, H, K, 2VL, 2VL) = sum over k of A^k: G[(a, v, t), (c, v', t')] sums, over the monotone
    lattice paths from (v', t') to (v, t) that leave state c and land in state a, the product of
    the factors of their steps (the empty path: 1 when a == c). Paths have at most V + L - 2 steps."""
    A = _one_step(o, b, V, L, H)
    G = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand_as(A)
    power = G
    for _ in range(V + L - 2):
        power = A @ power  # the sum over paths of exactly k steps
        G = G + power
    return G


def _stacked(o, V, L, key1, key2):
    """(b, H, 2VL, N): the state-1 generator over the grid, then the state-2 one."""
    b, H, N = o[key1].shape[0], o[key1].shape[3], o[key1].shape[4]
    return torch.stack([o[key1], o[key2]], dim=1).permute(0, 4, 1, 2, 3, 5).reshape(b, H, 2 * V * L, N)


def _matrix(o, b, V, L, H):
    """M (b, H, VL, VL) and G: M[i, j] = sum_n sum_{a, c} C_a[i, n] G_n[(a, i), (c, j)] s_c[j] B_c[j, n]."""
    G = paths(o, b, V, L, H)
    n = V * L
    Bst = _stacked(dict(o, B1=_scaled(o["B1"], o["s1"]), B2=_scaled(o["B2"], o["s2"])), V, L, "B1", "B2")
    Cst = _stacked(o, V, L, "C1", "C2")  # (b, H, 2n, N)
    if G.shape[2] == 1:
        M = (Cst @ Bst.transpose(-1, -2)) * G[:, :, 0]  # (b, H, 2n, 2n)
    else:
        M = torch.einsum("zhin,zhnij,zhjn->zhij", Cst, G, Bst)
    return M.view(b, H, 2, n, 2, n).sum((2, 4)), G


def materialize(x, B1, C1, B2, C2, log_a1=None, a2=None, a3=None, log_a4=None, scale1=None,
                scale2=None, initial_state=None, seq_idx=None, chunk_size=None):
    """``(M, None)``: M (b, H, V*L, V*L) with ``y = M x`` over the flattened grid (index v*L + t);
    ``x`` gives only the shapes; the initial state's contribution is not part of M."""
    b, V, L, H, P = x.shape
    o = _operands(x, B1, C1, B2, C2, log_a1, a2, a3, log_a4, scale1, scale2, seq_idx)
    return _matrix(o, b, V, L, H)[0], None


def _injection(o, initial_state, b, V, H):
    """What the initial column adds to h1 at t = 0: exp(log_a1) h1_0 + a2 h2_0, (b, V, H, P, N)."""
    h1_0, h2_0 = initial_state
    first = h1_0 if o["f1"] is None else o["f1"][:, :, 0, :, None, :] * h1_0
    if o["a2"] is not None:
        first = first + o["a2"][:, :, 0, :, None, :] * h2_0
    return first


def reference(x, B1, C1, B2, C2, log_a1=None, a2=None, a3=None, log_a4=None, scale1=None, scale2=None,
              initial_state=None, seq_idx=None, chunk_size=None):
    b, V, L, H, P = x.shape
    N = B1.shape[-1]
    n = V * L
    o = _operands(x, B1, C1, B2, C2, log_a1, a2, a3, log_a4, scale1, scale2, seq_idx)
    M, G = _matrix(o, b, V, L, H)
    xf = x.reshape(b, n, H, P)
    y = torch.einsum("zhij,zjhp->zihp", M, xf)
    # states over the whole grid: S[(a, i)] = sum_{(c, j)} G[(a, i), (c, j)] u_c[j], u_c = s_c x B_c
    u = torch.stack([_scaled(x, o["s1"])[..., None] * o["B1"][..., None, :],
                     _scaled(x, o["s2"])[..., None] * o["B2"][..., None, :]], dim=1)  # (b, 2, V, L, H, P, N)
    if initial_state is not None:  # the initial column enters as an input to h1 at t = 0
        inj = torch.zeros_like(u)
        inj[:, 0, :, 0] = _injection(o, initial_state, b, V, H)
        inj = inj.permute(0, 4, 1, 2, 3, 5, 6).reshape(b, H, 2 * n, P, N)
        Ginj = torch.einsum("zhkij,zhjpn->zhipn", G, inj) if G.shape[2] == 1 else \
            torch.einsum("zhnij,zhjpn->zhipn", G, inj)
        Cst = _stacked(o, V, L, "C1", "C2")  # (b, H, 2n, N)
        yi = torch.einsum("zhipn,zhin->zhip", Ginj, Cst).view(b, H, 2, n, P).sum(2)
        y = y + yi.permute(0, 2, 1, 3)
    u = u.permute(0, 4, 1, 2, 3, 5, 6).reshape(b, H, 2 * n, P, N)
    if initial_state is not None:
        u = u + inj
    last = torch.cat([torch.arange(V) * L + L - 1, n + torch.arange(V) * L + L - 1]).to(x.device)
    Gl = G[..., last, :]  # (b, H, K, 2V, 2n): rows of the last column
    S = torch.einsum("zhkij,zhjpn->zhipn", Gl, u) if Gl.shape[2] == 1 else torch.einsum("zhnij,zhjpn->zhipn", Gl, u)
    S = S.view(b, H, 2, V, P, N).permute(2, 0, 3, 1, 4, 5)  # (2, b, V, H, P, N)
    return y.reshape(b, V, L, H, P), (S[0], S[1])


# -- recurrent: cell by cell -------------------------------------------------------------------


def recurrent(x, B1, C1, B2, C2, log_a1=None, a2=None, a3=None, log_a4=None, scale1=None, scale2=None,
              initial_state=None, seq_idx=None, chunk_size=None):
    b, V, L, H, P = x.shape
    N = B1.shape[-1]
    o = _operands(x, B1, C1, B2, C2, log_a1, a2, a3, log_a4, scale1, scale2, seq_idx)
    x1, x2 = _scaled(x, o["s1"]), _scaled(x, o["s2"])
    zero = x.new_zeros(b, H, P, N)

    def at(key, v, t):  # a factor at cell (v, t), (b, H, 1, 1|N)
        return o[key][:, v, t, :, None, :]

    ys, last1, last2 = [], [], []
    up1 = up2 = None  # the previous row's states, one per position
    for v in range(V):
        h1 = zero if initial_state is None else initial_state[0][:, v]
        h2 = zero if initial_state is None else initial_state[1][:, v]
        row1, row2 = [], []
        for t in range(L):
            n1 = x1[:, v, t, :, :, None] * o["B1"][:, v, t, :, None, :]
            n1 = n1 + (h1 if o["f1"] is None else at("f1", v, t) * h1)
            if o["a2"] is not None:
                n1 = n1 + at("a2", v, t) * h2
            n2 = x2[:, v, t, :, :, None] * o["B2"][:, v, t, :, None, :]
            if v > 0:
                if o["a3"] is not None:
                    n2 = n2 + at("a3", v, t) * up1[t]
                n2 = n2 + (up2[t] if o["f4"] is None else at("f4", v, t) * up2[t])
            h1, h2 = n1, n2
            row1.append(h1)
            row2.append(h2)
            ys.append((h1 * o["C1"][:, v, t, :, None, :]).sum(-1) + (h2 * o["C2"][:, v, t, :, None, :]).sum(-1))
        up1, up2 = row1, row2
        last1.append(h1)
        last2.append(h2)
    y = torch.stack(ys, dim=1).view(b, V, L, H, P)
    return y, (torch.stack(last1, dim=1), torch.stack(last2, dim=1))


# -- the chunked 1-D scan ----------------------------------------------------------------------


def _bounds(dtype):
    """Exponents kept in the normal range (below: subnormals, ~10x slower on CPUs; above: inf)."""
    info = torch.finfo(dtype)
    return math.log(info.tiny) + 2.0, math.log(info.max) - 2.0


def _block(w, cs):
    """Within one block, from a zero state: h_i = sum_{j <= i} exp(cs_i - cs_j) w_j.
    w (..., Q, P, N), cs (..., Q, 1, K) the running sum of the log-decays, K in (1, N)."""
    Q = w.shape[-3]
    c2 = cs[..., 0, :]  # (..., Q, K)
    lo, hi = _bounds(w.dtype)
    causal = torch.ones(Q, Q, dtype=torch.bool, device=w.device).tril()
    seg = (c2[..., :, None, :] - c2[..., None, :, :]).clamp(lo, hi)  # (..., Q_i, Q_j, K)
    D = seg.exp().masked_fill(~causal[:, :, None], 0.0)
    if D.shape[-1] == 1:  # one decay per head: one (Q, Q) matrix for every (p, n)
        return (D[..., 0] @ w.flatten(-2)).view(w.shape)
    return (D.movedim(-1, -3) @ w.movedim(-1, -3)).movedim(-3, -1)  # one (Q, Q) matrix per n


def scan(w, la=None, h0=None, chunk_size=16):
    """The 1-D linear scan along dim -3: h_t = exp(la_t) h_{t-1} + w_t, h_{-1} = h0 (zero if None).

    w (..., T, P, N); la None (no decay) or (..., T, 1, K), K in (1, N); h0 None or (..., P, N).
    Returns h (..., T, P, N). Chunks of Q positions: inside a chunk a (Q, Q) matrix of
    exp(segment sums of la) applied to w (`_block`); the states at the chunk ends form a scan of
    length T / Q with the chunks' total log-decays, solved by the same function (recursively), then
    entering states reach every position with exp(running sum within the chunk). Work O(T Q P N),
    no exponent above one chunk's sum, no Python loop over T."""
    T = w.shape[-3]
    Q = max(int(chunk_size), 2)
    if la is None:
        la = w.new_zeros(w.shape[:-3] + (T, 1, 1))
    la = la.expand(w.shape[:-3] + la.shape[-3:])
    if T <= Q:
        cs = la.cumsum(-3)
        h = _block(w, cs)
        return h if h0 is None else h + cs.clamp_min(_bounds(w.dtype)[0]).exp() * h0.unsqueeze(-3)
    pad = (-T) % Q
    if pad:  # zero inputs and zero log-decays at the end change nothing before them
        w = torch.cat([w, w.new_zeros(w.shape[:-3] + (pad,) + w.shape[-2:])], dim=-3)
        la = torch.cat([la, la.new_zeros(la.shape[:-3] + (pad,) + la.shape[-2:])], dim=-3)
    c = (T + pad) // Q
    wc = w.unflatten(-3, (c, Q))  # (..., c, Q, P, N)
    cs = la.unflatten(-3, (c, Q)).cumsum(-3)  # (..., c, Q, 1, K)
    own = _block(wc, cs)  # every chunk from a zero state
    ends = scan(own[..., -1, :, :].clone(), cs[..., -1, :, :], h0, Q)  # (..., c, P, N): after chunk k
    first = ends.new_zeros(ends.shape[:-3] + (1,) + ends.shape[-2:]) if h0 is None else h0.unsqueeze(-3)
    enter = torch.cat([first, ends[..., :-1, :, :]], dim=-3)  # the state entering chunk k
    h = own.addcmul_(cs.clamp_min(_bounds(w.dtype)[0]).exp(), enter.unsqueeze(-3)).flatten(-4, -3)
    return h if pad == 0 else h[..., :T, :, :]


# -- grid: the anti-diagonal wavefront (its engine, `Wave`, is in wave.py) ---------------------


def grid(x, B1, C1, B2, C2, log_a1=None, a2=None, a3=None, log_a4=None, scale1=None, scale2=None,
         initial_state=None, seq_idx=None, chunk_size=None):
    """The anti-diagonal wavefront (`Wave`): V + L - 1 steps, each a few elementwise ops over the
    states of up to min(V, L) cells; its backward runs the adjoint wavefront in reverse. On the CPU the
    fused C loops of `native` (forward, and the adjoint as its backward) run instead where they can be built."""
    b, V, L, H, P = x.shape
    G, N = B1.shape[3:]
    R = H // G
    f = _factors(log_a1, a2, a3, log_a4, _keep(seq_idx, x.dtype))
    if usable(x, B1, C1, B2, C2, *f.values(), scale1, scale2, *(initial_state or ())):
        out = native.run(x, B1, C1, B2, C2, f, scale1, scale2, initial_state)
        if out is not None:
            return out

    def value(t):  # (b, V, L, H, P) -> (b, V, L, P, 1, G, R)
        return t.unflatten(3, (G, R)).permute(0, 1, 2, 5, 3, 4).unsqueeze(4)

    def gen(t):  # (b, V, L, G, N) -> (b, V, L, 1, N, G, 1)
        return t.transpose(3, 4)[:, :, :, None, :, :, None]

    def factor(t):  # (b, V, L, H) or (b, V, L, H, N) -> (b, V, L, 1, 1|N, G, R)
        t = t if t.dim() == 5 else t.unsqueeze(-1)
        return t.expand(*t.shape[:3], H, t.shape[4]).unflatten(3, (G, R)).permute(0, 1, 2, 5, 3, 4).unsqueeze(3)

    def skewed(t, how):
        return None if t is None else skew(how(t), b, V, L)

    ops = dict(x=skewed(x, value), s1=skewed(scale1, factor), s2=skewed(scale2, factor),
               **{k: skewed(t, gen) for k, t in (("B1", B1), ("B2", B2), ("C1", C1), ("C2", C2))},
               **{k: skewed(t, factor) for k, t in f.items()})
    inject = None
    if initial_state is not None:
        first = _injection({k: _coef(f[k], b, V, L, H, N) for k in ("f1", "a2")}, initial_state, b, V, H)
        inject = first.unflatten(2, (G, R)).permute(4, 5, 2, 3, 1, 0)  # (P, N, G, R, V, b)
    Y, last1, last2 = Wave.apply(V, L, inject, *[ops[k] for k in OPS])
    y = unskew(Y, V, L)  # (b, V, L, P, G, R)
    final = tuple(s.permute(5, 0, 3, 4, 1, 2).reshape(b, V, H, P, N) for s in (last1, last2))
    return y.flatten(4).transpose(3, 4), final


# -- fft2: the LTI case as a 2-D causal convolution --------------------------------------------


def _constant_over_grid(t, name):
    """The coefficient at cell (0, 0), (b, 1, 1, H, K), after checking it is the same at every cell."""
    first = t[:, :1, :1]
    if not torch.equal(t, first.expand_as(t)):
        raise ValueError(f"fft2: {name} varies over the (v, l) grid; fft2 needs every transition "
                         f"coefficient (log_a1, a2, a3, log_a4) constant over v and l (a linear "
                         f"shift-invariant 2-D system): make them independent of v and l, or use "
                         f"the grid lowering")
    return first


def impulse_response(x, B1, log_a1=None, a2=None, a3=None, log_a4=None):
    """The kernels of the LTI 2-D system: G (b, H, 2, 2, V, L, K), G[:, :, a, c, i, j] the state a
    at cell (i, j) after a unit input into state c at cell (0, 0) (zero state everywhere else).
    ``x`` and ``B1`` give the shapes; the transitions must be constant over the grid. One `grid` run
    per (source state c, read state a, batch row, state k), each with P = N = 1: a unit input into
    state c (its scale 1, the other's 0), read through C_a = 1 (the other C 0)."""
    b, V, L, H, P = x.shape
    N = B1.shape[-1]
    coef = {}
    for name, t in (("log_a1", log_a1), ("a2", a2), ("a3", a3), ("log_a4", log_a4)):
        t = _coef(t, b, V, L, H, N)
        coef[name] = None if t is None else _constant_over_grid(t, name)  # (b, 1, 1, H, 1|N)
    K = max([1] + [t.shape[-1] for t in coef.values() if t is not None])
    rows = 4 * b * K  # (c, a, b, k)

    def spread(t):  # (b, 1, 1, H, 1|K) -> (rows, 1, 1, H)
        return t.expand(b, 1, 1, H, K).permute(0, 4, 1, 2, 3).expand(4, b, K, 1, 1, H).reshape(rows, 1, 1, H)

    eye = torch.eye(2, dtype=x.dtype, device=x.device)
    by_c = [eye[j].view(2, 1, 1, 1).expand(2, 2, b, K).reshape(rows, 1, 1, 1) for j in (0, 1)]
    by_a = [eye[j].view(1, 2, 1, 1).expand(2, 2, b, K).reshape(rows, 1, 1, 1, 1) for j in (0, 1)]
    unit = x.new_zeros(rows, V, L, H, 1)
    unit[:, 0, 0] = 1.0
    ones = x.new_ones(rows, 1, 1, 1, 1)
    y, _ = grid(unit, ones, by_a[0], ones, by_a[1], *[None if t is None else spread(t) for t in coef.values()],
                scale1=by_c[0].expand(rows, 1, 1, H), scale2=by_c[1].expand(rows, 1, 1, H))
    return y[..., 0].reshape(2, 2, b, K, V, L, H).permute(2, 6, 1, 0, 4, 5, 3)


def fft2(x, B1, C1, B2, C2, log_a1=None, a2=None, a3=None, log_a4=None, scale1=None, scale2=None,
         initial_state=None, seq_idx=None, chunk_size=None):
    """h_a = sum_c G[a, c] (*) u_c, a 2-D causal convolution per (p, n) channel with the impulse
    response G (`impulse_response`) of FFT size (2V, 2L); u_c = scale_c x B_c may vary over the
    grid; the initial column enters as an input to h1 at t = 0. No segments (``seq_idx``): a segment
    start makes the system vary along l."""
    if seq_idx is not None:
        raise ValueError("fft2: seq_idx (segments along l) makes the 2-D system shift-variant, not a "
                         "convolution; use the grid lowering for segments")
    b, V, L, H, P = x.shape
    G = impulse_response(x, B1, log_a1, a2, a3, log_a4)  # (b, H, 2, 2, V, L, K)
    o = _operands(x, B1, C1, B2, C2, log_a1, a2, a3, log_a4, scale1, scale2)
    U = torch.stack([_scaled(x, o["s1"])[..., None] * o["B1"][..., None, :],
                     _scaled(x, o["s2"])[..., None] * o["B2"][..., None, :]], dim=1)  # (b, 2, V, L, H, P, N)
    if initial_state is not None:
        U = U.clone()
        U[:, 0, :, 0] = U[:, 0, :, 0] + _injection(o, initial_state, b, V, H)
    size = (2 * V, 2 * L)
    Uf = torch.fft.rfft2(U.permute(0, 4, 1, 5, 6, 2, 3), s=size)  # (b, H, 2 c, P, N, 2V, L+1)
    Gf = torch.fft.rfft2(G.permute(0, 1, 2, 3, 6, 4, 5), s=size)  # (b, H, 2 a, 2 c, K, 2V, L+1)
    Sf = (Gf[:, :, :, :, None] * Uf[:, :, None]).sum(3)  # (b, H, 2 a, P, N, 2V, L+1)
    S = torch.fft.irfft2(Sf, s=size)[..., :V, :L]  # (b, H, 2, P, N, V, L): h1 and h2 over the grid
    C = torch.stack([o["C1"], o["C2"]], dim=1)  # (b, 2, V, L, H, N)
    y = torch.einsum("zhapnvl,zavlhn->zvlhp", S, C)
    last = S[..., L - 1].permute(2, 0, 5, 1, 3, 4)  # (2, b, V, H, P, N)
    return y, (last[0], last[1])


# -- step: one position along l ----------------------------------------------------------------


def step(x, B1, C1, B2, C2, log_a1=None, a2=None, a3=None, log_a4=None, scale1=None, scale2=None,
         initial_state=None, seq_idx=None, chunk_size=16):
    """One column (L == 1) for every variate from the state of the column before: h1 is elementwise,
    then h2 is a 1-D scan along v (`scan`) whose input carries a3 h1[v-1]."""
    b, V, L, H, P = x.shape
    if L != 1:
        raise ValueError(f"step: decodes one position along l, got x with {L} positions (dims b, v, l, h, p); "
                         f"pass one position, or run the grid lowering on the whole sequence")
    N = B1.shape[-1]
    o = {k: None if t is None else t[:, :, 0]
         for k, t in _operands(x, B1, C1, B2, C2, log_a1, a2, a3, log_a4, scale1, scale2, seq_idx).items()}
    x0 = x[:, :, 0]  # (b, V, H, P)
    if initial_state is None:
        h1_0 = h2_0 = x.new_zeros(b, V, H, P, N)
    else:
        h1_0, h2_0 = initial_state
    h1 = _scaled(x0, o["s1"])[..., None] * o["B1"][..., None, :]
    h1 = h1 + (h1_0 if o["f1"] is None else o["f1"][..., None, :] * h1_0)
    if o["a2"] is not None:
        h1 = h1 + o["a2"][..., None, :] * h2_0
    w2 = _scaled(x0, o["s2"])[..., None] * o["B2"][..., None, :]
    if o["a3"] is not None:
        w2 = w2 + o["a3"][..., None, :] * torch.cat([torch.zeros_like(h1[:, :1]), h1[:, :-1]], dim=1)
    # (b, H, V, 1, K)
    la4 = None if log_a4 is None else _coef(log_a4, b, V, 1, H, N)[:, :, 0].transpose(1, 2)[..., None, :]
    h2 = scan(w2.transpose(1, 2), la4, None, chunk_size or 16).transpose(1, 2)
    y = (h1 * o["C1"][..., None, :]).sum(-1) + (h2 * o["C2"][..., None, :]).sum(-1)
    return y.unsqueeze(2), (h1, h2)
