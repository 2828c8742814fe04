"""The ``grid`` lowering's forward without gradients on the CPU: one fused C loop (`SOURCE`, built at
its first use by `mixerc.rt.native.library`), 4x to 6x the torch wavefront. Copied with `torch_lowering`
into generated modules, the C source with it. With gradients the torch wavefront (`wave.Wave`) runs: the
C kernel has no adjoint yet. docs/grid2d.md, "The fused CPU forward".
"""

from __future__ import annotations

import ctypes

import torch

from mixerc.rt.native import library

STRIP = 32  # columns per strip: a task's working set is 2 (STRIP + 1 + V) states
REALS = {torch.float32: "float", torch.float64: "double"}

SOURCE = r"""/* The 2-D (Roesser) SSM's forward as one fused loop. Built by `library` with -DREAL=float or double,
 * -DVALUE=P and -DSTATE=N.
 *
 * Per batch row z and head h (one OpenMP task each), with zero boundary states:
 *
 *   h1[v,t] = f1 h1[v,t-1] + a2 h2[v,t-1] + s1 x[v,t] (x) B1      (a step along l)
 *   h2[v,t] = a3 h1[v-1,t] + f4 h2[v-1,t] + s2 x[v,t] (x) B2      (a step along v)
 *   y[v,t]  = h1 . C1 + h2 . C2                                   (summed over n)
 *
 * The grid is walked in strips of T columns; inside a strip, row by row, each row left to right. A strip
 * keeps one state per column (`U1`, `U2`, slots 1..T): before cell (v, t) is computed the slot holds row
 * v-1's state there, after it row v's, so h2's inputs are read from the slot and h1's from the slot to the
 * left, already row v's. Slot 0 holds row v's state at the column before the strip (`K1`, `K2`, one per
 * row, carried from strip to strip; the initial state there at the first strip). The working set of a
 * task is 2 (T + 1 + V) states, a few hundred KB: it stays in the core's caches, where the torch
 * wavefront streams every step's states through memory.
 *
 * States are laid out (N, P): the inner loop runs along the value axis P, so y accumulates in a row of P
 * with no horizontal sums. Every operand is addressed through its five strides (b, V, L, head, last), so
 * broadcast operands (a per-head coefficient read along n, an absent one as a constant) need no copies.
 */
#include <stdlib.h>
#include <string.h>

typedef REAL real;
/* the value width and the state size, fixed at compile time: y's row stays in registers, loops unroll */
#define P ((long)VALUE)
#define N ((long)STATE)

typedef struct {
    const real *p;
    long s[5];
} operand;

static inline const real *at(const operand *o, long z, long v, long t, long h) {
    return o->p + z * o->s[0] + v * o->s[1] + t * o->s[2] + h * o->s[3];
}

/* x: (b, V, L, H, P); B1, C1, B2, C2: (b, V, L, G, N); f1, a2, a3, f4: (b, V, L, H, N) (any broadcast);
 * s1, s2: (b, V, L, H, 1). init1, init2: (b, V, H, P, N) contiguous or NULL. y: (b, V, L, H, P) and
 * last1, last2: (b, V, H, P, N), contiguous, written. Returns 0, or 1 when a buffer could not be had. */
int grid2d_forward(const operand *ops, const real *init1, const real *init2, real *y, real *last1,
                   real *last2, long b, long V, long L, long H, long G, long T, int threads) {
    const operand *x = ops, *B1 = ops + 1, *C1 = ops + 2, *B2 = ops + 3, *C2 = ops + 4;
    const operand *f1 = ops + 5, *a2 = ops + 6, *a3 = ops + 7, *f4 = ops + 8, *s1 = ops + 9, *s2 = ops + 10;
    const long R = H / G, S = P * N;
    int failed = 0;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads) reduction(| : failed)
    for (long z = 0; z < b; z++) {
        for (long h = 0; h < H; h++) {
            const long g = h / R;
            real *buf = malloc(sizeof(real) * (2 * (T + 1) * S + 2 * V * S));
            if (buf == NULL) {
                failed = 1;
                continue;
            }
            real *U1 = buf, *U2 = U1 + (T + 1) * S, *K1 = U2 + (T + 1) * S, *K2 = K1 + V * S;
            for (long v = 0; v < V; v++) {  /* the state left of column 0: the initial one, or zero */
                for (long i = 0; i < P; i++) {
                    for (long j = 0; j < N; j++) {
                        const long from = (((z * V + v) * H + h) * P + i) * N + j;
                        K1[v * S + j * P + i] = init1 ? init1[from] : 0;
                        K2[v * S + j * P + i] = init2 ? init2[from] : 0;
                    }
                }
            }
            for (long t0 = 0; t0 < L; t0 += T) {
                const long width = L - t0 < T ? L - t0 : T;
                memset(U1 + S, 0, sizeof(real) * width * S);  /* row -1 */
                memset(U2 + S, 0, sizeof(real) * width * S);
                for (long v = 0; v < V; v++) {
                    memcpy(U1, K1 + v * S, sizeof(real) * S);
                    memcpy(U2, K2 + v * S, sizeof(real) * S);
                    for (long k = 1; k <= width; k++) {
                        const long t = t0 + k - 1;
                        const real *xv = at(x, z, v, t, h);
                        const real *b1 = at(B1, z, v, t, g), *b2 = at(B2, z, v, t, g);
                        const real *c1 = at(C1, z, v, t, g), *c2 = at(C2, z, v, t, g);
                        const real *F1 = at(f1, z, v, t, h), *A2 = at(a2, z, v, t, h);
                        const real *A3 = at(a3, z, v, t, h), *F4 = at(f4, z, v, t, h);
                        const real S1 = *at(s1, z, v, t, h), S2 = *at(s2, z, v, t, h);
                        real *yv = y + (((z * V + v) * L + t) * H + h) * P, acc[P], u1[P], u2[P];
                        real *q1 = U1 + k * S, *q2 = U2 + k * S;                  /* up, then here */
                        const real *r1 = U1 + (k - 1) * S, *r2 = U2 + (k - 1) * S;  /* left */
                        for (long i = 0; i < P; i++) {
                            u1[i] = S1 * xv[i * x->s[4]];
                            u2[i] = S2 * xv[i * x->s[4]];
                            acc[i] = 0;
                        }
                        for (long j = 0; j < N; j++) {
                            const real bj1 = b1[j * B1->s[4]], bj2 = b2[j * B2->s[4]];
                            const real cj1 = c1[j * C1->s[4]], cj2 = c2[j * C2->s[4]];
                            const real fj1 = F1[j * f1->s[4]], aj2 = A2[j * a2->s[4]];
                            const real aj3 = A3[j * a3->s[4]], fj4 = F4[j * f4->s[4]];
                            real *restrict o1 = q1 + j * P, *restrict o2 = q2 + j * P;
                            const real *restrict l1 = r1 + j * P, *restrict l2 = r2 + j * P;
#pragma omp simd
                            for (long i = 0; i < P; i++) {
                                const real n2 = aj3 * o1[i] + fj4 * o2[i] + u2[i] * bj2;
                                const real n1 = fj1 * l1[i] + aj2 * l2[i] + u1[i] * bj1;
                                o1[i] = n1;
                                o2[i] = n2;
                                acc[i] += n1 * cj1 + n2 * cj2;
                            }
                        }
                        for (long i = 0; i < P; i++) {
                            yv[i] = acc[i];
                        }
                    }
                    memcpy(K1 + v * S, U1 + width * S, sizeof(real) * S);
                    memcpy(K2 + v * S, U2 + width * S, sizeof(real) * S);
                }
            }
            for (long v = 0; v < V; v++) {
                for (long i = 0; i < P; i++) {
                    for (long j = 0; j < N; j++) {
                        const long to = (((z * V + v) * H + h) * P + i) * N + j;
                        last1[to] = K1[v * S + j * P + i];
                        last2[to] = K2[v * S + j * P + i];
                    }
                }
            }
            free(buf);
        }
    }
    return failed;
}
"""


class _Operand(ctypes.Structure):
    _fields_ = [("p", ctypes.c_void_p), ("s", ctypes.c_long * 5)]


def _operand(t):
    return _Operand(t.data_ptr(), (ctypes.c_long * 5)(*t.stride()))


def _kernel(dtype, P, N):
    lib = library("grid2d_forward", SOURCE, REALS[dtype], (("VALUE", P), ("STATE", N)))
    if lib is None:
        return None
    fn = lib.grid2d_forward
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.POINTER(_Operand)] + [ctypes.c_void_p] * 5 + [ctypes.c_long] * 6 + [ctypes.c_int]
    return fn


def usable(*tensors) -> bool:
    """Whether the fused loop may run: CPU tensors of one float dtype, no gradient wanted, not traced."""
    x = tensors[0]
    if x.device.type != "cpu" or x.dtype not in REALS or torch.compiler.is_compiling():
        return False
    ts = [t for t in tensors if t is not None]
    if any(t.device != x.device or t.dtype != x.dtype for t in ts):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in ts))


def forward(x, B1, C1, B2, C2, f, s1, s2, initial_state):
    """(y (b, V, L, H, P), (h1, h2) at the last column (b, V, H, P, N)), or None where the kernel cannot be
    built. ``f``: the factors f1, a2, a3, f4 (`torch_lowering._factors`; None: absent), ``s1``, ``s2``: the
    scales (b, V, L, H) or None."""
    b, V, L, H, P = x.shape
    G, N = B1.shape[3:]
    fn = _kernel(x.dtype, P, N)
    if fn is None:
        return None
    full = (b, V, L, H, N)

    def factor(t, absent):  # (.., H) or (.., H, N), broadcast over the grid; absent: a constant
        if t is None:
            return x.new_full((), absent).expand(full)
        return (t if t.dim() == 5 else t.unsqueeze(-1)).expand(full)

    def scale(t):
        return x.new_ones(()).expand(b, V, L, H, 1) if t is None else t.unsqueeze(-1).expand(b, V, L, H, 1)

    ops = [x] + [t.expand(b, V, L, G, N) for t in (B1, C1, B2, C2)]
    ops += [factor(f["f1"], 1.0), factor(f["a2"], 0.0), factor(f["a3"], 0.0), factor(f["f4"], 1.0)]
    ops += [scale(s1), scale(s2)]
    init = (None, None) if initial_state is None else [s.expand(b, V, H, P, N).contiguous() for s in initial_state]
    y = x.new_empty(b, V, L, H, P)
    last1, last2 = x.new_empty(b, V, H, P, N), x.new_empty(b, V, H, P, N)
    failed = fn((_Operand * len(ops))(*map(_operand, ops)), *[None if t is None else t.data_ptr() for t in init],
                y.data_ptr(), last1.data_ptr(), last2.data_ptr(), b, V, L, H, G, STRIP,
                torch.get_num_threads())
    if failed:
        raise MemoryError(f"the 2-D grid's fused forward could not allocate its {2 * (STRIP + 1 + V)} states "
                          f"of {P}x{N} per task")
    return y, (last1, last2)
