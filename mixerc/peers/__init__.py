"""Peers: other projects' implementations of a built-in spec's math, for `mixerc bench` to time beside
mixerc's lowerings. Each is an optional import; a missing one is listed as not installed.

A peer is one table entry: the spec it computes, the module it needs, the devices it runs on, and
``make(mixer)``: given a compiled mixer of the spec (whose parameters it reads), a function from the
spec's inputs to ``y``, the same math in the peer's own layout and calling convention. The adapters
are written from each peer's documented API; `mixerc bench` checks every peer's output against the
fp64 reference before it times it, so a wrong adapter shows as rejected, never as a fast number.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Peer:
    name: str
    spec: str  # the built-in spec it computes
    module: str  # what must import
    devices: tuple[str, ...]  # "cpu", "cuda"
    make: Callable  # (mixer, chunk) -> (inputs -> y)
    needs: str = ""  # a condition on the shape, said when it does not hold

    def available(self) -> str | None:
        """None when the peer can run here, else why not (one line)."""
        try:
            importlib.import_module(self.module)
        except ImportError:
            return f"not installed (pip install {self.module.split('.')[0].replace('_', '-')})"
        except Exception as e:  # a CUDA extension failing to load, say
            return f"{self.module} does not import: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
        return None


def _mamba2_params(m):
    return m.A_log, m.dt_bias, m.D


def _listing(m, chunk):
    from .ssd_listing import mamba2_listing

    def run(ins):
        A_log, dt_bias, D = _mamba2_params(m)
        return mamba2_listing(ins["x"], ins["dt"], ins["B"], ins["C"], A_log, dt_bias, D, chunk)
    return run


def _ssd_minimal(m, chunk):
    from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete

    def run(ins):
        A_log, dt_bias, D = _mamba2_params(m)
        x, B, C = ins["x"], ins["B"], ins["C"]
        h = x.shape[2]
        delta = F.softplus(ins["dt"] + dt_bias)
        heads = (x.shape[0], x.shape[1], h, B.shape[-1])  # ssd_minimal takes B, C per head
        Bh = B.repeat_interleave(h // B.shape[2], 2).expand(heads)
        Ch = C.repeat_interleave(h // C.shape[2], 2).expand(heads)
        y, _ = ssd_minimal_discrete(x * delta[..., None], -torch.exp(A_log) * delta, Bh, Ch, chunk)
        return y + D[:, None] * x
    return run


def _chunk_scan_combined(m, chunk):
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    def run(ins):
        A_log, dt_bias, D = _mamba2_params(m)
        return mamba_chunk_scan_combined(ins["x"], ins["dt"], -torch.exp(A_log.float()), ins["B"], ins["C"], chunk,
                                         D=D, dt_bias=dt_bias, dt_softplus=True)
    return run


def _pscan(m, chunk):
    from mambapy.pscan import pscan

    def run(ins):
        x, B, C = ins["x"], ins["B"], ins["C"]  # (b, l, d), (b, l, n)
        delta = F.softplus(ins["dt"] + m.dt_bias)  # (b, l, d)
        decay = torch.exp(delta[..., None] * -torch.exp(m.A_log))  # (b, l, d, n)
        drive = (delta * x)[..., None] * B[:, :, None, :]  # (b, l, d, n)
        hs = pscan(decay, drive)
        return (hs @ C[..., None]).squeeze(-1) + m.D * x
    return run


def _selective_scan(fn_name):
    def make(m, chunk):
        from mamba_ssm.ops import selective_scan_interface as ssi
        fn = getattr(ssi, fn_name)

        def run(ins):  # mamba-ssm's layout: u, delta (b, d, l); B, C (b, n, l)
            y = fn(ins["x"].transpose(1, 2), ins["dt"].transpose(1, 2), -torch.exp(m.A_log.float()),
                   ins["B"].transpose(1, 2), ins["C"].transpose(1, 2), D=m.D.float(), delta_bias=m.dt_bias.float(),
                   delta_softplus=True)
            return y.transpose(1, 2)
        return run
    return make


PEERS = [
    Peer("einsum listing", "mamba2", "mixerc.peers.ssd_listing", ("cpu", "cuda"), _listing,
         needs="l a multiple of the chunk size, g = 1 or g = h"),
    Peer("mamba-ssm ssd_minimal_discrete", "mamba2", "mamba_ssm.modules.ssd_minimal", ("cpu", "cuda"), _ssd_minimal,
         needs="l a multiple of the chunk size"),
    Peer("mamba-ssm mamba_chunk_scan_combined", "mamba2", "mamba_ssm.ops.triton.ssd_combined", ("cuda",),
         _chunk_scan_combined),
    Peer("mambapy pscan", "mamba", "mambapy.pscan", ("cpu", "cuda"), _pscan),
    Peer("mamba-ssm selective_scan_ref", "mamba", "mamba_ssm.ops.selective_scan_interface", ("cpu", "cuda"),
         _selective_scan("selective_scan_ref")),
    Peer("mamba-ssm selective_scan_fn", "mamba", "mamba_ssm.ops.selective_scan_interface", ("cuda",),
         _selective_scan("selective_scan_fn")),
]


def shape_problem(peer: Peer, sizes: dict, chunk: int) -> str | None:
    """Why ``peer`` cannot run these sizes (its ``needs``), or None."""
    if "multiple of the chunk" in peer.needs and sizes["l"] % chunk:
        return f"needs l % chunk == 0 (l={sizes['l']}, chunk={chunk})"
    if "g = 1 or g = h" in peer.needs and sizes.get("g", 1) not in (1, sizes.get("h", 1)):
        return f"needs g = 1 or g = h (g={sizes.get('g')}, h={sizes.get('h')})"
    return None


def peers_of(spec_name: str) -> list[Peer]:
    return [p for p in PEERS if p.spec == spec_name]
