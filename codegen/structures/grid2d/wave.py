"""The 2-D grid's anti-diagonal wavefront with its own backward (`Wave`), the engine of the ``grid``
lowering in `torch_lowering` (which skews the operands into the step layout and reads the output back).
Copied with it into generated modules. The math and the measurements are in docs/grid2d.md,
"The wavefront (`grid`)".
"""

from __future__ import annotations

import torch

# Step k holds the cells with v + t = k, indexed along the shorter axis (i = v when V <= L, else i = t;
# I = min(V, L) cells per step, K = V + L - 1 steps). Every operand is "skewed" into the step layout
# (K, *rest, I, b) (`skew`), zero outside the grid, so a cell outside keeps a zero state and nothing
# needs a mask. A step's states are (P, N, G, R, I, b); the operands broadcast over their size-1 axes:
#
#     x (K, P, 1, G, R, I, b)         s1, s2 (K, 1, 1, G, R, I, b) or None (1); x1 = s1 x, x2 = s2 x
#     B1, B2, C1, C2 (K, 1, N, G, 1, I, b)
#     f1, a2, a3, f4 (K, 1, 1|N, G, R, I, b) or None (f1, f4: a factor 1; a2, a3: no coupling)
#
#     n1[k] = x1 B1 + f1 S1(h1[k-1]) + a2 S1(h2[k-1])     n2[k] = x2 B2 + a3 S2(h1[k-1]) + f4 S2(h2[k-1])
#     Y[k] = sum_n n1 C1 + n2 C2                             (P, G, R, I, b)
#
# S1 reads the same index (i = v) or index i - 1 (i = t), S2 the other way round. The forward keeps no
# state but two step buffers per state and, when a gradient is wanted, the states at the end of every
# block of `BLOCK` steps. The backward walks the blocks from the last: it runs the block's forward again
# from its checkpoint, keeping the block's states, then the adjoint recurrence (the transposed system, in
# reverse: docs/grid2d.md, "The adjoint recurrences") step by step, each step's operand gradients formed
# while its states are in cache. Memory with gradients: O(K / BLOCK + BLOCK) steps of state, not O(K).

BLOCK = 32  # steps per checkpoint block of the backward
OPS = ("x", "s1", "s2", "B1", "B2", "C1", "C2", "f1", "a2", "a3", "f4")


def unskew(Y, V, L):
    """(K, *rest, I, b) -> (b, V, L, *rest): the cells of the grid in the step layout (a view)."""
    K, I = Y.shape[0], Y.shape[-2]
    sk, *rest, si, sb = Y.stride()
    cells = Y.as_strided((Y.shape[-1], I, K - I + 1, *Y.shape[1:-2]), (sb, sk + si, sk, *rest), Y.storage_offset())
    return cells if V <= L else cells.transpose(1, 2)


def skew(t, b, V, L):
    """(b|1, V|1, L|1, *rest) -> (K, *rest, I, b), zero outside the grid: one copy into the cells' view,
    zeros into the two triangles of cells outside (the first and the last I - 1 steps)."""
    K, I = V + L - 1, min(V, L)
    out = t.new_empty(K, *t.shape[3:], I, b)
    for k in range(I - 1):  # before the copy, which autograd records once
        out[k, ..., k + 1:, :] = 0.0
        out[K - 1 - k, ..., :I - 1 - k, :] = 0.0
    unskew(out, V, L).copy_(t.expand(b, V, L, *t.shape[3:]))
    return out


def _shifts(V, L):
    """(S1, S2): whether the move along l (into h1) and the move along v (into h2) read index i - 1."""
    return V > L, V <= L


# the four moves (docs/grid2d.md's table): (factor, the state it lands in, the state it reads); an absent
# f1 or f4 is a factor 1, an absent a2 or a3 no move
MOVES = (("f1", 0, 0), ("a2", 0, 1), ("a3", 1, 0), ("f4", 1, 1))


def _moves(o, V, L):
    """Every move present: (its factor per step, cut to the cells it reaches (from index 1 when shifted), or
    None for a factor 1; the state it lands in; the state it reads; shifted)."""
    shift = _shifts(V, L)
    return [(None if o[c] is None else (o[c][..., 1:, :] if shift[d] else o[c]).unbind(0), d, s, shift[d])
            for c, d, s in MOVES if o[c] is not None or c in ("f1", "f4")]


def _plan(moves, n, h):
    """The moves into n = (n1, n2) from h = (h1, h2) as (to, factors, from) views, made once per buffer."""
    return [(n[d][..., 1:, :] if sh else n[d], cs, h[s][..., :-1, :] if sh else h[s]) for cs, d, s, sh in moves]


def _transposed(moves, g, after):
    """The moves transposed: from the adjoints ``after`` (g1, g2) of a step into those ``g`` of the step before."""
    return [(g[s][..., :-1, :] if sh else g[s], cs, after[d][..., 1:, :] if sh else after[d])
            for cs, d, s, sh in moves]


def _apply(plan, k):
    """Every (to, factors, from) of ``plan``: to += factors[k] * from (factors None: 1)."""
    for to, cs, src in plan:
        if cs is None:
            to.add_(src)
        else:
            to.addcmul_(cs[k], src)


def _values(w, k, xs):
    """(x1, x2) of step k: the value times each scale, into the buffers ``xs`` (2, P, 1, G, R, I, b)."""
    return [w["x"][k] if w[c] is None else torch.mul(w["x"][k], w[c][k], out=xs[j])
            for j, c in enumerate(("s1", "s2"))]


def _advance(w, k, n, plan, inject, V, L, xs):
    """Step k of the forward into n = (n1, n2), ``plan`` the moves from the states of step k - 1 (None at 0)."""
    x1, x2 = _values(w, k, xs)
    torch.mul(x1, w["B1"][k], out=n[0])
    torch.mul(x2, w["B2"][k], out=n[1])
    if plan is not None:
        _apply(plan, k)
    if inject is not None and k < V:  # row k's first cell
        n[0][..., k if V <= L else 0, :].add_(inject[..., k, :])


def _row_end(k, V, L):
    """The index of the cell at step k that is the last of its row (k >= L - 1), and that row."""
    return (k - L + 1 if V <= L else L - 1), k - L + 1


def _steps(ops):
    return {k: None if t is None else t.unbind(0) for k, t in ops.items()}


def _state(o):
    """A step's states, (P, N, G, R, I, b)."""
    return torch.broadcast_shapes(o["x"].shape, o["B1"].shape)[1:]


class Wave(torch.autograd.Function):
    """The wavefront with its own backward: ops in the order of `OPS`, skewed -> (Y (K, P, G, R, I, b), last1,
    last2 (V, P, N, G, R, b): each row's last cell). ``inject`` (P, N, G, R, V, b) or None: what the column
    before position 0 adds to h1 of each row's first cell."""

    @staticmethod
    def forward(ctx, V, L, inject, *ops):
        """Every step into two buffers per state taken in turn; the state ending each block kept for the
        backward."""
        o = dict(zip(OPS, ops))
        w = _steps(o)
        K = V + L - 1
        state = _state(o)
        P, N, G, R, I, b = state
        buf = ops[0].new_empty(2, 2, *state)  # two step buffers per state, taken in turn
        tmp = ops[0].new_empty(state)
        xs = ops[0].new_empty(2, *o["x"].shape[1:])
        Y = ops[0].new_empty(K, P, G, R, I, b)
        last = ops[0].new_empty(2, V, P, N, G, R, b)
        grad = any(ctx.needs_input_grad)
        marks = ops[0].new_empty((K - 1) // BLOCK, 2, *state) if grad else None  # the state ending each block
        moves = _moves(o, V, L)
        plans = [_plan(moves, buf[j], buf[1 - j]) for j in (0, 1)]  # into buffer j from the other
        for k in range(K):
            n = buf[k % 2]
            _advance(w, k, n, plans[k % 2] if k else None, inject, V, L, xs)
            torch.mul(n[0], w["C1"][k], out=tmp)
            torch.sum(tmp.addcmul_(n[1], w["C2"][k]), 1, out=Y[k])
            if k >= L - 1:
                i, row = _row_end(k, V, L)
                last[:, row] = n[..., i, :]
            if grad and k % BLOCK == BLOCK - 1 and k < K - 1:
                marks[k // BLOCK] = n
        ctx.V, ctx.L = V, L
        ctx.save_for_backward(inject, marks, *ops)
        return Y, last[0], last[1]

    @staticmethod
    @torch.autograd.function.once_differentiable  # the backward works in place on its buffers
    def backward(ctx, dY, dlast1, dlast2):
        """The adjoint wavefront, block by block from the last, each block's states recomputed from its mark."""
        inject, marks, *ops = ctx.saved_tensors
        V, L = ctx.V, ctx.L
        o = dict(zip(OPS, ops))
        w = _steps(o)
        K = V + L - 1
        grads = {k: None if t is None or not need else torch.zeros_like(t)
                 for (k, t), need in zip(o.items(), ctx.needs_input_grad[3:])}
        dinject = None if inject is None else torch.zeros_like(inject)
        state = _state(o)
        H = ops[0].new_empty(2, BLOCK + 1, *state)  # (h1, h2) of the step before the block, then its steps
        Gd = ops[0].new_empty(2, BLOCK, *state)  # (g1, g2) of the block's steps
        tmp = ops[0].new_empty(state)
        xs = ops[0].new_empty(3, 2, *o["x"].shape[1:])  # x1, x2; then sum_n g1 B1, sum_n g2 B2 of a step
        moves = _moves(o, V, L)
        forward = [_plan(moves, H[:, j + 1], H[:, j]) for j in range(BLOCK)]
        adjoint = [_transposed(moves, Gd[:, j], Gd[:, j + 1]) for j in range(BLOCK - 1)]
        after = None  # (g1, g2) of the step after the block
        for k0 in reversed(range(0, K, BLOCK)):
            k1 = min(K, k0 + BLOCK)
            H[:, 0] = 0.0 if k0 == 0 else marks[k0 // BLOCK - 1]
            for k in range(k0, k1):
                _advance(w, k, H[:, k - k0 + 1], forward[k - k0] if k else None, inject, V, L, xs[0])
            for k in reversed(range(k0, k1)):
                g = Gd[:, k - k0]
                dy = dY[k].unsqueeze(1)
                torch.mul(dy, w["C1"][k], out=g[0])
                torch.mul(dy, w["C2"][k], out=g[1])
                if k < k1 - 1:
                    _apply(adjoint[k - k0], k + 1)
                elif after is not None:
                    _apply(_transposed(moves, g, after), k + 1)
                if k >= L - 1:
                    i, row = _row_end(k, V, L)
                    g[0][..., i, :].add_(dlast1[row])
                    g[1][..., i, :].add_(dlast2[row])
                if dinject is not None and k < V:
                    dinject[..., k, :] = g[0][..., k if V <= L else 0, :]
                _step_grads(grads, w, k, g, H[:, k - k0 + 1], H[:, k - k0], dy, tmp, xs, V, L)
            after = Gd[:, 0].clone() if k0 else None
        return (None, None, dinject, *[grads[k] for k in OPS])


def _reduce_into(to, prod):
    """to = prod summed over the axes where ``to`` has size 1, one axis at a time (torch's reduction over
    several axes at once is several times slower here)."""
    dims = [d for d in range(prod.dim()) if to.shape[d] == 1 and prod.shape[d] != 1]
    for d in dims[:-1]:
        prod = prod.sum(d, keepdim=True)
    if dims:
        torch.sum(prod, dims[-1], keepdim=True, out=to)
    else:
        to.copy_(prod)


def _step_grads(grads, w, k, g, h, before, dy, tmp, xs, V, L):
    """The gradients of the operands of step k (into ``grads[key][k]``) from its adjoints ``g``, its
    states ``h``, the states ``before`` of step k - 1 and the output's gradient ``dy`` (P, 1, G, R, I, b);
    ``tmp`` a step's states, ``xs`` (3, 2, P, 1, G, R, I, b) buffers."""
    def put(key, a, b, shifted=False):  # grads[key][k] (from index 1 when shifted) = a * b summed to its shape
        if grads[key] is not None:
            to = grads[key][k][..., 1:, :] if shifted else grads[key][k]
            out = tmp[..., 1:, :] if shifted else tmp
            _reduce_into(to, torch.mul(a, b, out=out))

    values = _values(w, k, xs[0])
    for j in (0, 1):
        put(f"B{j + 1}", g[j], values[j])
        put(f"C{j + 1}", dy, h[j])
    if any(grads[c] is not None for c in ("x", "s1", "s2")):
        u = xs[1]  # u_j = sum_n g_j B_j: the gradient of x_j = s_j x
        for j in (0, 1):
            _reduce_into(u[j], torch.mul(g[j], w[f"B{j + 1}"][k], out=tmp))
            if grads[f"s{j + 1}"] is not None:
                _reduce_into(grads[f"s{j + 1}"][k], torch.mul(u[j], w["x"][k], out=xs[2, j]))
        if grads["x"] is not None:
            for j, c in enumerate(("s1", "s2")):
                if w[c] is not None:
                    u[j].mul_(w[c][k])
            torch.add(u[0], u[1], out=grads["x"][k])
    shift = _shifts(V, L)
    for c, d, s in MOVES:  # d c[k] = g_d[k] * (the state h_s[k - 1] it multiplied)
        if shift[d]:
            put(c, g[d][..., 1:, :], before[s][..., :-1, :], True)
        else:
            put(c, g[d], before[s])
