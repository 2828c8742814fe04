"""What the runtime's input checks cost, against the forward they guard (issue 15: under 2%).

    python tests/faults/bench_checks.py            # b=2, l=1024, h=8, p=64, n=64, g=1, fp32, chunked

Three numbers, each the median of ``--repeats`` rounds with its spread (min-max):

- ``checks``: every check one forward runs before any compute (the pre-hook, `validate.tensors`,
  `_check_inputs`, `_check_state`, `validate.states`, `_check_seq_idx`, `_params`), timed alone;
- ``forward``: the whole forward;
- ``forward without the new checks``: the same forward with the checks issue 15 added replaced by
  no-ops, rounds interleaved with the ones above (side by side, same load).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import mixerc as mx
from mixerc import validate


def timed(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--l", type=int, default=1024)
    args = ap.parse_args()
    torch.manual_seed(0)
    b, l, h, p, n = 2, args.l, 8, 64, 64
    m = mx.compile("mamba2", dims=dict(h=h, p=p, n=n, g=1), backend="chunked")
    inputs = dict(x=torch.randn(b, l, h, p), dt=torch.randn(b, l, h), B=torch.randn(b, l, 1, n),
                  C=torch.randn(b, l, 1, n))
    s0 = m.init_state(b)
    seq_idx = torch.zeros(b, l, dtype=torch.int32)

    def checks():
        validate.no_positional(m, ())
        validate.tensors(inputs)
        bb, ll = m._check_inputs(inputs)
        states = m._check_state(s0, bb, "initial_state")
        validate.states(states, "initial_state", inputs["x"].device)
        m._check_seq_idx(seq_idx, bb, ll)
        m._params(None)

    def forward():
        with torch.no_grad():
            m(**inputs, initial_state=s0, seq_idx=seq_idx, return_final_state=True)

    real = (validate.no_positional, validate.tensors, validate.states)
    off = (lambda *a: None,) * 3

    def switch(funcs):
        validate.no_positional, validate.tensors, validate.states = funcs
        m._forward_pre_hooks.clear()
        m.register_forward_pre_hook(validate.no_positional)

    forward(), forward()  # warm up
    t_checks, t_fwd, t_off = [], [], []
    for _ in range(args.repeats):
        t_checks.append(timed(checks, 200))
        switch(real)
        t_fwd.append(timed(forward, 3))
        switch(off)
        t_off.append(timed(forward, 3))
    switch(real)

    def show(name, xs):
        print(f"{name:32s} median {statistics.median(xs) * 1e3:9.3f} ms  (min {min(xs) * 1e3:.3f}, "
              f"max {max(xs) * 1e3:.3f})")

    print(f"mamba2 chunked fp32, b={b}, l={l}, h={h}, p={p}, n={n}, g=1, {torch.get_num_threads()} threads, "
          f"{args.repeats} rounds")
    show("checks (all of them)", t_checks)
    show("forward", t_fwd)
    show("forward without the new checks", t_off)
    ratio = statistics.median(t_checks) / statistics.median(t_fwd)
    diffs = [(f - o) / o for f, o in zip(t_fwd, t_off)]
    print(f"checks / forward: {ratio * 100:.3f}%   (forward - forward without new checks) / forward: median "
          f"{statistics.median(diffs) * 100:+.2f}%, spread {min(diffs) * 100:+.2f}% .. {max(diffs) * 100:+.2f}%")


if __name__ == "__main__":
    main()
