"""Varlen batches on CPU: 64 sequences of lengths 10..200 through `mamba2` (chunked, fp32, forward),
side by side in one run. Every contender starts from the same right-padded (64, 200) batch and its
lengths, and returns the output in that layout (zeros in the padding); what it does to get there is
timed with it:

- ``chunked``: the mixer on the padded batch with ``lengths=`` (exact);
- ``loop``: a Python loop calling the mixer once per sequence;
- ``cu_seqlens``: the sequences packed into one (1, total) row, one call with ``cu_seqlens``;
- ``cu_seqlens+states``: the same with one final state per sequence (right-aligned rows);
- ``padded``: the padded batch without lengths, the padding's output zeroed (what padding costs: exact
  here because mamba2 is causal, not for final states).

A thin caller of `mixerc bench` (mixerc/bench.py): `run_bench` checks every contender against the fp64
reference lowering (the materialised matrix, with the lengths) and times them in interleaved rounds,
``--repeats`` times after a warm-up; the table gives the median and the spread (min..max) of each. This
script adds the contenders and the inputs, and the speed-ups over the loop and over the padded batch.

    python benchmarks/bench_varlen.py [--repeats 5] [--dims h=8,p=64,n=64] [--sequences 64] [--longest 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from rich.console import Console

import mixerc as mx
from mixerc.bench import render, run_bench
from mixerc.check import random_inputs

SHORTEST = 10


def padded_batch(mixer, b, l, generator, dtype):
    """Standard normal inputs, right-padded with zeros after ``lengths`` (SHORTEST..l) positions."""
    lengths = torch.randint(min(SHORTEST, l), l + 1, (b,), generator=generator)
    ins = random_inputs(mixer, b, l, generator, dtype=dtype)
    valid = torch.arange(l) < lengths[:, None]
    return {**{k: v * _over(valid, v) for k, v in ins.items()}, "lengths": lengths}


def _over(mask, like):
    """``mask`` (b, l) shaped to broadcast over ``like``'s trailing dims."""
    return mask.view(*mask.shape, *[1] * (like.dim() - 2))


def _unpadded(ins):
    """The sequences' inputs without ``lengths``, and where the valid positions are."""
    values = {k: v for k, v in ins.items() if k != "lengths"}
    x = values["x"]
    return values, torch.arange(x.shape[1], device=x.device) < ins["lengths"][:, None]


def loop(m, _):
    def run(ins):
        values, valid = _unpadded(ins)
        ys = [m(**{k: v[i:i + 1, :n] for k, v in values.items()}) for i, n in enumerate(ins["lengths"].tolist())]
        out = ys[0].new_zeros(valid.shape + ys[0].shape[2:])
        for i, y in enumerate(ys):
            out[i, :y.shape[1]] = y[0]
        return out
    return run


def packed(states: bool):
    def make(m, _):
        def run(ins):
            values, valid = _unpadded(ins)
            cu = torch.nn.functional.pad(ins["lengths"].cumsum(0), (1, 0))
            y = m(**{k: v[valid][None] for k, v in values.items()}, cu_seqlens=cu, return_final_state=states)
            y = y[0] if states else y
            out = y.new_zeros(valid.shape + y.shape[2:])
            out[valid] = y[0]
            return out
        return run
    return make


def padded(m, _):
    def run(ins):
        values, valid = _unpadded(ins)
        y = m(**values)
        return y * _over(valid, y)
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dims", default="h=8,p=64,n=64")
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--longest", type=int, default=200, help="the padded length: lengths are 10..longest")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    dims = {"g": 1, **{k: int(v) for k, v in (kv.split("=") for kv in args.dims.split(","))}}
    extras = {"loop": loop, "cu_seqlens": packed(False), "cu_seqlens+states": packed(True), "padded": padded}
    r = run_bench(mx.load_spec("mamba2"), dims, args.sequences, [args.longest], repeats=args.repeats,
                  lowerings=["chunked"], seed=args.seed, extras=extras, inputs=padded_batch, peers=False)
    render(r, Console() if sys.stdout.isatty() else Console(width=160))
    med = {c.name: statistics.median(c.times[args.longest]) for c in r.contenders if c.times.get(args.longest)}
    for base in ("loop", "padded"):
        if base in med:
            print(f"speed-up over {base}: " + ", ".join(f"{k} {med[base] / v:.2f}x" for k, v in med.items()))
    failed = r.failures() + [f"{c.name}: not timed" for c in r.contenders if c.name not in med]
    if failed:
        print("FAILED: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
