"""Segments of packed sequences (``seq_idx``): every lowering turns the ids into run numbers."""

from __future__ import annotations

import torch


def segment_runs(seq_idx: torch.Tensor | None, b: int, l: int, device) -> torch.Tensor | None:
    """Run number of every position (0 for position 0's segment, +1 at every id change)."""
    if seq_idx is None:
        return None
    change = torch.zeros(b, l, dtype=torch.long, device=device)
    change[:, 1:] = (seq_idx[:, 1:] != seq_idx[:, :-1]).long()
    return change.cumsum(1)
