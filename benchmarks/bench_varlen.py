"""Varlen batches on CPU: 64 sequences of lengths 10..200 through `mamba2` (chunked, fp32, forward),
side by side in one run:

- ``loop``: a Python loop calling the mixer once per sequence;
- ``cu_seqlens``: one call on the packed (1, total) batch;
- ``cu_seqlens+states``: the same with one final state per sequence (right-aligned rows);
- ``padded``: one call on a right-padded (64, 200) batch, no lengths (what padding costs, not exact
  for final states);
- ``lengths``: the right-padded batch with its lengths (exact).

Candidates run interleaved, ``--repeats`` times after a warm-up; the table gives the median and the
spread (min..max) of each, and its speed-up over the loop and over the padded batch.

    python benchmarks/bench_varlen.py [--repeats 5] [--dims h=8,p=64,n=64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import mixerc as mx


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dims", default="h=8,p=64,n=64")
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    dims = {k: int(v) for k, v in (kv.split("=") for kv in args.dims.split(","))}
    dims.setdefault("g", 1)
    torch.manual_seed(args.seed)
    m = mx.compile(mx.load_spec("mamba2"), dims=dims)
    h, p, n, g = dims["h"], dims["p"], dims["n"], dims["g"]
    lens = torch.randint(10, 201, (args.sequences,))
    total, width = int(lens.sum()), int(lens.max())

    def inputs(b, l):
        return dict(x=torch.randn(b, l, h, p), dt=torch.randn(b, l, h), B=torch.randn(b, l, g, n),
                    C=torch.randn(b, l, g, n))

    packed = inputs(1, total)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    seqs = [{k: v[:, int(a):int(b)] for k, v in packed.items()} for a, b in zip(cu[:-1], cu[1:])]
    padded = {k: torch.zeros(len(lens), width, *v.shape[2:]) for k, v in packed.items()}
    for i, s in enumerate(seqs):
        for k, v in s.items():
            padded[k][i, :v.shape[1]] = v[0]

    cands = {
        "loop": lambda: [m(**s) for s in seqs],
        "cu_seqlens": lambda: m(**packed, cu_seqlens=cu),
        "cu_seqlens+states": lambda: m(**packed, cu_seqlens=cu, return_final_state=True),
        "padded": lambda: m(**padded),
        "lengths": lambda: m(**padded, lengths=lens),
    }
    times = {k: [] for k in cands}
    with torch.no_grad():
        for fn in cands.values():  # warm-up
            fn()
        for r in range(args.repeats):
            for name, fn in cands.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
            print(f"repeat {r + 1}/{args.repeats} done", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nmamba2 chunked fp32 forward, {len(lens)} sequences of 10..200 (total {total}, longest {width}), "
          f"dims {args.dims}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'candidate':<20}{'median ms':>10}{'spread ms':>16}{'vs loop':>9}{'vs padded':>11}")
    for k, v in times.items():
        print(f"{k:<20}{med[k] * 1e3:>10.1f}{f'{min(v) * 1e3:.1f}..{max(v) * 1e3:.1f}':>16}"
              f"{med['loop'] / med[k]:>8.2f}x{med['padded'] / med[k]:>10.2f}x")


if __name__ == "__main__":
    main()
