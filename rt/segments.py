"""Segments of packed sequences (``seq_idx``): every lowering turns the ids into run numbers."""

from __future__ import annotations

import torch


def segment_runs(seq_idx: torch.Tensor | None) -> torch.Tensor | None:
    """Run number of every position (0 for position 0's segment, +1 at every id change)."""
    if seq_idx is None:
        return None
    # each id against its predecessor (position 0 against itself): a concatenation and a slice of
    # size l, never a slice of l - 1 entries, which torch.compile would specialise for l = 2
    before = torch.cat([seq_idx[:, :1], seq_idx], dim=1).narrow(1, 0, seq_idx.shape[1])
    return (seq_idx != before).long().cumsum(1)


def continues(seq_idx: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(b, l): 0 where a segment starts after position 0 (the id changes), else 1: the factor that cuts a
    state carried from the position before. None without segments."""
    if seq_idx is None:
        return None
    keep = torch.ones(seq_idx.shape, dtype=dtype, device=seq_idx.device)
    keep[:, 1:] = (seq_idx[:, 1:] == seq_idx[:, :-1]).to(dtype)
    return keep


def _same_run(runs: torch.Tensor | None, k: int, x: torch.Tensor, dim: int) -> torch.Tensor | None:
    """Whether position t - k lies in t's segment (and in the row), shaped to broadcast with x."""
    if runs is None:
        return None
    b, l = runs.shape
    other = torch.full_like(runs, -1)
    if 0 < k < l:
        other[:, k:] = runs[:, :l - k]
    elif -l < k < 0:
        other[:, :l + k] = runs[:, -k:]
    shape = [1] * x.dim()
    shape[0], shape[dim] = b, l
    return (other == runs).reshape(shape)


def shift(x: torch.Tensor, k: int, runs: torch.Tensor | None = None, dim: int = 1) -> torch.Tensor:
    """``y[t] = x[t - k]`` where ``t - k`` is in ``t``'s segment, else 0 (``k < 0`` reads ahead)."""
    l = x.shape[dim]
    if abs(k) >= l:
        return torch.zeros_like(x)
    pad = x.new_zeros(x.shape[:dim] + (abs(k),) + x.shape[dim + 1:])
    if k >= 0:
        y = torch.cat([pad, x.narrow(dim, 0, l - k)], dim)
    else:
        y = torch.cat([x.narrow(dim, -k, l + k), pad], dim)
    same = _same_run(runs, k, x, dim)
    return y if same is None else torch.where(same, y, torch.zeros((), dtype=y.dtype, device=y.device))


def diff(x: torch.Tensor, runs: torch.Tensor | None = None, dim: int = 1, like=None) -> torch.Tensor:
    """``y[t] = x[t] - x[t - 1]``, 0 at the first position of every segment. The difference is taken
    in ``x``'s own dtype (exact for int64 timestamps); ``like`` given, the result is cast to its
    floating dtype, at least float32."""
    x = x if x.is_floating_point() else x.long()  # small or unsigned integers would wrap
    y = x - shift(x, 1, None, dim)
    keep = _same_run(runs, 1, x, dim)
    first = torch.arange(x.shape[dim], device=x.device) > 0
    shape = [1] * x.dim()
    shape[dim] = x.shape[dim]
    keep = first.reshape(shape) if keep is None else keep & first.reshape(shape)
    y = torch.where(keep, y, torch.zeros((), dtype=y.dtype, device=y.device))
    return y if like is None else y.to(torch.promote_types(torch.float32, like.dtype))


def flip(x: torch.Tensor, runs: torch.Tensor | None = None, dim: int = 1) -> torch.Tensor:
    """Every segment reversed: ``y[t] = x[s + e - t]`` for ``t`` in the segment ``[s, e]``."""
    if runs is None:
        return x.flip(dim)
    b, l = runs.shape
    pos = torch.arange(l, device=runs.device).expand(b, l)
    starts = torch.ones_like(runs, dtype=torch.bool)
    starts[:, 1:] = runs[:, 1:] != runs[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    s = torch.where(starts, pos, 0).cummax(1).values
    e = torch.where(ends, pos, l).flip(1).cummin(1).values.flip(1)
    src = s + e - pos
    shape = [1] * x.dim()
    shape[0], shape[dim] = b, l
    return x.gather(dim, src.reshape(shape).expand(x.shape))


def past_window(op, x: torch.Tensor, window: int, past: torch.Tensor | None, runs: torch.Tensor | None,
                dim: int = 1, **kw):
    """A sequence op that reads back ``window`` positions along ``dim``, run as if ``past`` (the
    operand's last ``window`` values before ``x``, oldest first; NaN: no such position) came first.
    Returns the op's value and the new past: the last ``window`` values of the operand in its last
    segment (float64 for an integer operand, so that timestamps stay exact up to 2**53). A past
    position is absent only where all its values are NaN: a NaN in some channels is data."""
    x = x if x.is_floating_point() else x.long()
    b, l = x.shape[0], x.shape[dim]
    dtype = x.dtype if x.is_floating_point() else torch.float64
    if past is None:
        shape = list(x.shape)
        shape[dim] = window
        past = torch.full(shape, float("nan"), dtype=dtype, device=x.device)
    # a past position is absent where it is NaN (per batch row and position along dim)
    present = ~past.movedim(dim, 1).isnan().reshape(b, window, -1).all(-1)  # (b, window)
    r = torch.zeros(b, l, dtype=torch.long, device=x.device) if runs is None else runs
    absent = -2 - torch.arange(window, device=x.device).expand(b, window)  # a run of its own each
    r_ext = torch.cat([torch.where(present, r[:, :1], absent), r], 1)
    shape = [1] * x.dim()
    shape[0], shape[dim] = b, window
    fill = torch.where(present.reshape(shape), past, torch.zeros((), dtype=past.dtype, device=x.device))
    ext = torch.cat([fill.to(x.dtype), x], dim)
    y = op(ext, runs=r_ext, dim=dim, **kw).narrow(dim, window, l)
    last = (r_ext[:, -window:] == r_ext[:, -1:]).reshape(shape)
    nan = torch.full((), float("nan"), dtype=dtype, device=x.device)
    return y, torch.where(last, ext.narrow(dim, l, window).to(dtype), nan)
