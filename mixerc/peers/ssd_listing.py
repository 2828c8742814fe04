"""The chunked SSD algorithm of the Mamba-2 paper ("Listing 1"), written as plain einsums.

This is the baseline `mixerc bench` and the CPU benchmark compare mixerc's ``chunked`` lowering against. It is written
from the math (Dao & Gu, "Transformers are SSMs", ICML 2024, arXiv:2405.21060, section 6 / Listing 1;
see also docs/semiseparable.md, "The paper's listing"), deliberately in the straightforward
einsum style of the paper: no fusion, no layout tricks, B/C of a single group broadcast over the heads
by einsum itself.

Recurrence (per head, state S in R^{p x n}):

    S_t = exp(A_t) S_{t-1} + X_t (outer) B_t,      Y_t = S_t C_t

where X = x * Δ and A = A_head * Δ are already discretised. The mamba2 wrapper adds the softplus,
the discretisation and the skip term D * x.

Run ``python -m mixerc.peers.ssd_listing --selftest`` to check it against a token loop in float64.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F


def segsum(a: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = a[..., j+1] + ... + a[..., i] for i >= j (0 on the diagonal), -inf for i < j.

    Stable construction: only the terms inside the range are ever added (no difference of two
    long cumulative sums). Column j receives a_i in row i for i > j, a cumulative sum down the rows
    adds them up, and the upper triangle is masked to -inf so that exp() gives exactly 0 there.
    """
    T = a.shape[-1]
    rows = a.unsqueeze(-1).expand(*a.shape, T)  # rows[..., i, j] = a_i
    strictly_below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    summed = rows.masked_fill(~strictly_below, 0.0).cumsum(dim=-2)
    on_or_below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(0)
    return summed.masked_fill(~on_or_below, float("-inf"))


def ssd_listing(X: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                chunk: int, initial_state: torch.Tensor | None = None):
    """Chunked SSD with einsums.

    X (b, l, h, p) = x * Δ;  A (b, l, h) = A_head * Δ;  B, C (b, l, g, n) with g == 1 (broadcast
    over the heads by einsum) or g == h;  initial_state (b, h, p, n) or None.
    Returns Y (b, l, h, p) and the final state (b, h, p, n). l must be a multiple of ``chunk``.
    """
    b, l, h, p = X.shape
    g, n = B.shape[2], B.shape[3]
    if l % chunk:
        raise ValueError(f"the listing needs l % chunk == 0, got l={l}, chunk={chunk}")
    if g not in (1, h):
        raise ValueError(f"the listing broadcasts B/C with einsum, so it needs g == 1 or g == h (got g={g})")
    c = l // chunk

    # split the sequence into chunks
    Xc = X.reshape(b, c, chunk, h, p)
    Bc = B.reshape(b, c, chunk, g, n)
    Cc = C.reshape(b, c, chunk, g, n)
    Ac = A.reshape(b, c, chunk, h).permute(0, 3, 1, 2)  # (b, h, c, Q)
    A_cum = Ac.cumsum(dim=-1)  # (b, h, c, Q)

    # B/C carry their group axis under the head letter h: with g == 1 einsum broadcasts it over the heads

    # 1. diagonal blocks: the quadratic, attention-like form inside each chunk
    Lmask = torch.exp(segsum(Ac))  # (b, h, c, Q, Q)
    Y_diag = torch.einsum("bcihn,bcjhn,bhcij,bcjhp->bcihp", Cc, Bc, Lmask, Xc)

    # 2. the state each chunk leaves behind, from a zero state at its start
    to_chunk_end = torch.exp(A_cum[..., -1:] - A_cum)  # (b, h, c, Q)
    states = torch.einsum("bcjhn,bhcj,bcjhp->bchpn", Bc, to_chunk_end, Xc)

    # 3. recurrence over chunks: the chunk totals' segsum gives the decay from chunk z to chunk k
    if initial_state is None:
        initial_state = torch.zeros_like(states[:, :1])
    else:
        initial_state = initial_state.unsqueeze(1)
    states = torch.cat([initial_state, states], dim=1)  # (b, c+1, h, p, n)
    chunk_totals = F.pad(A_cum[..., -1], (1, 0))  # (b, h, c+1)
    decay_chunk = torch.exp(segsum(chunk_totals))  # (b, h, c+1, c+1)
    passed = torch.einsum("bhkz,bzhpn->bkhpn", decay_chunk, states)
    entering, final_state = passed[:, :-1], passed[:, -1]

    # 4. state -> output: each position reads the state that entered its chunk, decayed to it
    from_chunk_start = torch.exp(A_cum)  # (b, h, c, Q)
    Y_off = torch.einsum("bcihn,bchpn,bhci->bcihp", Cc, entering, from_chunk_start)

    Y = (Y_diag + Y_off).reshape(b, l, h, p)
    return Y, final_state


def mamba2_listing(x, dt, B, C, A_log, dt_bias, D, chunk: int = 64) -> torch.Tensor:
    """The mamba2 mixer through the listing: y = SSD(x Δ, A Δ, B, C) + D x.

    x (b, l, h, p), dt (b, l, h), B, C (b, l, g, n); A_log, dt_bias, D (h,).
    """
    delta = F.softplus(dt + dt_bias)  # (b, l, h)
    A = -torch.exp(A_log)  # (h,)
    y, _ = ssd_listing(x * delta.unsqueeze(-1), A * delta, B, C, chunk)
    return y + D[:, None] * x


# -- self test: a token loop in float64 ---------------------------------------------------------


def _token_loop(x, dt, B, C, A_log, dt_bias, D):
    b, l, h, p = x.shape
    g, n = B.shape[2:]
    rep = h // g
    delta = F.softplus(dt + dt_bias)
    A = -torch.exp(A_log)
    S = x.new_zeros(b, h, p, n)
    ys = []
    for t in range(l):
        Bt = B[:, t].repeat_interleave(rep, dim=1)  # (b, h, n)
        Ct = C[:, t].repeat_interleave(rep, dim=1)
        decay = torch.exp(delta[:, t] * A)  # (b, h)
        S = decay[:, :, None, None] * S + (delta[:, t, :, None] * x[:, t])[..., None] * Bt[:, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", S, Ct) + D[:, None] * x[:, t])
    return torch.stack(ys, dim=1)


def selftest() -> bool:
    torch.manual_seed(0)
    ok = True
    for (b, l, h, p, n, g, chunk) in [(2, 48, 3, 5, 4, 1, 16), (1, 64, 4, 3, 6, 4, 8), (2, 32, 2, 4, 4, 1, 32),
                                      (1, 40, 2, 3, 2, 1, 1)]:
        dd = dict(dtype=torch.float64)
        x = torch.randn(b, l, h, p, **dd)
        dt = torch.randn(b, l, h, **dd) - 1
        B = torch.randn(b, l, g, n, **dd)
        C = torch.randn(b, l, g, n, **dd)
        A_log = torch.rand(h, **dd) * 2
        dt_bias = torch.randn(h, **dd)
        D = torch.randn(h, **dd)
        want = _token_loop(x, dt, B, C, A_log, dt_bias, D)
        got = mamba2_listing(x, dt, B, C, A_log, dt_bias, D, chunk)
        err = ((got - want).abs().max() / want.abs().max()).item()
        good = err < 1e-12
        ok &= good
        print(f"b={b} l={l} h={h} p={p} n={n} g={g} chunk={chunk}: max rel err {err:.2e} "
              f"{'ok' if good else 'FAIL'}")
        # initial state and final state against the loop, split in two halves
        half = l // 2
        if half % chunk == 0:
            delta = F.softplus(dt + dt_bias)
            A = -torch.exp(A_log)
            X, Ad = x * delta.unsqueeze(-1), A * delta
            y_full, s_full = ssd_listing(X, Ad, B, C, chunk)
            y1, s1 = ssd_listing(X[:, :half], Ad[:, :half], B[:, :half], C[:, :half], chunk)
            y2, s2 = ssd_listing(X[:, half:], Ad[:, half:], B[:, half:], C[:, half:], chunk, initial_state=s1)
            err2 = max((torch.cat([y1, y2], 1) - y_full).abs().max().item(), (s2 - s_full).abs().max().item())
            good = err2 < 1e-10
            ok &= good
            print(f"    split at {half} with initial state: max abs err {err2:.2e} {'ok' if good else 'FAIL'}")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--selftest", action="store_true", help="check the listing against a float64 token loop")
    args = ap.parse_args(argv)
    if args.selftest:
        return 0 if selftest() else 1
    ap.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
