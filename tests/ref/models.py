"""The built-in specs as test cases: a spec name, its dims, its state shape and its references."""

from __future__ import annotations

from dataclasses import dataclass

from . import ssm as R


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
