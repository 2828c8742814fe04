"""Batches of sequences of different lengths: ``cu_seqlens`` (packed) and ``lengths`` (right-padded).

A packed batch holds N sequences one after another in a ``(1, total, ...)`` batch; ``cu_seqlens`` is
the ``(N + 1,)`` integer tensor of their offsets (``0, len_0, len_0 + len_1, ..., total``), as
flash-linear-attention's and mamba-ssm's varlen kernels take it. A right-padded batch holds one
sequence per row, ``lengths[i]`` valid positions followed by padding.

Both run as segments (``seq_idx``), which every lowering and sequence op already honours:

- the outputs of a packed batch: the packed row itself, one segment per sequence (no padding work);
- final states (and every right-padded batch): the sequences *right-aligned* in an ``(N, W)``
  batch, ``W`` the longest length, padding first and in a segment of its own. A row's state at its
  end is then its sequence's final state, and nothing flows between padding and sequence in either
  direction (non-causal structures and ``mx.flip`` included).

A sequence's state never starts from a caller's state here (padding comes first): ``initial_state``
with a varlen batch is refused.
"""

from __future__ import annotations

import torch

from .ir import InputError, ShapeError


def _int_1d(t, what: str, fix: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype.is_floating_point or t.is_complex() \
            or t.dtype == torch.bool:
        got = f"shape {tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise InputError(f"{what} must be a 1-D integer tensor ({fix}), got {got}")
    return t


def lengths_of_cu_seqlens(cu_seqlens, b: int, l: int) -> torch.Tensor:
    """The sequence lengths of a packed batch, checking ``cu_seqlens`` (one device sync)."""
    fix = "the (N + 1,) offsets 0, len_0, len_0 + len_1, ..., total of N packed sequences"
    cu = _int_1d(cu_seqlens, "cu_seqlens", fix)
    if b != 1:
        raise ShapeError(f"cu_seqlens: the inputs have batch b={b}; a packed batch is one row (1, total, ...) "
                         "holding every sequence; concatenate the sequences along l, or pass lengths= "
                         "for a right-padded batch")
    if cu.numel() < 2:
        raise InputError(f"cu_seqlens has {cu.numel()} entr{'y' if cu.numel() == 1 else 'ies'}; expected "
                         f"{fix} (at least [0, total])")
    values = cu.tolist()
    if values[0] != 0:
        raise InputError(f"cu_seqlens must start at 0, got {values[0]}; pass {fix}")
    if values[-1] != l:
        raise InputError(f"cu_seqlens ends at {values[-1]} but the packed inputs have l={l} positions; "
                         "its last entry is the total length")
    bad = next((i for i in range(1, len(values)) if values[i] <= values[i - 1]), None)
    if bad is not None:
        raise InputError(f"cu_seqlens must be strictly increasing (every sequence at least one position), "
                         f"but entry {bad} is {values[bad]} after {values[bad - 1]}")
    return cu.long().diff()


def check_lengths(lengths, b: int, l: int) -> torch.Tensor:
    """The valid length of every row of a right-padded batch (one device sync)."""
    ln = _int_1d(lengths, "lengths", f"one valid length per row, shape ({b},)")
    if ln.numel() != b:
        raise ShapeError(f"lengths: expected shape ({b},), one per row of the batch, got {tuple(ln.shape)}")
    values = ln.tolist()
    bad = next((i for i, v in enumerate(values) if not 1 <= v <= l), None)
    if bad is not None:
        raise InputError(f"lengths[{bad}] = {values[bad]}; every length must be in 1..l = 1..{l}")
    return ln.long()


def packed_seq_idx(lengths: torch.Tensor) -> torch.Tensor:
    """``(1, total)`` segment ids: sequence i's positions hold i."""
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)[None]


class RightAligned:
    """Sequences taken from flat rows (``starts[i]``, ``lengths[i]``) and right-aligned in an
    ``(N, W)`` batch, padding first as segment 0 and the sequence as segment 1."""

    def __init__(self, starts: torch.Tensor, lengths: torch.Tensor):
        n, width = lengths.numel(), int(lengths.max())
        t = torch.arange(width, device=lengths.device)
        pad = (width - lengths)[:, None]
        self.valid = t[None] >= pad  # (N, W)
        # row i, position t reads flat position starts[i] + t - pad[i] (padding reads the first, masked off)
        self.src = starts[:, None] + (t[None] - pad).clamp_min(0)
        self.seq_idx = self.valid.long()
        self.n, self.width = n, width
        self.inverse = None  # flat position -> (row, column) index, or -1 for padding; made on first scatter

    def gather(self, flat: torch.Tensor) -> torch.Tensor:
        """``flat``: (positions, ...) -> (N, W, ...)."""
        return flat[self.src.reshape(-1)].reshape(self.n, self.width, *flat.shape[1:])

    def scatter(self, y: torch.Tensor, positions: int) -> torch.Tensor:
        """(N, W, ...) -> (positions, ...): every sequence position gets its value, the rest 0 (one
        gather through the inverse index)."""
        flat = y.reshape(self.n * self.width, *y.shape[2:])
        if self.inverse is None:
            inv = torch.full((positions,), -1, dtype=torch.long, device=y.device)
            inv[self.src[self.valid]] = torch.arange(self.n * self.width, device=y.device).view_as(self.src)[self.valid]
            self.inverse = inv
        out = flat[self.inverse.clamp_min(0)]
        if bool((self.inverse < 0).any()):  # padding of a right-padded batch: zeros
            keep = (self.inverse >= 0).reshape(-1, *[1] * (y.dim() - 2))
            out = torch.where(keep, out, torch.zeros((), dtype=out.dtype, device=out.device))
        return out
