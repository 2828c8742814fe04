"""The built-in specs as test cases: a spec name, its dims, its state shape and its references."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import ssm as R

F64 = torch.float64


@dataclass(frozen=True)
class Model:
    id: str
    spec: str
    dims: tuple  # ((name, size), ...)

    @property
    def dims_dict(self):
        return dict(self.dims)

    @property
    def diagonal(self):
        return self.spec == "mamba"

    def state_shape(self, b):
        d = self.dims_dict
        return (b, d["h"], d["p"], d["n"]) if self.spec == "mamba2" else (b, d["d"], d["n"])

    def ref_fns(self):
        if self.spec == "mamba2":
            return {"loop": R.mamba2_loop, "dense": R.mamba2_dense}
        return {"loop": R.mamba_loop, "dense": R.mamba_dense}


def make_params(model: Model, seed: int, A_max: float | None = None) -> dict:
    """A in [1, 16], dt_bias ~ 0.5 N(0,1), D ~ N(0,1). With A_max, A spreads evenly over [1, A_max]
    (its first entry log(A_max) exactly)."""
    gen = torch.Generator().manual_seed(seed)
    d = model.dims_dict
    a_shape = (d["h"],) if model.spec == "mamba2" else (d["d"], d["n"])
    ch = d["h"] if model.spec == "mamba2" else d["d"]
    A = 1 + 15 * torch.rand(*a_shape, generator=gen, dtype=F64)
    if A_max is not None:
        A = torch.linspace(A_max, 1.0, A.numel(), dtype=F64).reshape(a_shape)
    return {"A_log": torch.log(A),
            "dt_bias": 0.5 * torch.randn(ch, generator=gen, dtype=F64),
            "D": torch.randn(ch, generator=gen, dtype=F64)}


def make_state(model: Model, b: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1000)
    return torch.randn(*model.state_shape(b), generator=gen, dtype=F64)


def segment_ids(lengths, first_id: int = 0) -> torch.Tensor:
    """seq_idx of one row made of segments of the given lengths, numbered from ``first_id``."""
    ids = []
    for k, n in enumerate(lengths):
        ids += [first_id + k] * n
    return torch.tensor(ids, dtype=torch.int32)
