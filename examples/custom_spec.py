"""Write a mixer as a structured matrix, compile it, check it, run it, decode with it.

    python examples/custom_spec.py

A gated linear-attention-style mixer: a scalar decay per head computed from the input, B and C
shared by groups of heads, and a learned skip. Compare with specs/mamba2.py.
"""

import torch

import mixerc as mx
from mixerc.check import run_check


@mx.spec
def gated_decay(x: mx.Seq("b l h p"), gate: mx.Seq("b l h"), k: mx.Seq("b l g n"), q: mx.Seq("b l g n"),
                D: mx.Param("h", init=1.0)):
    keep = mx.sigmoid(gate)                                  # in (0, 1): how much state survives
    M = mx.semiseparable(C=q, B=k, log_decay=mx.log(keep))   # M[i,j] = q_i.k_j prod_{j<t<=i} keep_t
    return M @ (x * (1.0 - keep)) + D * x


def main():
    torch.manual_seed(0)
    dims = dict(h=4, p=16, n=8, g=2)
    print("check against the reference lowering (fp64):")
    for r in run_check(gated_decay, dims, b=2, l=45):
        print(f"  {r.lowering:9s} forward {r.forward:.1e}  state {r.state:.1e}  grads {r.grads:.1e}  "
              f"{'pass' if r.ok else 'FAIL'}")

    mixer = mx.compile(gated_decay, dims=dims)              # chunked on CPU
    b, l = 2, 300
    x, gate = torch.randn(b, l, 4, 16), torch.randn(b, l, 4)
    k, q = torch.randn(b, l, 2, 8), torch.randn(b, l, 2, 8)
    y, state = mixer(x=x, gate=gate, k=k, q=q, return_final_state=True)
    print(f"\ny {tuple(y.shape)}, state {tuple(state.shape)}")

    # prefill 299 positions, then decode the last one with step(): same answer as the full forward
    _, s = mixer(x=x[:, :-1], gate=gate[:, :-1], k=k[:, :-1], q=q[:, :-1], return_final_state=True)
    y_last, _ = mixer.step(s, x=x[:, -1], gate=gate[:, -1], k=k[:, -1], q=q[:, -1])
    print(f"decode step vs forward, max abs difference: {(y_last - y[:, -1]).abs().max():.2e}")

    print("\nthe generated code:\n")
    print(mixer.source())


if __name__ == "__main__":
    main()
