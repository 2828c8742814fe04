import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/ref importable as `ref`


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| (inf when out has NaN/inf)."""
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def assert_close(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float, scale: float | None = None):
    """Relative error of ``out`` against ``ref``, normalised by ``scale`` (default max |ref|);
    fails on NaN/inf and names the tensor."""
    out, ref = out.detach(), ref.detach()
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    denom = scale if scale is not None else float(ref.abs().max().clamp_min(1e-300))
    err = float((out - ref).abs().max()) / denom
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
