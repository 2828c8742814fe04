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
#if defined(__FMA__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#endif

typedef REAL real;
/* the value width and the state size, fixed at compile time: rows stay in registers, loops unroll */
#define P ((long)VALUE)
#define N ((long)STATE)
#define PN (P * N)
/* the backward's vectors (GCC and clang vector extensions, 32 bytes), and its padded state width: N
 * rounded up to two vectors */
#define LANES ((long)(32 / sizeof(real)))
#define NP ((N + 2 * LANES - 1) / (2 * LANES) * (2 * LANES))
/* dC_step's strip width in vectors: its sums, B_t's and f_t's vectors stay in registers (32 with AVX-512's
 * 256-bit forms, else 16) */
#if defined(__AVX512VL__)
#define WIDE 8
#else
#define WIDE 4
#endif
typedef real vec __attribute__((vector_size(32)));

typedef struct {
    const real *p;
    long s[4];
} operand;

static inline const real *at(const operand *o, long z, long t, long h) {
    return o->p + z * o->s[0] + t * o->s[1] + h * o->s[2];
}

/* n reals from a cache line's start (64 bytes), or NULL: the states and the workspace's rows of NP reals then
 * start on one, and no vector of the backward's sweeps straddles two lines. malloc's 16-byte alignment could
 * leave every second one split in two (the backward 1.02x to 1.08x as fast aligned, medians of four runs of 21
 * rounds, two threads). */
static real *lines(long n) {
    return aligned_alloc(64, (sizeof(real) * n + 63) / 64 * 64);
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

/* A sweep's rows of x, y, dy and dx lie a row of heads apart (H P reals): too far for the
 * hardware's prefetchers, which stay within a page, so each sweep asks for the `n` reals of a row AHEAD
 * positions before it reaches them (contiguous rows only). The rows it writes too: a store that misses the
 * cache waits for the line to be read first (without these, the backward's sweeps took 1.2 and 1.5 times as
 * long, and the decay's gradient, which then read dB and dC a row of heads apart, 2.2 times). */
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
    if (x->s[3] == 1) {  /* the usual layout, apart so that the loop is vectorised */
        for (long i = 0; i < P; i++) {
            u[i] = sv * xv[i];
        }
    } else {
        for (long i = 0; i < P; i++) {
            u[i] = sv * xv[i * x->s[3]];
        }
    }
}

/* A decay factor the same for every state (per head, or none) is not multiplied into the state at every
 * position: within a stretch the state is kept as S = lam S' with one scalar lam, the product of the factors
 * since the stretch began, so that
 *
 *   S'_t = S'_{t-1} + (u_t / lam_t) (x) B_t,   y_t = lam_t (S'_t C_t)
 *
 * costs two vector operations per state element and position instead of three (the adjoint: three, not four).
 * A stretch ends, lam multiplied into the state (`settle`), every STRIP positions, at every checkpoint, and
 * before lam would leave [LOW, HIGH] (a segment's start, f = 0, among them). The scaled rows u_t / lam and the
 * state S' are then at most 2^20 times the plain loop's: in fp32 the loops stay finite for values up to about
 * 3e32, where the plain loop's limit is 3e38 (with 2^40 a review found inf from values of 3e26). Every product
 * of factors still has at most STRIP terms, as in the plain loop. docs/semiseparable.md, "A decay per head". */
#define STRIP 64
#define LOW ((real)0x1p-20)
#define HIGH ((real)0x1p20)

static inline int in_range(real c) {
    return c >= LOW && c <= HIGH;  /* false for NaN: settled at once, and the NaN reaches the state */
}

static void settle(real *S, long n, real c) {
    for (long i = 0; c != 1 && i < n; i++) {
        S[i] *= c;
    }
}

/* S <- f_t S + u (x) B_t (ft not NULL; without it, S <- S + u (x) B_t), and y = lam S C_t (+ D x_t, the skip
 * term, where dv, D's row, is not NULL: neither D x nor the sum is a tensor of its own) */
static inline __attribute__((always_inline)) void step(real *S, const real *u, const real *bt, long bs,
                                                       const real *ct, long cs, const real *ft, long fs, real lam,
                                                       const real *dv, long ds, const real *xv, long xs,
                                                       real *y) {
    real acc[P];
    for (long i = 0; i < P; i++) {
        acc[i] = 0;
    }
    for (long j = 0; j < N; j++) {
        const real fj = ft ? ft[j * fs] : 1, bj = bt[j * bs], cj = ct[j * cs];
        real *row = S + j * P;
#pragma omp simd
        for (long i = 0; i < P; i++) {
            const real v = (ft ? fj * row[i] : row[i]) + u[i] * bj;
            row[i] = v;
            acc[i] += v * cj;
        }
    }
    for (long i = 0; i < P; i++) {
        y[i] = lam * acc[i] + (dv ? dv[i * ds] * xv[i * xs] : 0);
    }
}

/* ops: x (b, L, H, P); B, C (b, L, G, N); f (b, L, H, N); s (b, L, H, 1) (any broadcast). skip: D (b, L, H, P)
 * (any broadcast) or NULL. init: (b, H, P, N) contiguous or NULL. Writes y (b, L, H, P), last (b, H, P, N)
 * and, when not NULL, ck (b, H, chunks, N, P): the state before every T-th position, for the decay's gradient
 * (`decay_grad`); all contiguous. Returns 0, or 1 when a buffer could not be had. */
int scan_forward(const operand *ops, const operand *skip, const real *init, real *y, real *last, real *ck, long b,
                 long L, long H, long G, long T, int threads) {
    (void)threads;  /* read by OpenMP's pragmas only: unused in a build without OpenMP */
    const operand *x = ops, *B = ops + 1, *C = ops + 2, *f = ops + 3, *s = ops + 4;
    const long R = H / G, chunks = (L + T - 1) / T, ds = skip ? skip->s[3] : 0;
    const int scaled = f->s[3] == 0;
    int failed = 0;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads) reduction(| : failed)
    for (long z = 0; z < b; z++) {
        for (long h = 0; h < H; h++) {
            const long g = h / R;
            real *S = lines(PN), u[P];
            if (S == NULL) {
                failed = 1;
                continue;
            }
            load_state(S, init ? init + (z * H + h) * PN : NULL);
            real lam = 1;  /* a per-head factor's S = lam S' (above `STRIP`); 1 with a factor per state */
            for (long t = 0; t < L; t++) {
                const real *ft = at(f, z, t, h);
                if (scaled && (t % STRIP == 0 || t % T == 0)) {
                    settle(S, PN, lam);
                    lam = 1;
                }
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
                const real *bt = at(B, z, t, g), *ct = at(C, z, t, g), *dv = skip ? at(skip, z, t, h) : NULL;
                real *yt = y + ((z * L + t) * H + h) * P;
                if (scaled) {
                    const real c = lam * *ft;
                    if (in_range(c)) {
                        lam = c;
                    } else {
                        settle(S, PN, c);
                        lam = 1;
                    }
                    const real inv = 1 / lam;
                    for (long i = 0; i < P; i++) {
                        u[i] *= inv;
                    }
                    step(S, u, bt, B->s[3], ct, C->s[3], NULL, 0, lam, dv, ds, at(x, z, t, h), x->s[3], yt);
                } else {
                    step(S, u, bt, B->s[3], ct, C->s[3], ft, f->s[3], 1, dv, ds, at(x, z, t, h), x->s[3], yt);
                }
            }
            settle(S, PN, lam);
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

/* LANES reals from p on, `stride` apart */
static inline vec strided(const real *p, long stride) {
    if (stride == 1) {
        return vload(p);
    }
    if (stride == 0) {
        return (vec){0} + p[0];
    }
    vec v;
    for (long l = 0; l < LANES; l++) {
        v[l] = p[l * stride];
    }
    return v;
}

/* The sums of LANES rows' LANES lanes each, as one vector, by a tree of shuffle-adds across rows (LANES - 1
 * per LANES rows instead of a horizontal sum per row): `pairsums` adds neighbouring lanes of two rows,
 * `groupsums` the rest of the tree from LANES / 2 such pairs. LANES by the preprocessor: float_LANES or
 * double_LANES after REAL's expansion. */
#define float_LANES 8
#define double_LANES 4
#define JOIN(a, b) a##b
#define LANES_OF(r) JOIN(r, _LANES)
#if defined(__clang__) || __GNUC__ >= 12
#define SHUF __builtin_shufflevector
#else /* older GCC: its own builtin, the lanes as an integer vector of vec's shape */
#if LANES_OF(REAL) == 8
typedef int lanes __attribute__((vector_size(32)));
#else
typedef long long lanes __attribute__((vector_size(32)));
#endif
#define SHUF(a, b, ...) __builtin_shuffle(a, b, (lanes){__VA_ARGS__})
#endif
#if LANES_OF(REAL) != 8 && LANES_OF(REAL) != 4
#error "REAL must be float or double"
#endif
static inline vec pairsums(vec r0, vec r1) {
#if LANES_OF(REAL) == 8
    return SHUF(r0, r1, 0, 8, 2, 10, 4, 12, 6, 14) + SHUF(r0, r1, 1, 9, 3, 11, 5, 13, 7, 15);
#else
    return SHUF(r0, r1, 0, 4, 2, 6) + SHUF(r0, r1, 1, 5, 3, 7);
#endif
}

static inline vec groupsums(const vec *a) {
#if LANES_OF(REAL) == 8
    vec b[2];
    for (int k = 0; k < 2; k++) {
        b[k] = SHUF(a[2 * k], a[2 * k + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
               SHUF(a[2 * k], a[2 * k + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    return SHUF(b[0], b[1], 0, 1, 2, 3, 8, 9, 10, 11) + SHUF(b[0], b[1], 4, 5, 6, 7, 12, 13, 14, 15);
#else
    return SHUF(a[0], a[1], 0, 1, 4, 5) + SHUF(a[0], a[1], 2, 3, 6, 7);
#endif
}

typedef double wide __attribute__((vector_size(LANES * sizeof(double))));  /* a vec's lanes in double */

/* a b + c in one rounding where the CPU fuses them (x86's FMA), else as written. GCC with the build's
 * -std=c11 fuses nothing by itself (clang contracts a b + c anyway): the adjoint's sweep asks for it (3 instead
 * of 6 operations per element and position, of the 6 a Zen 4 core issues per cycle: the adjoint 1.12x as fast
 * in cache); the forward's and dC's sweeps do not: fused, they took 1.2x and 1.36x as long in cache (GCC, same
 * Zen 4; why, unmeasured). */
static inline vec fmadd(vec a, vec b, vec c) {
#if defined(__FMA__) && (defined(__x86_64__) || defined(__i386__))
#if LANES_OF(REAL) == 8
    return (vec)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
    return (vec)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#endif
#else
    return a * b + c;
#endif
}

/* sum_j a[j * as] b[j] over N in double; with as = 1, four terms at a time in vectors (a running sum of
 * scalars, each add waiting for the last, took a sixth of the backward's sweeps at N = 64) */
typedef double dvec __attribute__((vector_size(32)));
typedef real rvec4 __attribute__((vector_size(4 * sizeof(real))));

static inline double dot(const real *a, long as, const real *b) {
    if (as == 1 && N % 4 == 0) {
        dvec acc = {0, 0, 0, 0};
        for (long j = 0; j < N; j += 4) {
            rvec4 av, bv;
            memcpy(&av, a + j, sizeof av);
            memcpy(&bv, b + j, sizeof bv);
            acc += __builtin_convertvector(av, dvec) * __builtin_convertvector(bv, dvec);
        }
        return (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
    double sum = 0;
    for (long j = 0; j < N; j++) {
        sum += (double)a[j * as] * b[j];
    }
    return sum;
}

/* a row of N reals with stride `stride` into NP, zero-padded */
static inline void padded_row(real *to, const real *from, long stride) {
    if (stride == 1) {
        memcpy(to, from, sizeof(real) * N);
    } else {
        for (long j = 0; j < N; j++) {
            to[j] = from[j * stride];
        }
    }
    for (long j = N; j < NP; j++) {
        to[j] = 0;
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

/* S <- f_t S + u (x) B_t on row i's W vectors of states from state j on (f's where `decayed`), and their terms
 * of dC (S^T dy) into dc */
static inline __attribute__((always_inline)) void dC_row(real *row, int W, int decayed, const vec *f, real u,
                                                         const vec *b, real dy, vec *dc) {
    for (int k = 0; k < W; k++) {
        const vec r = vload(row + k * LANES), v = (decayed ? f[k] * r : r) + u * b[k];
        vstore(row + k * LANES, v);
        dc[k] += v * dy;
    }
}

/* dC_step's strip of W vectors from state j down all P rows; a narrow strip (2 W <= WIDE) keeps the sums of
 * even and odd rows apart, so that each add waits for the one two rows up, not the one just before */
static inline __attribute__((always_inline)) void dC_strip(real *S, long j, int W, const real *u, const real *bv,
                                                           const real *fv, const real *dyt, long dys, real lam,
                                                           real *dct) {
    const int apart = 2 * W <= WIDE;
    vec b[WIDE], f[WIDE], even[WIDE], odd[WIDE];
    for (int k = 0; k < W; k++) {
        b[k] = vload(bv + j + k * LANES);
        f[k] = fv ? vload(fv + j + k * LANES) : b[k];  /* unread without fv */
        even[k] = odd[k] = (vec){0};
    }
    long i = 0;
    for (; i + 2 <= P; i += 2) {
        dC_row(S + i * NP + j, W, fv != NULL, f, u[i], b, dyt[i * dys], even);
        dC_row(S + (i + 1) * NP + j, W, fv != NULL, f, u[i + 1], b, dyt[(i + 1) * dys], apart ? odd : even);
    }
    if (i < P) {
        dC_row(S + i * NP + j, W, fv != NULL, f, u[i], b, dyt[i * dys], even);
    }
    real out[WIDE * LANES];
    for (int k = 0; k < W; k++) {
        vstore(out + k * LANES, lam * (apart ? even[k] + odd[k] : even[k]));
    }
    for (long k = 0; k < W * LANES && j + k < N; k++) {
        dct[j + k] = out[k];
    }
}

/* One position of the forward again: S <- f_t S + u (x) B_t (fv, f_t's row, not NULL) or S <- S + u (x) B_t,
 * then dC_t = lam S^T dy_t into dct (N), WIDE vectors of states at a time down all P rows (the rest in one
 * narrower strip): each broadcast of u_t[i] and dy_t[i] serves WIDE loads and stores of S, whose traffic, not
 * the arithmetic, set this loop's pace with strips of 2 (a kernel's forward+backward 1.03x to 1.13x as fast
 * with 8 at p = n = 64 on a Zen 4). */
static inline __attribute__((always_inline)) void dC_step(real *S, const real *u, const real *bv, const real *fv,
                                                          const real *dyt, long dys, real lam, real *dct) {
    long j = 0;
    for (; j + WIDE * LANES <= NP; j += WIDE * LANES) {
        dC_strip(S, j, WIDE, u, bv, fv, dyt, dys, lam, dct);
    }
    if (j < NP) {
        dC_strip(S, j, (int)((NP - j) / LANES), u, bv, fv, dyt, dys, lam, dct);
    }
}

/* The forward again, for dC_t = S_t^T dy_t: S (P, NP) from the initial state, rows B_t and f_t (NP each) and
 * u_t (P) in `co`; a per-head factor as in the forward (`STRIP`). With `in` (K = 1), C_t . dC_t per position
 * (`decay_grad`). */
static inline __attribute__((always_inline)) void dC_pass(const operand *x, const operand *B, const operand *C,
                                                         const operand *f, const operand *s, const operand *dy,
                                                         const real *init, real *dC, double *in, long z, long h,
                                                         long g, long L, long H, real *S, real *co) {
    real *bv = co, *fv = co + NP, *u = fv + NP, lam = 1;
    const int scaled = f->s[3] == 0;
    pad_state(S, init ? init + (z * H + h) * PN : NULL);
    for (long t = 0; t < L; t++) {
        const long own = (z * H + h) * L + t, dys = dy->s[3];  /* dC's row: per head */
        const real *dyt = at(dy, z, t, h), *ft = at(f, z, t, h);
        if (t + AHEAD < L) {
            prefetch_row(at(x, z, t + AHEAD, h), x->s[3], P, 0);
            prefetch_row(at(dy, z, t + AHEAD, h), dys, P, 0);
            prefetch_row(dC + (own + AHEAD) * N, 1, N, 1);
            prefetch_row(at(B, z, t + AHEAD, g), B->s[3], N, 0);
            if (in) {
                prefetch_row(at(C, z, t + AHEAD, g), C->s[3], N, 0);
            }
        }
        value_row(u, x, s, z, t, h);
        padded_row(bv, at(B, z, t, g), B->s[3]);
        if (scaled) {
            const real c = lam * *ft;
            if (t % STRIP != 0 && in_range(c)) {
                lam = c;
            } else {
                settle(S, P * NP, c);
                lam = 1;
            }
            const real inv = 1 / lam;
            for (long i = 0; i < P; i++) {
                u[i] *= inv;
            }
            dC_step(S, u, bv, NULL, dyt, dys, lam, dC + own * N);
        } else {
            padded_row(fv, ft, f->s[3]);
            dC_step(S, u, bv, fv, dyt, dys, 1, dC + own * N);
        }
        if (in) {
            in[t] = dot(at(C, z, t, g), C->s[3], dC + own * N);
        }
    }
}

/* One adjoint step on n rows of G from row i on (n = 1, 2 or 4, sharing each load of B_t, C_t and f_t: with
 * four rows instead of two the adjoint took 312 instead of 352 ns per position in cache), dy_t's entries for
 * them (scaled) in dyn: g = G + dy_t (x) C_t; db += g^T u_t; G <- f_t g (fv not NULL) or G <- g;
 * and du_t = g B_t as one vector per row (`du`, its lanes still to be summed). Row by row, so dB's NP / LANES
 * sums stay in registers (the caller's `db`, which nothing else points into). */
static inline __attribute__((always_inline)) void adjoint_rows(real *restrict Gi, int n, const real *dyn,
                                                               const real *ui, const real *bv, const real *cv,
                                                               const real *fv, vec *restrict db,
                                                               vec *restrict du) {
    vec uv[4], dv[4], acc[4];
    for (int r = 0; r < n; r++) {
        uv[r] = (vec){0} + ui[r];
        dv[r] = (vec){0} + dyn[r];
        acc[r] = (vec){0};
    }
    for (long k = 0; k < NP / LANES; k++) {
        const vec b = vload(bv + k * LANES), c = vload(cv + k * LANES), f = fv ? vload(fv + k * LANES) : c;
        vec sum = db[k];
        for (int r = 0; r < n; r++) {
            const vec g = fmadd(dv[r], c, vload(Gi + r * NP + k * LANES));
            vstore(Gi + r * NP + k * LANES, fv ? f * g : g);
            acc[r] = fmadd(g, b, acc[r]);
            sum = fmadd(g, uv[r], sum);
        }
        db[k] = sum;
    }
    for (int r = 0; r < n; r++) {
        du[r] = acc[r];
    }
}

/* Every row of G through `adjoint_rows`, dy_t scaled by `inv`: dB_t's sums into db, du_t's into part: for
 * each whole group of LANES rows from i on, their sums as one vector at part + i (the shuffle tree taken a
 * pair of rows at a time, as soon as the rows are done: nothing is stored per row); for the rows after the
 * last group, one vector each at part + i LANES, their lanes still to be summed. */
static inline __attribute__((always_inline)) void adjoint_step(real *G, const real *dyt, long dys, real inv,
                                                               const real *u, const real *bv, const real *cv,
                                                               const real *fv, vec *db, real *part) {
    long i = 0;
    vec du[4];
    real dyn[4];
    for (; i + LANES <= P; i += LANES) {
        vec pairs[LANES / 2];
        for (long r = 0; r < LANES / 4; r++) {
            const long p = i + 4 * r;
            for (int q = 0; q < 4; q++) {
                dyn[q] = inv * dyt[(p + q) * dys];
            }
            adjoint_rows(G + p * NP, 4, dyn, u + p, bv, cv, fv, db, du);
            pairs[2 * r] = pairsums(du[0], du[1]);
            pairs[2 * r + 1] = pairsums(du[2], du[3]);
        }
        vstore(part + i, groupsums(pairs));
    }
    for (; i + 2 <= P; i += 2) {
        dyn[0] = inv * dyt[i * dys];
        dyn[1] = inv * dyt[(i + 1) * dys];
        adjoint_rows(G + i * NP, 2, dyn, u + i, bv, cv, fv, db, du);
        vstore(part + i * LANES, du[0]);
        vstore(part + (i + 1) * LANES, du[1]);
    }
    if (i < P) {
        dyn[0] = inv * dyt[i * dys];
        adjoint_rows(G + i * NP, 1, dyn, u + i, bv, cv, fv, db, du);
        vstore(part + i * LANES, du[0]);
    }
}

/* G's entries (i, j .. j + 3) times S's (j .. j + 3, i), in double */
static inline dvec cross4(const real *G, const real *S, long i, long j) {
    rvec4 g;
    memcpy(&g, G + i * NP + j, sizeof g);
    return __builtin_convertvector(g, dvec) * (dvec){S[j * P + i], S[(j + 1) * P + i], S[(j + 2) * P + i],
                                                      S[(j + 3) * P + i]};
}

/* da_t exactly, from G = f_t G_t and S = S_{t-1} (N, P): the sum over p of their product, per state n
 * (K = N) or over n too (K = 1), in double. Four states at a time, the sums over even and odd p apart: a
 * running sum per state, each add waiting for the last, took 6% of the adjoint at P = N = 64. */
static void crossing(const real *G, const real *S, double *out, long K) {
    for (long j = 0; j < K; j++) {
        out[j] = 0;
    }
    long j = 0;
    for (; j + 4 <= N; j += 4) {
        dvec even = {0}, odd = {0};
        long i = 0;
        for (; i + 2 <= P; i += 2) {
            even += cross4(G, S, i, j);
            odd += cross4(G, S, i + 1, j);
        }
        if (i < P) {
            even += cross4(G, S, i, j);
        }
        const dvec sum = even + odd;
        for (long l = 0; l < 4; l++) {
            out[K == N ? j + l : 0] += sum[l];
        }
    }
    for (j = N / 4 * 4; j < N; j++) {  /* (a start GCC sees is N when 4 divides N: no loop) */
        double sum = 0;
        for (long i = 0; i < P; i++) {
            sum += (double)G[i * NP + j] * S[j * P + i];
        }
        out[K == N ? j : 0] += sum;
    }
}

/* The adjoint G_t = dL/dS_t from the last position back, G (P, NP) holding f_{t+1} G_{t+1} on entry to t:
 * du_t = G_t B_t (dx = s du + D dy with a skip term, ds = du . x), dB_t = G_t^T u_t; on leaving t it holds
 * f_t G_t, which after t = 0 is the initial state's gradient. A per-head factor as in the forward: G holds
 * that divided by a scalar m, multiplied in at every STRIP-th and T-th position and before m leaves
 * [LOW, HIGH]. The skip's gradient, sum_t dy_t x_t per value (in double), into dskip (P) when not NULL. At
 * every T-th position, with the forward's state before it (ck), the decay's exact gradient there
 * (`crossing`, into `cross`: chunks x K); with `out` (K = 1), B_t . dB_t per position (`decay_grad`). `co`:
 * B_t, C_t, f_t (NP each), part (P x LANES), u_t (P): the vectors' rows first, on whole lines. */
static void adjoint_pass(const operand *x, const operand *B, const operand *C, const operand *f, const operand *s,
                         const operand *dy, const real *dlast, const real *ck, double *cross, double *out, long T,
                         long K, const operand *skip, real *dx, real *ds, real *dB, real *dinit, real *dskip,
                         long z, long h, long g, long L, long H, real *G, real *co) {
    real *bv = co, *cv = bv + NP, *fv = cv + NP, *part = fv + NP, *u = part + P * LANES, m = 1;
    const int scaled = f->s[3] == 0;
    double dd[P];
    memset(dd, 0, sizeof dd);
    pad_state(G, dlast ? dlast + (z * H + h) * PN : NULL);
    for (long t = L - 1; t >= 0; t--) {
        const long cell = (z * L + t) * H + h, own = (z * H + h) * L + t, dys = dy->s[3];  /* dx's, dB's row */
        const real *dyt = at(dy, z, t, h);
        if (t >= AHEAD) {
            prefetch_row(at(x, z, t - AHEAD, h), x->s[3], P, 0);
            prefetch_row(at(dy, z, t - AHEAD, h), dys, P, 0);
            prefetch_row(dx + (cell - AHEAD * H) * P, 1, P, 1);
            prefetch_row(dB + (own - AHEAD) * N, 1, N, 1);
            prefetch_row(at(B, z, t - AHEAD, g), B->s[3], N, 0);
            prefetch_row(at(C, z, t - AHEAD, g), C->s[3], N, 0);
        }
        value_row(u, x, s, z, t, h);
        padded_row(bv, at(B, z, t, g), B->s[3]);
        padded_row(cv, at(C, z, t, g), C->s[3]);
        vec db[NP / LANES];
        memset(db, 0, sizeof db);
        if (scaled) {
            adjoint_step(G, dyt, dys, 1 / m, u, bv, cv, NULL, db, part);
        } else {
            padded_row(fv, at(f, z, t, h), f->s[3]);
            adjoint_step(G, dyt, dys, 1, u, bv, cv, fv, db, part);
        }
        if (N == NP) {
            for (long k = 0; k < NP / LANES; k++) {
                vstore(dB + own * N + k * LANES, m * db[k]);
            }
        } else {
            real dbt[NP];
            for (long k = 0; k < NP / LANES; k++) {
                vstore(dbt + k * LANES, db[k]);
            }
            for (long j = 0; j < N; j++) {
                dB[own * N + j] = m * dbt[j];
            }
        }
        if (out) {  /* B_t . dB_t from the sums in registers, in double (B_t's padding is zero) */
            wide acc = {0};
            for (long k = 0; k < NP / LANES; k++) {
                acc += __builtin_convertvector(vload(bv + k * LANES), wide) * __builtin_convertvector(db[k], wide);
            }
            double sum = 0;
            for (long l = 0; l < LANES; l++) {
                sum += acc[l];
            }
            out[t] = m * sum;
        }
        const real *xv = at(x, z, t, h), sv = *at(s, z, t, h), *dv = skip ? at(skip, z, t, h) : NULL;
        /* du = dL/d(s x): dx = s du (+ D dy), ds = du . x, LANES rows at a time */
        vec dsv = {0};
        long i = 0;
        for (; i + LANES <= P; i += LANES) {
            const vec du = m * vload(part + i), xi = strided(xv + i * x->s[3], x->s[3]);
            dsv += du * xi;
            vec dxi = sv * du;
            if (dv) {  /* (dskip only with a skip term) */
                const vec dyi = strided(dyt + i * dys, dys);
                dxi += strided(dv + i * skip->s[3], skip->s[3]) * dyi;
                if (dskip) {  /* the skip's gradient: sum_t dy_t x_t per value, in double */
                    wide w;
                    memcpy(&w, dd + i, sizeof w);
                    w += __builtin_convertvector(dyi, wide) * __builtin_convertvector(xi, wide);
                    memcpy(dd + i, &w, sizeof w);
                }
            }
            vstore(dx + cell * P + i, dxi);
        }
        real dsum = vsum(dsv);
        for (; i < P; i++) {
            const real du = m * vsum(vload(part + i * LANES));
            dsum += du * xv[i * x->s[3]];
            dx[cell * P + i] = sv * du + (dv ? dv[i * skip->s[3]] * dyt[i * dys] : 0);
            if (dskip) {
                dd[i] += (double)dyt[i * dys] * xv[i * x->s[3]];
            }
        }
        if (ds) {
            ds[(z * H + h) * L + t] = dsum;
        }
        if (scaled) {
            const real c = m * *at(f, z, t, h);
            if (t % STRIP != 0 && t % T != 0 && in_range(c)) {
                m = c;
            } else {
                settle(G, P * NP, c);
                m = 1;
            }
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
 * where f_t = 0 (a segment start: a_t reaches nothing). In double, per state (K = N) or over n (K = 1, from
 * the sums over n per position the sweeps left in `in` and `out`). */
static void decay_grad(const operand *B, const operand *C, const operand *f, const real *last, const real *dlast,
                       const double *cross, const double *in, const double *out, long T, const real *dB,
                       const real *dC, real *df, long K, long z, long h, long g, long L, long H, double *acc) {
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
        const long own = (z * H + h) * L + t;  /* dB's, dC's and df's row, per head */
        const real *bt = at(B, z, t, g), *ct = at(C, z, t, g), *ft = at(f, z, t, h);
        if (in) {
            acc[0] += in[t] - out[t];
        } else {
            if (t >= AHEAD) {
                prefetch_row(dB + (own - AHEAD) * N, 1, N, 0);
                prefetch_row(dC + (own - AHEAD) * N, 1, N, 0);
                prefetch_row(df + (own - AHEAD) * K, 1, K, 1);
            }
            for (long j = 0; j < N; j++) {
                const double ending = (double)ct[j * C->s[3]] * dC[own * N + j];  /* paths ending at t */
                const double starting = (double)bt[j * B->s[3]] * dB[own * N + j];  /* paths starting there */
                acc[K == N ? j : 0] += ending - starting;
            }
        }
        for (long j = 0; t % T == 0 && j < K; j++) {
            acc[j] = cross[t / T * K + j];
        }
        for (long j = 0; j < K; j++) {
            const int cut = ft[j * f->s[3]] == 0;
            df[own * K + j] = cut ? 0 : (real)acc[j];
            acc[j] = cut ? 0 : acc[j];
        }
    }
}

/* ops: the forward's and dy (b, L, H, P) (any strides); skip: the forward's. init: (b, H, P, N) contiguous or
 * NULL; last, ck, T: the forward's (ck read when K > 0); dlast (b, H, P, N) contiguous or NULL (no gradient of
 * the final state). Writes dx (b, L, H, P);
 * ds (b, H, L) when not NULL; dB, dC (b, H, L, N), per head; df (b, H, L, K): the log-decay's gradient per
 * state (K = N), summed over n (K = 1) or not at all (K = 0); dinit (b, H, P, N) and dskip (b, H, P): the skip's
 * gradient per batch row, when not NULL. All contiguous. Returns 0, or 1 when a buffer could not be had. ds,
 * df, dB and dC run along L per head, so that each task writes a range of its own: in (b, L, H), the tasks of
 * neighbouring heads, walking t at the same pace on two cores, store into the same cache lines (a line holds
 * 16 fp32 values), which then travel between the cores at every position; and a task's rows of dB and dC
 * follow each other, not a row of heads apart (the backward 1.04x-1.06x as fast, medians of 21 paired rounds,
 * two threads).
 *
 * Two independent sweeps per (z, h), run as separate tasks: the adjoint backwards (dx, ds, dB, dinit) and the
 * forward again (dC); each keeps one state in the first-level cache. The decay's gradient follows from their
 * results and the forward's states every T positions (`decay_grad`). */
int scan_backward(const operand *ops, const operand *skip, const real *init, const real *last, const real *dlast,
                  const real *ck, real *dx, real *ds, real *dB, real *dC, real *df, long K, real *dinit,
                  real *dskip, long b, long L, long H, long G, long T, int threads) {
    (void)threads;  /* read by OpenMP's pragmas only: unused in a build without OpenMP */
    const operand *x = ops, *B = ops + 1, *C = ops + 2, *f = ops + 3, *s = ops + 4, *dy = ops + 5;
    const long R = H / G, tasks = b * H, chunks = (L + T - 1) / T;
    double *cross = K ? malloc(sizeof(double) * tasks * chunks * K) : NULL;  /* exact da every T positions */
    double *in = K == 1 ? malloc(sizeof(double) * tasks * L) : NULL;  /* C_t . dC_t per position */
    double *out = K == 1 ? malloc(sizeof(double) * tasks * L) : NULL;  /* B_t . dB_t */
    if ((K && cross == NULL) || (K == 1 && (in == NULL || out == NULL))) {
        free(cross);
        free(in);
        free(out);
        return 1;
    }
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
#pragma omp for schedule(dynamic, 1)
        for (long task = 0; task < 2 * tasks; task++) {  /* the adjoints first: they take longer */
            const long zh = task % tasks, z = zh / H, h = zh % H;
            real *W = lines(P * NP + 3 * NP + P * LANES + P);
            if (W == NULL) {
                failed = 1;
                continue;
            }
            if (task < tasks) {
                adjoint_pass(x, B, C, f, s, dy, dlast, K ? ck + zh * chunks * PN : NULL,
                             K ? cross + zh * chunks * K : NULL, out ? out + zh * L : NULL, T, K, skip, dx, ds,
                             dB, dinit, dskip, z, h, h / R, L, H, W, W + P * NP);
            } else {
                dC_pass(x, B, C, f, s, dy, init, dC, in ? in + zh * L : NULL, z, h, h / R, L, H, W, W + P * NP);
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
                decay_grad(B, C, f, last, dlast, cross + zh * chunks * K, in ? in + zh * L : NULL,
                           out ? out + zh * L : NULL, T, dB, dC, df, K, zh / H, zh % H, zh % H / R, L, H, acc);
                free(acc);
            }
        }
    }
    free(cross);
    free(in);
    free(out);
    return failed;
}
"""
