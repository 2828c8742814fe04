"""Lowerings of the 2-D (Roesser) state space model in torch ops, on the canonical grid layout.

    x (b, V, L, H, P)    B1, C1, B2, C2 (b, V, L, G, N)    (head h reads group h // (H // G))
    log_a1, a2, a3, log_a4: None | per head (b, V, L, H) | per state (b, V, L, H, N)
    scale1, scale2: None | (b, V, L, H)       (size-1 axes broadcast in every input)
    initial_state None | (h1, h2), each (b, V, H, P, N): the column before position 0
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
- `grid`: row by row along v, each row a chunked 1-D scan along l (`scan`); with ``a2`` or ``a3``
  absent, two batched 1-D scans and no loop over rows. Work and memory linear in V * L.
- `fft2`: transitions constant over the grid: the states are 2-D causal convolutions of the inputs
  with the impulse response of the transitions (FFTs of size (2V, 2L)).
- `step`: one position along l (L == 1) for every variate: h1 elementwise, then h2 a scan along v.
"""

from __future__ import annotations

import math

import torch

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


def _operands(x, B1, C1, B2, C2, log_a1, a2, a3, log_a4, scale1, scale2):
    """Every input in canonical, full shape: a dict (``la1, a2, a3, la4`` (b, V, L, H, 1|N) or None,
    ``B1, C1, B2, C2`` (b, V, L, H, N), ``s1, s2`` (b, V, L, H) or None)."""
    b, V, L, H, P = x.shape
    N = B1.shape[-1]
    return dict(B1=_per_head(B1, H).expand(b, V, L, H, N), C1=_per_head(C1, H).expand(b, V, L, H, N),
                B2=_per_head(B2, H).expand(b, V, L, H, N), C2=_per_head(C2, H).expand(b, V, L, H, N),
                la1=_coef(log_a1, b, V, L, H, N), a2=_coef(a2, b, V, L, H, N),
                a3=_coef(a3, b, V, L, H, N), la4=_coef(log_a4, b, V, L, H, N),
                s1=_scale(scale1, b, V, L, H), s2=_scale(scale2, b, V, L, H))


def _scaled(x, s):
    return x if s is None else x * s[..., None]


# -- reference: the lattice-path matrix --------------------------------------------------------


def _one_step(o, b, V, L, H):
    """A (b, H, K, 2VL, 2VL), K = 1 (per head) or N (per state): the single-step transition matrix of
    the stacked state, index ``s * V * L + v * L + t`` (s = 0: h1, s = 1: h2). Row = the cell a step
    lands on, column = the cell it leaves: a step along t lands in h1 (factor exp(log_a1) from h1,
    a2 from h2), a step along v lands in h2 (a3 from h1, exp(log_a4) from h2)."""
    K = max([1] + [o[k].shape[-1] for k in ("la1", "a2", "a3", "la4") if o[k] is not None])
    like = o["B1"]
    n = V * L
    A = like.new_zeros(b, H, K, 2 * n, 2 * n)

    def factor(key, exp):  # (b, H, K, V, L)
        t = o[key]
        if t is None:
            return like.new_ones(b, H, K, V, L) if exp else None
        t = t.exp() if exp else t
        return t.expand(b, V, L, H, K).permute(0, 3, 4, 1, 2)

    idx = torch.arange(n, device=like.device).view(V, L)
    here_t, back_t = idx[:, 1:].reshape(-1), idx[:, :-1].reshape(-1)  # (v, t) <- (v, t-1)
    here_v, back_v = idx[1:, :].reshape(-1), idx[:-1, :].reshape(-1)  # (v, t) <- (v-1, t)
    moves = [(factor("la1", True), 0, 0, here_t, back_t, (slice(None), slice(1, None))),
             (factor("a2", False), 0, 1, here_t, back_t, (slice(None), slice(1, None))),
             (factor("a3", False), 1, 0, here_v, back_v, (slice(1, None), slice(None))),
             (factor("la4", True), 1, 1, here_v, back_v, (slice(1, None), slice(None)))]
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
                scale2=None, initial_state=None, chunk_size=None):
    """``(M, None)``: M (b, H, V*L, V*L) with ``y = M x`` over the flattened grid (index v*L + t);
    ``x`` gives only the shapes; the initial state's contribution is not part of M."""
    b, V, L, H, P = x.shape
    o = _operands(x, B1, C1, B2, C2, log_a1, a2, a3, log_a4, scale1, scale2)
    return _matrix(o, b, V, L, H)[0], None


def _injection(o, initial_state, b, V, H):
    """What the initial column adds to h1 at t = 0: exp(log_a1) h1_0 + a2 h2_0, (b, V, H, P, N)."""
    h1_0, h2_0 = initial_state
    first = h1_0 if o["la1"] is None else o["la1"][:, :, 0, :, None, :].exp() * h1_0
    if o["a2"] is not None:
        first = first + o["a2"][:, :, 0, :, None, :] * h2_0
    return first


def reference(x, B1, C1, B2, C2, log_a1=None, a2=None, a3=None, log_a4=None, scale1=None, scale2=None,
              initial_state=None, chunk_size=None):
    b, V, L, H, P = x.shape
    N = B1.shape[-1]
    n = V * L
    o = _operands(x, B1, C1, B2, C2, log_a1, a2, a3, log_a4, scale1, scale2)
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
              initial_state=None, chunk_size=None):
    b, V, L, H, P = x.shape
    N = B1.shape[-1]
    o = _operands(x, B1, C1, B2, C2, log_a1, a2, a3, log_a4, scale1, scale2)
    x1, x2 = _scaled(x, o["s1"]), _scaled(x, o["s2"])
    zero = x.new_zeros(b, H, P, N)

    def at(key, v, t, exp=False):  # a coefficient at cell (v, t), (b, H, 1, 1|N); None: absent
        c = o[key]
        if c is None:
            return None
        c = c[:, v, t, :, None, :]
        return c.exp() if exp else c

    ys, last1, last2 = [], [], []
    up1 = up2 = None  # the previous row's states, one per position
    for v in range(V):
        h1 = zero if initial_state is None else initial_state[0][:, v]
        h2 = zero if initial_state is None else initial_state[1][:, v]
        row1, row2 = [], []
        for t in range(L):
            n1 = x1[:, v, t, :, :, None] * o["B1"][:, v, t, :, None, :]
            n1 = n1 + (h1 if o["la1"] is None else at("la1", v, t, True) * h1)
            if o["a2"] is not None:
                n1 = n1 + at("a2", v, t) * h2
            n2 = x2[:, v, t, :, :, None] * o["B2"][:, v, t, :, None, :]
            if v > 0:
                if o["a3"] is not None:
                    n2 = n2 + at("a3", v, t) * up1[t]
                n2 = n2 + (up2[t] if o["la4"] is None else at("la4", v, t, True) * up2[t])
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


# -- grid: row by row, or two batches of 1-D scans ---------------------------------------------


def _rows(o, x):
    """The inputs in the row-major layout (b, H, V, L, ...) the grid schedule works in: ``u(c, rows,
    cols)`` the input of state c (1, 2) on a block of cells, a fresh (b, H, r, T, P, N); the coefficient
    grids (b, H, V, L, 1, K) (``la1``, ``la4`` the log-decays, ``f4`` = exp(log_a4)); ``C1``, ``C2``
    (b, H, V, L, N, 1)."""
    xs = x.permute(0, 3, 1, 2, 4)  # (b, H, V, L, P)

    def coef(key, exp=False):
        t = o[key]
        if t is None:
            return None
        return (t.exp() if exp else t).permute(0, 3, 1, 2, 4).unsqueeze(-2)

    gens = {k: o[k].permute(0, 3, 1, 2, 4) for k in ("B1", "B2", "C1", "C2")}  # (b, H, V, L, N)
    scales = {k: None if o[k] is None else o[k].permute(0, 3, 1, 2)[..., None] for k in ("s1", "s2")}

    def u(c, rows, cols):
        xr = xs[:, :, rows, cols]
        s = scales[f"s{c}"]
        if s is not None:
            xr = xr * s[:, :, rows, cols]
        return xr[..., None] * gens[f"B{c}"][:, :, rows, cols, None, :]

    return dict(u=u, la1=coef("la1"), a2=coef("a2"), a3=coef("a3"), la4=coef("la4"), f4=coef("la4", True),
                C1=gens["C1"][..., None], C2=gens["C2"][..., None])


def _at(t, rows, cols):
    return None if t is None else t[:, :, rows, cols]


def _states(g, V, cols, h1_0, h2_0, Q, emit):
    """The grid schedule on the columns ``cols`` (a slice along l) from the column before them
    (h1_0, h2_0 (b, H, V, P, N), or None: zeros); ``emit(rows, h1, h2)`` sees the states of a slice
    of rows (b, H, r, T, P, N) and returns what the caller keeps, in order. Coupled (a2 and a3
    present): one row at a time; the row above is known, so h2 of the whole row is elementwise and
    h1 is one 1-D scan along l whose input carries a2 h2[t-1]. Decoupled: h1 (a2 absent) or h2 (a3
    absent) first for every row at once, then the other one, each one batched 1-D scan."""
    u, every = g["u"], slice(None)
    if g["a2"] is None:  # h1 needs nothing of h2: scan every row along l, then every column along v
        h1 = scan(u(1, every, cols), _at(g["la1"], every, cols), h1_0, Q)
        w2 = u(2, every, cols)
        if g["a3"] is not None:
            w2[:, :, 1:].addcmul_(_at(g["a3"], slice(1, None), cols), h1[:, :, :-1])
        h2 = scan(w2.transpose(2, 3), _t(_at(g["la4"], every, cols)), None, Q).transpose(2, 3)
        return [emit(every, h1, h2)]
    if g["a3"] is None:  # h2 needs nothing of h1: scan every column along v, then every row along l
        h2 = scan(u(2, every, cols).transpose(2, 3), _t(_at(g["la4"], every, cols)), None, Q).transpose(2, 3)
        w1 = _plus_later(u(1, every, cols), _at(g["a2"], every, cols), h2, h2_0)
        h1 = scan(w1, _at(g["la1"], every, cols), h1_0, Q)
        return [emit(every, h1, h2)]
    out = []
    h1 = h2 = None
    for v in range(V):
        rows = slice(v, v + 1)
        w2 = u(2, rows, cols)
        if v > 0:  # the row above, at the same positions
            w2.addcmul_(_at(g["a3"], rows, cols), h1)
            w2 = w2.add_(h2) if g["f4"] is None else w2.addcmul_(_at(g["f4"], rows, cols), h2)
        h2 = w2
        w1 = _plus_later(u(1, rows, cols), _at(g["a2"], rows, cols), h2, None if h2_0 is None else h2_0[:, :, rows])
        h1 = scan(w1, _at(g["la1"], rows, cols), None if h1_0 is None else h1_0[:, :, rows], Q)
        out.append(emit(rows, h1, h2))
    return out


def _t(t):
    return None if t is None else t.transpose(2, 3)


def _plus_later(w, a, h, h_0):
    """w + a * (h one position later along l (dim 3), the column before (``h_0``) or zeros in front),
    in place on the fresh tensor ``w``."""
    w[:, :, :, 1:].addcmul_(a[:, :, :, 1:], h[:, :, :, :-1])
    if h_0 is not None:
        w[:, :, :, :1].addcmul_(a[:, :, :, :1], h_0.unsqueeze(3))
    return w


def _initial(initial_state):
    """(h1_0, h2_0) in the row-major layout (b, H, V, P, N), or (None, None)."""
    if initial_state is None:
        return None, None
    return tuple(s.transpose(1, 2) for s in initial_state)


# state elements a column block of the grid schedule holds per row (coupled) or in all (decoupled):
# small enough that its temporaries stay in cache and in malloc's reusable heap
BLOCK_ELEMENTS = 1 << 20


def columns(L, per_column, Q):
    """The column blocks (slices along l) of the grid schedule: a multiple of Q columns each, about
    BLOCK_ELEMENTS // per_column of them."""
    width = max(Q, BLOCK_ELEMENTS // max(per_column, 1) // Q * Q)
    return [slice(c, min(L, c + width)) for c in range(0, L, width)]


def grid(x, B1, C1, B2, C2, log_a1=None, a2=None, a3=None, log_a4=None, scale1=None, scale2=None,
         initial_state=None, chunk_size=16):
    """Column blocks, left to right, each from the last column of the one before (the final state of
    a block is the initial state of the next); inside a block `_states`."""
    b, V, L, H, P = x.shape
    N = B1.shape[-1]
    Q = chunk_size or 16
    o = _operands(x, B1, C1, B2, C2, log_a1, a2, a3, log_a4, scale1, scale2)
    g = _rows(o, x)
    h1_0, h2_0 = _initial(initial_state)
    decoupled = o["a2"] is None or o["a3"] is None
    ys = []
    for cols in columns(L, b * H * P * N * (V if decoupled else 1), Q):
        def emit(rows, h1, h2):  # y (b, H, r, T, P) and the last column's states
            y = (h1 @ _at(g["C1"], rows, cols)).squeeze(-1) + (h2 @ _at(g["C2"], rows, cols)).squeeze(-1)
            return y, h1[:, :, :, -1], h2[:, :, :, -1]

        y, h1_0, h2_0 = (torch.cat(t, dim=2) for t in zip(*_states(g, V, cols, h1_0, h2_0, Q, emit)))
        ys.append(y)
    y = torch.cat(ys, dim=3) if len(ys) > 1 else ys[0]
    return y.permute(0, 2, 3, 1, 4), (h1_0.transpose(1, 2), h2_0.transpose(1, 2))


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


def impulse_response(x, B1, log_a1=None, a2=None, a3=None, log_a4=None, chunk_size=16):
    """The kernels of the LTI 2-D system: G (b, H, 2, 2, V, L, K), G[:, :, a, c, i, j] the state a
    at cell (i, j) after a unit input into state c at cell (0, 0) (zero state everywhere else).
    ``x`` and ``B1`` give the shapes; the transitions must be constant over the grid."""
    b, V, L, H, P = x.shape
    N = B1.shape[-1]
    co = {}
    for key, name, t in (("la1", "log_a1", log_a1), ("a2", "a2", a2), ("a3", "a3", a3), ("la4", "log_a4", log_a4)):
        t = _coef(t, b, V, L, H, N)
        co[key] = None if t is None else _constant_over_grid(t, name).expand(b, V, L, H, t.shape[-1])
    K = max([1] + [t.shape[-1] for t in co.values() if t is not None])
    one = x.new_ones(b, V, L, H, K)
    # two channels (in the value dim): the unit input of h1 in channel 0, that of h2 in channel 1
    imp = torch.zeros(2, V, L, 2, 1, dtype=x.dtype, device=x.device)
    imp[0, 0, 0, 0] = imp[1, 0, 0, 1] = 1.0
    o = dict(co, B1=one, B2=one, C1=one, C2=one, s1=None, s2=None)
    g = _rows(o, x.new_zeros(b, V, L, H, 2))
    g["u"] = lambda c, rows, cols: imp[c - 1, rows, cols].expand(b, H, -1, -1, 2, K).clone()  # fresh: added to in place
    states = _states(g, V, slice(None), None, None, chunk_size, lambda rows, h1, h2: (h1, h2))
    h1, h2 = (torch.cat(t, dim=2) for t in zip(*states))  # (b, H, V, L, 2 sources, K)
    return torch.stack([h1, h2], dim=2).permute(0, 1, 2, 5, 3, 4, 6)  # (b, H, a, c, V, L, K)


def fft2(x, B1, C1, B2, C2, log_a1=None, a2=None, a3=None, log_a4=None, scale1=None, scale2=None,
         initial_state=None, chunk_size=None):
    """h_a = sum_c G[a, c] (*) u_c, a 2-D causal convolution per (p, n) channel with the impulse
    response G (`impulse_response`) of FFT size (2V, 2L); u_c = scale_c x B_c may vary over the
    grid; the initial column enters as an input to h1 at t = 0."""
    b, V, L, H, P = x.shape
    N = B1.shape[-1]
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
         initial_state=None, chunk_size=16):
    """One column (L == 1) for every variate from the state of the column before: h1 is elementwise,
    then h2 is a 1-D scan along v (`scan`) whose input carries a3 h1[v-1]."""
    b, V, L, H, P = x.shape
    if L != 1:
        raise ValueError(f"step: decodes one position along l, got x with {L} positions (dims b, v, l, h, p); "
                         f"pass one position, or run the grid lowering on the whole sequence")
    N = B1.shape[-1]
    o = {k: None if t is None else t[:, :, 0]
         for k, t in _operands(x, B1, C1, B2, C2, log_a1, a2, a3, log_a4, scale1, scale2).items()}
    x0 = x[:, :, 0]  # (b, V, H, P)
    if initial_state is None:
        h1_0 = h2_0 = x.new_zeros(b, V, H, P, N)
    else:
        h1_0, h2_0 = initial_state
    h1 = _scaled(x0, o["s1"])[..., None] * o["B1"][..., None, :]
    h1 = h1 + (h1_0 if o["la1"] is None else o["la1"].exp()[..., None, :] * h1_0)
    if o["a2"] is not None:
        h1 = h1 + o["a2"][..., None, :] * h2_0
    w2 = _scaled(x0, o["s2"])[..., None] * o["B2"][..., None, :]
    if o["a3"] is not None:
        w2 = w2 + o["a3"][..., None, :] * torch.cat([torch.zeros_like(h1[:, :1]), h1[:, :-1]], dim=1)
    la4 = None if o["la4"] is None else o["la4"].transpose(1, 2)[..., None, :]  # (b, H, V, 1, K)
    h2 = scan(w2.transpose(1, 2), la4, None, chunk_size or 16).transpose(1, 2)
    y = (h1 * o["C1"][..., None, :]).sum(-1) + (h2 * o["C2"][..., None, :]).sum(-1)
    return y.unsqueeze(2), (h1, h2)
