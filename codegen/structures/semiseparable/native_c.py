"""The C source of the semiseparable scan's fused CPU loops, forward and backward (`native` builds and calls
them). Copied into generated modules with it. docs/semiseparable.md, "The fused CPU scan".
"""

SOURCE = r"""/* The semiseparable token loop, forward and backward, as fused loops; built by `library` with
 * -DREAL=float or double, -DVALUE=P and -DSTATE=N.
 *
 * Per batch row z and head h (one OpenMP task each), the state S (N x P) starting from S_{-1} (the initial
 * state, or zero):
 *
 *   S_t = f_t S_{t-1} + u_t (x) B_t,   u_t = s_t x_t,   y_t = S_t C_t     (f_t: the decay factor per state,
 *                                                                          zero where a segment starts)
 *
 * S is laid out (N, P): the inner loops run along the value axis P, so y accumulates in a row of P with no
 * horizontal sums, and one state (P N reals, 16 KB at P = N = 64 in fp32) stays in the core's first-level
 * cache for the whole sequence. Every operand is addressed through its four strides (b, L, head, last), so
 * broadcast operands (a per-head factor read along n, an absent one as a constant) need no copies.
 *
 * The backward walks the sequence in strips of T positions from the last: it recomputes the strip's states
 * from the state the forward kept before it (`ck`), then runs the adjoint G_t = dL/dS_t back through them,
 *
 *   G_t = f_{t+1} G_{t+1} + dy_t (x) C_t     (G_{L-1} starts from the final state's gradient)
 *   du_t = G_t B_t,  dB_t = G_t^T u_t,  dC_t = S_t^T dy_t,  df_t[n] = G_t[n] . S_{t-1}[n],  dS_{-1} = f_0 G_0
 *
 * forming every gradient while the states are in cache (T + 2 states per task). The backward keeps them
 * laid out (P, N) (below, before `scan_backward`).
 */
#include <stdlib.h>
#include <string.h>

typedef REAL real;
/* the value width and the state size, fixed at compile time: rows stay in registers, loops unroll */
#define P ((long)VALUE)
#define N ((long)STATE)
#define PN (P * N)
/* the backward's vectors (GCC and clang vector extensions, 32 bytes), and its padded state width: N
 * rounded up to two vectors */
#define LANES ((long)(32 / sizeof(real)))
#define NP ((N + 2 * LANES - 1) / (2 * LANES) * (2 * LANES))
typedef real vec __attribute__((vector_size(32)));

typedef struct {
    const real *p;
    long s[4];
} operand;

static inline const real *at(const operand *o, long z, long t, long h) {
    return o->p + z * o->s[0] + t * o->s[1] + h * o->s[2];
}

/* (P, N) row-major -> the forward's (N, P) */
static void load_state(real *to, const real *from) {
    for (long i = 0; i < P; i++) {
        for (long j = 0; j < N; j++) {
            to[j * P + i] = from ? from[i * N + j] : 0;
        }
    }
}

/* (N, P) -> (P, width), zero past N: the final state (width N) and the backward's checkpoints (NP) */
static void store_state(real *to, const real *from, long width) {
    for (long i = 0; i < P; i++) {
        for (long j = 0; j < width; j++) {
            to[i * width + j] = j < N ? from[j * P + i] : 0;
        }
    }
}

/* u_t = s_t x_t: one row of P */
static inline void value_row(real *u, const operand *x, const operand *s, long z, long t, long h) {
    const real *xv = at(x, z, t, h), sv = *at(s, z, t, h);
    for (long i = 0; i < P; i++) {
        u[i] = sv * xv[i * x->s[3]];
    }
}

/* S <- f_t S + u (x) B_t, and y = S C_t */
static inline void step(real *S, const real *u, const real *bt, long bs, const real *ct, long cs, const real *ft,
                        long fs, real *y) {
    real acc[P];
    for (long i = 0; i < P; i++) {
        acc[i] = 0;
    }
    for (long j = 0; j < N; j++) {
        const real fj = ft[j * fs], bj = bt[j * bs], cj = ct[j * cs];
        real *row = S + j * P;
#pragma omp simd
        for (long i = 0; i < P; i++) {
            const real v = fj * row[i] + u[i] * bj;
            row[i] = v;
            acc[i] += v * cj;
        }
    }
    for (long i = 0; i < P; i++) {
        y[i] = acc[i];
    }
}

/* ops: x (b, L, H, P); B, C (b, L, G, N); f (b, L, H, N); s (b, L, H, 1) (any broadcast). init: (b, H, P, N)
 * contiguous or NULL. Writes y (b, L, H, P), last (b, H, P, N) and, when not NULL, ck (b, H, strips, P, NP):
 * the state before every strip of T positions, for the backward; all contiguous. Returns 0, or 1 when a
 * buffer could not be had. */
int scan_forward(const operand *ops, const real *init, real *y, real *last, real *ck, long b, long L, long H,
                 long G, long T, int threads) {
    const operand *x = ops, *B = ops + 1, *C = ops + 2, *f = ops + 3, *s = ops + 4;
    const long R = H / G, strips = (L + T - 1) / T;
    int failed = 0;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads) reduction(| : failed)
    for (long z = 0; z < b; z++) {
        for (long h = 0; h < H; h++) {
            const long g = h / R;
            real *S = malloc(sizeof(real) * PN), u[P];
            if (S == NULL) {
                failed = 1;
                continue;
            }
            load_state(S, init ? init + (z * H + h) * PN : NULL);
            for (long t = 0; t < L; t++) {
                if (ck && t % T == 0) {  /* in (P, NP), the backward's layout */
                    store_state(ck + ((z * H + h) * strips + t / T) * P * NP, S, NP);
                }
                value_row(u, x, s, z, t, h);
                step(S, u, at(B, z, t, g), B->s[3], at(C, z, t, g), C->s[3], at(f, z, t, h), f->s[3],
                     y + ((z * L + t) * H + h) * P);
            }
            store_state(last + (z * H + h) * PN, S, N);
            free(S);
        }
    }
    return failed;
}

/* The backward keeps states laid out (P, NP), the state axis padded with zeros to NP, a whole number of
 * vector pairs: there the sums over p (dB, dC, df) accumulate down the rows in registers, two vectors of
 * states at a time, and only du's sum over n runs along a row (one vector per row, `part`, added up once per
 * position). In (N, P) three of the four sums would run along rows, each a chain of dependent adds. */

static inline vec vload(const real *p) {
    vec v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void vstore(real *p, vec v) {
    memcpy(p, &v, sizeof v);
}

typedef real half __attribute__((vector_size(16)));

static inline real vsum(vec v) {  /* a tree: halves added, then the few lanes left */
    half lo, hi;
    memcpy(&lo, &v, sizeof lo);
    memcpy(&hi, (char *)&v + sizeof lo, sizeof hi);
    lo += hi;
    real acc = 0;
    for (long l = 0; l < LANES / 2; l++) {
        acc += lo[l];
    }
    return acc;
}

/* a row of N reals with stride `stride` into NP, zero-padded */
static inline void padded_row(real *to, const real *from, long stride) {
    for (long j = 0; j < NP; j++) {
        to[j] = j < N ? from[j * stride] : 0;
    }
}

/* rows [0, rows) of to = f_t from + u (x) B_t, (rows, NP) slices */
static inline void restep(const real *from, real *to, const real *u, const real *bv, const real *fv, long rows) {
    for (long i = 0; i < rows; i++) {
        const real ui = u[i];
        for (long j = 0; j < NP; j += LANES) {
            vstore(to + i * NP + j, vload(fv + j) * vload(from + i * NP + j) + ui * vload(bv + j));
        }
    }
}

/* (P, N) <-> (P, NP) */
static void pad_state(real *to, const real *from) {
    for (long i = 0; i < P; i++) {
        for (long j = 0; j < NP; j++) {
            to[i * NP + j] = from && j < N ? from[i * N + j] : 0;
        }
    }
}

static void unpad_state(real *to, const real *from) {
    for (long i = 0; i < P; i++) {
        memcpy(to + i * N, from + i * NP, sizeof(real) * N);
    }
}

/* one position t of the adjoint over a block of `rows` rows (see scan_backward): Gs holds the block's rows
 * of f_{t+1} G_{t+1} on entry and of f_t G_t (the carry into t - 1) on return; `now`, `before` are its rows
 * of S_t, S_{t-1}. Adds the block's sums over its rows to `sums` (dC, dB, df: 3 NP), writes its rows of
 * du; `part` (rows x LANES) is scratch. */
static inline void adjoint_rows(real *restrict Gs, const real *now, const real *before, const real *dyt,
                                const real *u, const real *bv, const real *cv, const real *fv, real *restrict sums,
                                real *restrict part, real *dut, long rows) {
    memset(part, 0, sizeof(real) * rows * LANES);
    for (long j = 0; j < NP; j += 2 * LANES) {  /* two vectors of states through the block's rows */
        const vec b0 = vload(bv + j), b1 = vload(bv + j + LANES);
        const vec c0 = vload(cv + j), c1 = vload(cv + j + LANES);
        const vec f0 = vload(fv + j), f1 = vload(fv + j + LANES);
        vec dc0 = {0}, dc1 = {0}, db0 = {0}, db1 = {0}, da0 = {0}, da1 = {0};
        for (long i = 0; i < rows; i++) {
            const real dyi = dyt[i], ui = u[i];
            real *gr = Gs + i * NP + j;
            const vec g0 = vload(gr) + dyi * c0, g1 = vload(gr + LANES) + dyi * c1;
            dc0 += vload(now + i * NP + j) * dyi;
            dc1 += vload(now + i * NP + j + LANES) * dyi;
            db0 += g0 * ui;
            db1 += g1 * ui;
            da0 += g0 * vload(before + i * NP + j);
            da1 += g1 * vload(before + i * NP + j + LANES);
            vstore(part + i * LANES, vload(part + i * LANES) + g0 * b0 + g1 * b1);
            vstore(gr, f0 * g0);
            vstore(gr + LANES, f1 * g1);
        }
        vstore(sums + j, vload(sums + j) + dc0);
        vstore(sums + j + LANES, vload(sums + j + LANES) + dc1);
        vstore(sums + NP + j, vload(sums + NP + j) + db0);
        vstore(sums + NP + j + LANES, vload(sums + NP + j + LANES) + db1);
        vstore(sums + 2 * NP + j, vload(sums + 2 * NP + j) + da0);
        vstore(sums + 2 * NP + j + LANES, vload(sums + 2 * NP + j + LANES) + da1);
    }
    for (long i = 0; i < rows; i++) {
        dut[i] = vsum(vload(part + i * LANES));
    }
}

/* ck: from the forward; dy (b, L, H, P) contiguous; dlast (b, H, P, N) contiguous or NULL (no gradient of
 * the final state). Writes dx (b, L, H, P); ds (b, L, H) when not NULL; dB, dC (b, L, H, N), per head; df
 * (b, L, H, K): per state (K = N), summed over n (K = 1) or not at all (K = 0); dinit (b, H, P, N) when not
 * NULL. All contiguous. Returns 0, or 1 when a buffer could not be had.
 *
 * The rows of a state never meet (row i of S_t needs only row i of S_{t-1}): only the sums over p join
 * them. So each strip runs in blocks of PB rows, recompute and adjoint, and the blocks add their sums over
 * p into the strip's `acc`: a block's three states (now, before, G) take 3 PB NP reals, in the first-level
 * cache, where whole states (48 KB at P = N = 64) would not fit. */
#define PB (P < 16 ? P : 16L)
int scan_backward(const operand *ops, const real *ck, const real *dy, const real *dlast, real *dx, real *ds,
                  real *dB, real *dC, real *df, long K, real *dinit, long b, long L, long H, long G, long T,
                  int threads) {
    const operand *x = ops, *B = ops + 1, *C = ops + 2, *f = ops + 3, *s = ops + 4;
    const long R = H / G, strips = (L + T - 1) / T, S = P * NP;
    int failed = 0;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads) reduction(| : failed)
    for (long z = 0; z < b; z++) {
        for (long h = 0; h < H; h++) {
            const long g = h / R;
            /* one buffer: W, the block's states over the strip ((T + 1) x (PB, NP), W[0] the one before it);
             * Gs, the adjoint (P, NP); co, the strip's u, B, C, f (T x (P + 3 NP)); acc, the strip's sums
             * (T x 3 NP); part, du's partial sums (PB x LANES) */
            const long WS = PB * NP + LANES;  /* not a multiple of 4 KB apart: no false store-to-load waits */
            real *W = malloc(sizeof(real) * ((T + 1) * WS + S + T * (P + 3 * NP) + T * 3 * NP + PB * LANES));
            if (W == NULL) {
                failed = 1;
                continue;
            }
            real *Gs = W + (T + 1) * WS, *co = Gs + S, *acc = co + T * (P + 3 * NP), *part = acc + T * 3 * NP;
            pad_state(Gs, dlast ? dlast + (z * H + h) * PN : NULL);
            for (long strip = strips - 1; strip >= 0; strip--) {
                const long t0 = strip * T, width = L - t0 < T ? L - t0 : T;
                for (long k = 0; k < width; k++) {  /* u, B, C, f of the strip's positions */
                    real *c = co + k * (P + 3 * NP);
                    value_row(c, x, s, z, t0 + k, h);
                    padded_row(c + P, at(B, z, t0 + k, g), B->s[3]);
                    padded_row(c + P + NP, at(C, z, t0 + k, g), C->s[3]);
                    padded_row(c + P + 2 * NP, at(f, z, t0 + k, h), f->s[3]);
                }
                memset(acc, 0, sizeof(real) * width * 3 * NP);
                for (long p0 = 0; p0 < P; p0 += PB) {
                    const long rows = P - p0 < PB ? P - p0 : PB;
                    const real *from = ck + ((z * H + h) * strips + strip) * S + p0 * NP;
                    memcpy(W, from, sizeof(real) * rows * NP);
                    for (long k = 1; k <= width; k++) {
                        const real *c = co + (k - 1) * (P + 3 * NP);
                        restep(W + (k - 1) * WS, W + k * WS, c + p0, c + P, c + P + 2 * NP, rows);
                    }
                    for (long k = width; k >= 1; k--) {
                        const long cell = (z * L + t0 + k - 1) * H + h;
                        const real *c = co + (k - 1) * (P + 3 * NP);
                        adjoint_rows(Gs + p0 * NP, W + k * WS, W + (k - 1) * WS, dy + cell * P + p0, c + p0,
                                     c + P, c + P + NP, c + P + 2 * NP, acc + (k - 1) * 3 * NP, part,
                                     dx + cell * P + p0, rows);  /* du, until the pass below */
                    }
                }
                for (long k = 0; k < width; k++) {  /* du = dL/d(s x): dx = s du, ds = du . x */
                    const long cell = (z * L + t0 + k) * H + h;
                    const real *xv = at(x, z, t0 + k, h), sv = *at(s, z, t0 + k, h);
                    real *dxt = dx + cell * P, dsum = 0;
                    for (long i = 0; i < P; i++) {
                        dsum += dxt[i] * xv[i * x->s[3]];
                        dxt[i] *= sv;
                    }
                    if (ds) {
                        ds[cell] = dsum;
                    }
                }
                for (long k = 0; k < width; k++) {
                    const long cell = (z * L + t0 + k) * H + h;
                    const real *sums = acc + k * 3 * NP;
                    real fsum = 0;
                    for (long j = 0; j < N; j++) {
                        dC[cell * N + j] = sums[j];
                        dB[cell * N + j] = sums[NP + j];
                        fsum += sums[2 * NP + j];
                        if (K == N) {
                            df[cell * N + j] = sums[2 * NP + j];
                        }
                    }
                    if (K == 1) {
                        df[cell] = fsum;
                    }
                }
            }
            if (dinit) {
                unpad_state(dinit + (z * H + h) * PN, Gs);
            }
            free(W);
        }
    }
    return failed;
}
"""
