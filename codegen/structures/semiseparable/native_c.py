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
 * and, with a skip term (Mamba's D x_t), y_t += D x_t on the same row, D broadcast to (b, L, H, P).
 *
 * S is laid out (N, P): the inner loops run along the value axis P, so y accumulates in a row of P with no
 * horizontal sums, and one state (P N reals, 16 KB at P = N = 64 in fp32) stays in the core's first-level
 * cache for the whole sequence. Every operand is addressed through its four strides (b, L, head, last), so
 * broadcast operands (a per-head factor read along n, an absent one as a constant) need no copies.
 *
 * The backward is two sweeps per (z, h) as independent tasks, the adjoint G_t = dL/dS_t from the last
 * position back and the forward again,
 *
 *   G_t = f_{t+1} G_{t+1} + dy_t (x) C_t     (G_{L-1} starts from the final state's gradient)
 *   du_t = G_t B_t,  dB_t = G_t^T u_t,  dS_{-1} = f_0 G_0;     dC_t = S_t^T dy_t
 *
 * each keeping its one state in the first-level cache, laid out (P, N) (below, before `dC_pass`); then the
 * log-decay's gradient from dB and dC and the states the forward kept every T positions (`decay_grad`).
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

/* (N, P) -> (P, N) row-major: the final state */
static void store_state(real *to, const real *from) {
    for (long i = 0; i < P; i++) {
        for (long j = 0; j < N; j++) {
            to[i * N + j] = from[j * P + i];
        }
    }
}

/* A sweep's rows of x, y, dy, dx, dB and dC lie a row of heads apart (H P or H N reals): too far for the
 * hardware's prefetchers, which stay within a page, so each sweep asks for the `n` reals of a row AHEAD
 * positions before it reaches them (contiguous rows only). The rows it writes too: a store that misses the
 * cache waits for the line to be read first (without these, the backward's sweeps took 1.2 and 1.5 times as
 * long, and the decay's gradient, which reads dB and dC a row of heads apart, 2.2 times). */
#define AHEAD 8
static inline void prefetch_row(const real *row, long stride, long n, int write) {
    for (long i = 0; stride == 1 && i < n; i += 64 / (long)sizeof(real)) {
        if (write) {
            __builtin_prefetch(row + i, 1);
        } else {
            __builtin_prefetch(row + i, 0);
        }
    }
}

/* B's or C's stride for the forward's `prefetch_row`: 1 where its rows lie apart (a group per head, say), else 0
 * (rows next to each other, which the hardware prefetches well enough there: asking costs the forward 2 to
 * 6%). The adjoint and dC sweeps ask for contiguous B and C rows whatever their layout: a third of the
 * adjoint's time went to their loads. */
static inline long far(const operand *o) {
    return o->s[3] == 1 && o->s[1] > N;
}

/* u_t = s_t x_t: one row of P */
static inline void value_row(real *u, const operand *x, const operand *s, long z, long t, long h) {
    const real *xv = at(x, z, t, h), sv = *at(s, z, t, h);
    for (long i = 0; i < P; i++) {
        u[i] = sv * xv[i * x->s[3]];
    }
}

/* S <- f_t S + u (x) B_t, and y = S C_t (+ D x_t, the skip term, where dv, D's row, is not NULL: the sum starts
 * from it, so neither D x nor the sum is a tensor of its own) */
static inline void step(real *S, const real *u, const real *bt, long bs, const real *ct, long cs, const real *ft,
                        long fs, const real *dv, long ds, const real *xv, long xs, real *y) {
    real acc[P];
    for (long i = 0; i < P; i++) {
        acc[i] = dv ? dv[i * ds] * xv[i * xs] : 0;
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

/* ops: x (b, L, H, P); B, C (b, L, G, N); f (b, L, H, N); s (b, L, H, 1) (any broadcast). skip: D (b, L, H, P)
 * (any broadcast) or NULL. init: (b, H, P, N) contiguous or NULL. Writes y (b, L, H, P), last (b, H, P, N)
 * and, when not NULL, ck (b, H, chunks, N, P): the state before every T-th position, for the decay's gradient
 * (`decay_grad`); all contiguous. Returns 0, or 1 when a buffer could not be had. */
int scan_forward(const operand *ops, const operand *skip, const real *init, real *y, real *last, real *ck, long b,
                 long L, long H, long G, long T, int threads) {
    const operand *x = ops, *B = ops + 1, *C = ops + 2, *f = ops + 3, *s = ops + 4;
    const long R = H / G, chunks = (L + T - 1) / T, ds = skip ? skip->s[3] : 0;
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
                if (ck && t % T == 0) {
                    memcpy(ck + ((z * H + h) * chunks + t / T) * PN, S, sizeof(real) * PN);
                }
                if (t + AHEAD < L) {
                    prefetch_row(at(x, z, t + AHEAD, h), x->s[3], P, 0);
                    prefetch_row(y + ((z * L + t + AHEAD) * H + h) * P, 1, P, 1);
                    prefetch_row(at(B, z, t + AHEAD, g), far(B), N, 0);
                    prefetch_row(at(C, z, t + AHEAD, g), far(C), N, 0);
                }
                value_row(u, x, s, z, t, h);
                step(S, u, at(B, z, t, g), B->s[3], at(C, z, t, g), C->s[3], at(f, z, t, h), f->s[3],
                     skip ? at(skip, z, t, h) : NULL, ds, at(x, z, t, h), x->s[3], y + ((z * L + t) * H + h) * P);
            }
            store_state(last + (z * H + h) * PN, S);
            free(S);
        }
    }
    return failed;
}

/* The backward's states are laid out (P, NP), the state axis padded with zeros to NP, a whole number of
 * vector pairs: there the sums over p (dB, dC) accumulate down the rows in registers, and only du's sum over
 * n runs along a row (one vector per row, added up at its end). */

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

/* (P, N) row-major or NULL (zeros) -> (P, NP) */
static void pad_state(real *to, const real *from) {
    for (long i = 0; i < P; i++) {
        for (long j = 0; j < NP; j++) {
            to[i * NP + j] = from && j < N ? from[i * N + j] : 0;
        }
    }
}

/* The forward again, for dC_t = S_t^T dy_t: S (P, NP) from the initial state, rows u_t (P), B_t and f_t (NP
 * each) in `co`. */
static void dC_pass(const operand *x, const operand *B, const operand *f, const operand *s, const operand *dy,
                    const real *init, real *dC, long z, long h, long g, long L, long H, real *S, real *co) {
    real *u = co, *bv = co + P, *fv = co + P + NP;
    pad_state(S, init ? init + (z * H + h) * PN : NULL);
    for (long t = 0; t < L; t++) {
        const long cell = (z * L + t) * H + h, dys = dy->s[3];
        const real *dyt = at(dy, z, t, h);
        if (t + AHEAD < L) {
            prefetch_row(at(x, z, t + AHEAD, h), x->s[3], P, 0);
            prefetch_row(at(dy, z, t + AHEAD, h), dys, P, 0);
            prefetch_row(dC + (cell + AHEAD * H) * N, 1, N, 1);
            prefetch_row(at(B, z, t + AHEAD, g), B->s[3], N, 0);
        }
        value_row(u, x, s, z, t, h);
        padded_row(bv, at(B, z, t, g), B->s[3]);
        padded_row(fv, at(f, z, t, h), f->s[3]);
        for (long j = 0; j < NP; j += 2 * LANES) {  /* two vectors of states down all P rows */
            const vec b0 = vload(bv + j), b1 = vload(bv + j + LANES);
            const vec f0 = vload(fv + j), f1 = vload(fv + j + LANES);
            vec dc0 = {0}, dc1 = {0};
            for (long i = 0; i < P; i++) {
                real *row = S + i * NP + j;
                const vec v0 = f0 * vload(row) + u[i] * b0, v1 = f1 * vload(row + LANES) + u[i] * b1;
                vstore(row, v0);
                vstore(row + LANES, v1);
                dc0 += v0 * dyt[i * dys];
                dc1 += v1 * dyt[i * dys];
            }
            real out[2 * LANES];
            vstore(out, dc0);
            vstore(out + LANES, dc1);
            for (long k = 0; k < 2 * LANES && j + k < N; k++) {
                dC[cell * N + j + k] = out[k];
            }
        }
    }
}

/* One adjoint step on row i of G (and row i + 1 where `two`, sharing each load of B_t, C_t and f_t):
 * g = G + dy_t (x) C_t; db += g^T u_t; G <- f_t g; and du_t = g B_t as one vector per row (`part`, summed
 * by the caller). Row by row, so dB's NP / LANES sums stay in registers (the caller's `db`, which nothing
 * else points into). */
static inline void adjoint_rows(real *restrict Gi, int two, real dy0, real dy1, const real *ui, const real *bv,
                                const real *cv, const real *fv, vec *restrict db, real *restrict part) {
    const real u0 = ui[0], u1 = two ? ui[1] : 0;
    vec acc0 = {0}, acc1 = {0};
    for (long k = 0; k < NP / LANES; k++) {
        const vec b = vload(bv + k * LANES), c = vload(cv + k * LANES), f = vload(fv + k * LANES);
        const vec g0 = vload(Gi + k * LANES) + dy0 * c;
        vstore(Gi + k * LANES, f * g0);
        acc0 += g0 * b;
        if (two) {
            const vec g1 = vload(Gi + NP + k * LANES) + dy1 * c;
            vstore(Gi + NP + k * LANES, f * g1);
            acc1 += g1 * b;
            db[k] += g0 * u0 + g1 * u1;
        } else {
            db[k] += g0 * u0;
        }
    }
    vstore(part, acc0);
    if (two) {
        vstore(part + LANES, acc1);
    }
}

/* da_t exactly, from G = f_t G_t and S = S_{t-1} (N, P): the sum over p of their product, per state n
 * (K = N) or over n too (K = 1), in double. */
static void crossing(const real *G, const real *S, double *out, long K) {
    for (long j = 0; j < K; j++) {
        out[j] = 0;
    }
    for (long j = 0; j < N; j++) {
        double sum = 0;
        for (long i = 0; i < P; i++) {
            sum += (double)G[i * NP + j] * S[j * P + i];
        }
        out[K == N ? j : 0] += sum;
    }
}

/* The adjoint G_t = dL/dS_t from the last position back, G (P, NP) holding f_{t+1} G_{t+1} on entry to t:
 * du_t = G_t B_t (dx = s du + D dy with a skip term, ds = du . x), dB_t = G_t^T u_t; on leaving t it holds
 * f_t G_t, which after t = 0 is the initial state's gradient. The skip's gradient, sum_t dy_t x_t per value
 * (in double), into dskip (P) when not NULL. At every T-th position, with the forward's state before it (ck),
 * the decay's exact gradient there (`crossing`, into `cross`: chunks x K). `co`: u_t (P), B_t, C_t, f_t (NP
 * each), part (P x LANES). */
static void adjoint_pass(const operand *x, const operand *B, const operand *C, const operand *f, const operand *s,
                         const operand *dy, const real *dlast, const real *ck, double *cross, long T, long K,
                         const operand *skip, real *dx, real *ds, real *dB, real *dinit, real *dskip, long z,
                         long h, long g, long L, long H, real *G, real *co) {
    real *u = co, *bv = co + P, *cv = bv + NP, *fv = cv + NP, *part = fv + NP;
    double dd[P];
    memset(dd, 0, sizeof dd);
    pad_state(G, dlast ? dlast + (z * H + h) * PN : NULL);
    for (long t = L - 1; t >= 0; t--) {
        const long cell = (z * L + t) * H + h, dys = dy->s[3];
        const real *dyt = at(dy, z, t, h);
        if (t >= AHEAD) {
            prefetch_row(at(x, z, t - AHEAD, h), x->s[3], P, 0);
            prefetch_row(at(dy, z, t - AHEAD, h), dys, P, 0);
            prefetch_row(dx + (cell - AHEAD * H) * P, 1, P, 1);
            prefetch_row(dB + (cell - AHEAD * H) * N, 1, N, 1);
            prefetch_row(at(B, z, t - AHEAD, g), B->s[3], N, 0);
            prefetch_row(at(C, z, t - AHEAD, g), C->s[3], N, 0);
        }
        value_row(u, x, s, z, t, h);
        padded_row(bv, at(B, z, t, g), B->s[3]);
        padded_row(cv, at(C, z, t, g), C->s[3]);
        padded_row(fv, at(f, z, t, h), f->s[3]);
        vec db[NP / LANES];
        memset(db, 0, sizeof db);
        long i = 0;
        for (; i + 2 <= P; i += 2) {
            const real dy0 = dyt[i * dys], dy1 = dyt[(i + 1) * dys];
            adjoint_rows(G + i * NP, 1, dy0, dy1, u + i, bv, cv, fv, db, part + i * LANES);
        }
        if (i < P) {
            adjoint_rows(G + i * NP, 0, dyt[i * dys], 0, u + i, bv, cv, fv, db, part + i * LANES);
        }
        memcpy(dB + cell * N, db, sizeof(real) * N);
        const real *xv = at(x, z, t, h), sv = *at(s, z, t, h), *dv = skip ? at(skip, z, t, h) : NULL;
        real dsum = 0;
        for (long i = 0; i < P; i++) {  /* du = dL/d(s x): dx = s du (+ D dy), ds = du . x */
            const real du = vsum(vload(part + i * LANES));
            dsum += du * xv[i * x->s[3]];
            dx[cell * P + i] = sv * du + (dv ? dv[i * skip->s[3]] * dyt[i * dys] : 0);
        }
        for (long i = 0; dskip && i < P; i++) {
            dd[i] += (double)dyt[i * dys] * xv[i * x->s[3]];
        }
        if (ds) {
            ds[cell] = dsum;
        }
        if (cross && t % T == 0) {
            crossing(G, ck + t / T * PN, cross + t / T * K, K);
        }
    }
    if (dinit) {
        for (long i = 0; i < P; i++) {
            memcpy(dinit + (z * H + h) * PN + i * N, G + i * NP, sizeof(real) * N);
        }
    }
    for (long i = 0; dskip && i < P; i++) {
        dskip[(z * H + h) * P + i] = (real)dd[i];
    }
}

/* The log-decay's gradient da_t = f_t G_t . S_{t-1} without the states between checkpoints: with
 * a_t = log f_t, every path from x_j to y_i (j <= i) carries exp(a_{j+1} + ... + a_i), so
 *
 *   da_t[n] = da_{t+1}[n] + C_t[n] dC_t[n] - B_t[n] dB_t[n]
 *
 * (paths ending at t join those crossing t + 1, paths starting there leave), from the exact value at every
 * T-th position (`cross`) and after the last one from the final state's sum_p dlast[p, n] last[p, n]. At
 * most T - 1 terms since an exact value: in fp32 the sum's error stays that of T terms whatever L. Zero
 * where f_t = 0 (a segment start: a_t reaches nothing). In double, per state (K = N) or over n (K = 1). */
static void decay_grad(const operand *B, const operand *C, const operand *f, const real *last, const real *dlast,
                       const double *cross, long T, const real *dB, const real *dC, real *df, long K, long z,
                       long h, long g, long L, long H, double *acc) {
    for (long j = 0; j < K; j++) {
        acc[j] = 0;
    }
    for (long j = 0; dlast && j < N; j++) {
        for (long i = 0; i < P; i++) {
            const long e = (z * H + h) * PN + i * N + j;
            acc[K == N ? j : 0] += (double)dlast[e] * last[e];
        }
    }
    for (long t = L - 1; t >= 0; t--) {
        const long cell = (z * L + t) * H + h;
        const real *bt = at(B, z, t, g), *ct = at(C, z, t, g), *ft = at(f, z, t, h);
        if (t >= AHEAD) {
            prefetch_row(dB + (cell - AHEAD * H) * N, 1, N, 0);
            prefetch_row(dC + (cell - AHEAD * H) * N, 1, N, 0);
            prefetch_row(df + (cell - AHEAD * H) * K, 1, K, 1);
        }
        for (long j = 0; j < N; j++) {
            const double in = (double)ct[j * C->s[3]] * dC[cell * N + j];  /* paths ending at t */
            const double out = (double)bt[j * B->s[3]] * dB[cell * N + j];  /* paths starting there */
            acc[K == N ? j : 0] += in - out;
        }
        for (long j = 0; t % T == 0 && j < K; j++) {
            acc[j] = cross[t / T * K + j];
        }
        for (long j = 0; j < K; j++) {
            const int cut = ft[j * f->s[3]] == 0;
            df[cell * K + j] = cut ? 0 : (real)acc[j];
            acc[j] = cut ? 0 : acc[j];
        }
    }
}

/* ops: the forward's and dy (b, L, H, P) (any strides); skip: the forward's. init: (b, H, P, N) contiguous or
 * NULL; last, ck, T: the forward's (ck read when K > 0); dlast (b, H, P, N) contiguous or NULL (no gradient of
 * the final state). Writes dx (b, L, H, P);
 * ds (b, L, H) when not NULL; dB, dC (b, L, H, N), per head; df (b, L, H, K): the log-decay's gradient per
 * state (K = N), summed over n (K = 1) or not at all (K = 0); dinit (b, H, P, N) and dskip (b, H, P): the skip's
 * gradient per batch row, when not NULL. All contiguous. Returns 0, or 1 when a buffer could not be had.
 *
 * Two independent sweeps per (z, h), run as separate tasks: the adjoint backwards (dx, ds, dB, dinit) and the
 * forward again (dC); each keeps one state in the first-level cache. The decay's gradient follows from their
 * results and the forward's states every T positions (`decay_grad`). */
int scan_backward(const operand *ops, const operand *skip, const real *init, const real *last, const real *dlast,
                  const real *ck, real *dx, real *ds, real *dB, real *dC, real *df, long K, real *dinit,
                  real *dskip, long b, long L, long H, long G, long T, int threads) {
    const operand *x = ops, *B = ops + 1, *C = ops + 2, *f = ops + 3, *s = ops + 4, *dy = ops + 5;
    const long R = H / G, tasks = b * H, chunks = (L + T - 1) / T;
    double *cross = K ? malloc(sizeof(double) * tasks * chunks * K) : NULL;  /* exact da every T positions */
    if (K && cross == NULL) {
        return 1;
    }
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
#pragma omp for schedule(dynamic, 1)
        for (long task = 0; task < 2 * tasks; task++) {  /* the adjoints first: they take longer */
            const long zh = task % tasks, z = zh / H, h = zh % H;
            real *W = malloc(sizeof(real) * (P * NP + P + 3 * NP + P * LANES));
            if (W == NULL) {
                failed = 1;
                continue;
            }
            if (task < tasks) {
                adjoint_pass(x, B, C, f, s, dy, dlast, K ? ck + zh * chunks * PN : NULL,
                             K ? cross + zh * chunks * K : NULL, T, K, skip, dx, ds, dB, dinit, dskip, z, h,
                             h / R, L, H, W, W + P * NP);
            } else {
                dC_pass(x, B, f, s, dy, init, dC, z, h, h / R, L, H, W, W + P * NP);
            }
            free(W);
        }
        /* the loop's implicit barrier: every dB and dC is written */
        if (K) {
#pragma omp for schedule(static)
            for (long zh = 0; zh < tasks; zh++) {
                double *acc = malloc(sizeof(double) * K);
                if (acc == NULL) {
                    failed = 1;
                    continue;
                }
                decay_grad(B, C, f, last, dlast, cross + zh * chunks * K, T, dB, dC, df, K, zh / H, zh % H,
                           zh % H / R, L, H, acc);
                free(acc);
            }
        }
    }
    free(cross);
    return failed;
}
"""
