"""The C source of the 2-D grid's fused CPU loops, forward and backward (`native` builds and calls them).
Copied into generated modules with it. docs/grid2d.md, "The fused CPU loops".
"""

SOURCE = r"""/* The 2-D (Roesser) SSM's forward and backward as fused loops, built by `library` with -DREAL=float or
 * double, -DVALUE=P and -DSTATE=N.
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

/* ops: x (b, V, L, H, P); B1, C1, B2, C2 (b, V, L, G, N); f1, a2, a3, f4 (b, V, L, H, N) (any broadcast);
 * s1, s2 (b, V, L, H, 1). init1, init2: (b, V, H, P, N) contiguous or NULL. Writes y (b, V, L, H, P),
 * last1, last2 (b, V, H, P, N) and, when not NULL, ck (b, H, strips, 2, V, P, N): every row's states left
 * of every strip, for the backward; all contiguous. Returns 0, or 1 when a buffer could not be had. */
int grid2d_forward(const operand *ops, const real *init1, const real *init2, real *y, real *last1,
                   real *last2, real *ck, long b, long V, long L, long H, long G, long T, int threads) {
    (void)threads;  /* read by OpenMP's pragmas only: unused in a build without OpenMP */
    const operand *x = ops, *B1 = ops + 1, *C1 = ops + 2, *B2 = ops + 3, *C2 = ops + 4;
    const operand *f1 = ops + 5, *a2 = ops + 6, *a3 = ops + 7, *f4 = ops + 8, *s1 = ops + 9, *s2 = ops + 10;
    const long R = H / G, S = P * N, strips = (L + T - 1) / T;
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
                for (long v = 0; ck && v < V; v++) {
                    real *to = ck + ((((z * H + h) * strips + t0 / T) * 2) * V + v) * S;
                    for (long i = 0; i < P; i++) {
                        for (long j = 0; j < N; j++) {
                            to[i * N + j] = K1[v * S + j * P + i];
                            to[V * S + i * N + j] = K2[v * S + j * P + i];
                        }
                    }
                }
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

/* The adjoint of grid2d_forward. ck: the forward's checkpoints (b, H, strips, 2, V, P, N), the states left
 * of each strip; dy: (b, V, L, H, P); dl1, dl2: the final states' gradients (b, V, H, P, N) or NULL; all
 * contiguous. Writes, per cell and head (the caller sums groups and broadcast axes): dx (b, V, L, H, P),
 * dbc (4, b, V, L, H, N): B1, C1, B2, C2; dfac: f1, a2, a3, f4 one after the other, factor m (b, V, L, H,
 * K[m]): per state (K = N), per head (K = 1, summed over n) or not wanted (K = 0); ds (2, b, V, L, H);
 * dinit (2, b, V, H, P, N) when not NULL.
 *
 * With g1, g2 the gradients of h1[v,t], h2[v,t] (zero outside the grid):
 *
 *   g1[v,t] = dy C1 + f1[v,t+1] g1[v,t+1] + a3[v+1,t] g2[v+1,t]    (+ dl1 at t = L-1)
 *   g2[v,t] = dy C2 + a2[v,t+1] g1[v,t+1] + f4[v+1,t] g2[v+1,t]    (+ dl2 at t = L-1)
 *
 * walked as the forward in reverse: strips from the last, rows from the last, columns right to left. A
 * strip first runs its forward again from its checkpoint, keeping every state of the strip (`Hs`); g1
 * runs along the row in one state (`G1`, row v's at the column to the right, `R1` per row between
 * strips), g2 in a slot per column (`G2`: row v+1's, then row v's). Here states are (P, N): the sums
 * over P (the factors', B's and C's gradients) accumulate along vectors over N. */
int grid2d_backward(const operand *ops, const real *ck, const real *dy, const real *dl1, const real *dl2,
                    real *dx, real *dbc, real *dfac, const long *K, real *ds, real *dinit,
                    long b, long V, long L, long H, long G, long T, int threads) {
    (void)threads;  /* read by OpenMP's pragmas only: unused in a build without OpenMP */
    const operand *x = ops, *B1 = ops + 1, *C1 = ops + 2, *B2 = ops + 3, *C2 = ops + 4;
    const operand *f1 = ops + 5, *a2 = ops + 6, *a3 = ops + 7, *f4 = ops + 8, *s1 = ops + 9, *s2 = ops + 10;
    const long R = H / G, S = P * N, strips = (L + T - 1) / T, cells = b * V * L * H;
    int failed = 0;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads) reduction(| : failed)
    for (long z = 0; z < b; z++) {
        for (long h = 0; h < H; h++) {
            const long g = h / R;
            real *buf = calloc(2 * V * (T + 1) * S + T * S + V * S + 2 * S, sizeof(real));
            if (buf == NULL) {
                failed = 1;
                continue;
            }
            real *Hs1 = buf, *Hs2 = Hs1 + V * (T + 1) * S, *G2 = Hs2 + V * (T + 1) * S, *R1 = G2 + T * S;
            real *G1 = R1 + V * S, *zero = G1 + S;  /* zero: the state above row 0 */
            for (long s = strips - 1; s >= 0; s--) {
                const long t0 = s * T, width = L - t0 < T ? L - t0 : T;
                for (long v = 0; v < V; v++) {  /* the strip's forward again, from its checkpoint */
                    const real *from = ck + ((((z * H + h) * strips + s) * 2) * V + v) * S;
                    real *row1 = Hs1 + v * (T + 1) * S, *row2 = Hs2 + v * (T + 1) * S;
                    memcpy(row1, from, sizeof(real) * S);
                    memcpy(row2, from + V * S, sizeof(real) * S);
                    for (long k = 1; k <= width; k++) {
                        const long t = t0 + k - 1;
                        const real *xv = at(x, z, v, t, h), *b1 = at(B1, z, v, t, g), *b2 = at(B2, z, v, t, g);
                        const real *F1 = at(f1, z, v, t, h), *A2 = at(a2, z, v, t, h);
                        const real *A3 = at(a3, z, v, t, h), *F4 = at(f4, z, v, t, h);
                        const real S1 = *at(s1, z, v, t, h), S2 = *at(s2, z, v, t, h);
                        const real *up1 = v ? Hs1 + ((v - 1) * (T + 1) + k) * S : zero;
                        const real *up2 = v ? Hs2 + ((v - 1) * (T + 1) + k) * S : zero;
                        real bj1[N], bj2[N], fj1[N], aj2[N], aj3[N], fj4[N];
                        for (long j = 0; j < N; j++) {
                            bj1[j] = b1[j * B1->s[4]];
                            bj2[j] = b2[j * B2->s[4]];
                            fj1[j] = F1[j * f1->s[4]];
                            aj2[j] = A2[j * a2->s[4]];
                            aj3[j] = A3[j * a3->s[4]];
                            fj4[j] = F4[j * f4->s[4]];
                        }
                        for (long i = 0; i < P; i++) {
                            const real u1 = S1 * xv[i * x->s[4]], u2 = S2 * xv[i * x->s[4]];
                            const real *restrict l1 = row1 + (k - 1) * S + i * N;
                            const real *restrict l2 = row2 + (k - 1) * S + i * N;
                            const real *restrict p1 = up1 + i * N, *restrict p2 = up2 + i * N;
                            real *restrict o1 = row1 + k * S + i * N, *restrict o2 = row2 + k * S + i * N;
#pragma omp simd
                            for (long j = 0; j < N; j++) {
                                o1[j] = fj1[j] * l1[j] + aj2[j] * l2[j] + u1 * bj1[j];
                                o2[j] = aj3[j] * p1[j] + fj4[j] * p2[j] + u2 * bj2[j];
                            }
                        }
                    }
                }
                memset(G2, 0, sizeof(real) * width * S);  /* below the last row */
                for (long v = V - 1; v >= 0; v--) {
                    const real *row1 = Hs1 + v * (T + 1) * S, *row2 = Hs2 + v * (T + 1) * S;
                    memcpy(G1, R1 + v * S, sizeof(real) * S);
                    for (long k = width; k >= 1; k--) {
                        const long t = t0 + k - 1, cell = ((z * V + v) * L + t) * H + h;
                        const real *xv = at(x, z, v, t, h), *b1 = at(B1, z, v, t, g), *b2 = at(B2, z, v, t, g);
                        const real *c1 = at(C1, z, v, t, g), *c2 = at(C2, z, v, t, g);
                        const real S1 = *at(s1, z, v, t, h), S2 = *at(s2, z, v, t, h);
                        const real *dyv = dy + cell * P;
                        const real *up1 = v ? Hs1 + ((v - 1) * (T + 1) + k) * S : zero;
                        const real *up2 = v ? Hs2 + ((v - 1) * (T + 1) + k) * S : zero;
                        /* the final states' gradients enter at the last column (a zero state elsewhere) */
                        const real *d1 = t == L - 1 && dl1 ? dl1 + ((z * V + v) * H + h) * S : zero;
                        const real *d2 = t == L - 1 && dl2 ? dl2 + ((z * V + v) * H + h) * S : zero;
                        real bj1[N], bj2[N], cj1[N], cj2[N], fr1[N], ar2[N], ab3[N], fb4[N];
                        real gf1[N], ga2[N], ga3[N], gf4[N], gb1[N], gb2[N], gc1[N], gc2[N];
                        for (long j = 0; j < N; j++) {
                            bj1[j] = b1[j * B1->s[4]];
                            bj2[j] = b2[j * B2->s[4]];
                            cj1[j] = c1[j * C1->s[4]];
                            cj2[j] = c2[j * C2->s[4]];
                            /* the moves out of (v, t): right to (v, t+1), down to (v+1, t) */
                            fr1[j] = t + 1 < L ? at(f1, z, v, t + 1, h)[j * f1->s[4]] : 0;
                            ar2[j] = t + 1 < L ? at(a2, z, v, t + 1, h)[j * a2->s[4]] : 0;
                            ab3[j] = v + 1 < V ? at(a3, z, v + 1, t, h)[j * a3->s[4]] : 0;
                            fb4[j] = v + 1 < V ? at(f4, z, v + 1, t, h)[j * f4->s[4]] : 0;
                            gf1[j] = ga2[j] = ga3[j] = gf4[j] = gb1[j] = gb2[j] = gc1[j] = gc2[j] = 0;
                        }
                        real dsum1 = 0, dsum2 = 0;
                        for (long i = 0; i < P; i++) {
                            const real u1 = S1 * xv[i * x->s[4]], u2 = S2 * xv[i * x->s[4]], dyi = dyv[i];
                            real *restrict q1 = G1 + i * N, *restrict q2 = G2 + (k - 1) * S + i * N;
                            const real *restrict h1 = row1 + k * S + i * N, *restrict h2 = row2 + k * S + i * N;
                            const real *restrict l1 = row1 + (k - 1) * S + i * N;
                            const real *restrict l2 = row2 + (k - 1) * S + i * N;
                            const real *restrict p1 = up1 + i * N, *restrict p2 = up2 + i * N;
                            const real *restrict e1 = d1 + i * N, *restrict e2 = d2 + i * N;
                            real du1 = 0, du2 = 0;
#pragma omp simd reduction(+ : du1, du2)
                            for (long j = 0; j < N; j++) {
                                const real n1 = dyi * cj1[j] + fr1[j] * q1[j] + ab3[j] * q2[j] + e1[j];
                                const real n2 = dyi * cj2[j] + ar2[j] * q1[j] + fb4[j] * q2[j] + e2[j];
                                q1[j] = n1;
                                q2[j] = n2;
                                gf1[j] += n1 * l1[j];
                                ga2[j] += n1 * l2[j];
                                ga3[j] += n2 * p1[j];
                                gf4[j] += n2 * p2[j];
                                gc1[j] += dyi * h1[j];
                                gc2[j] += dyi * h2[j];
                                gb1[j] += n1 * u1;
                                gb2[j] += n2 * u2;
                                du1 += n1 * bj1[j];
                                du2 += n2 * bj2[j];
                            }
                            const real xi = xv[i * x->s[4]];
                            dx[cell * P + i] = S1 * du1 + S2 * du2;
                            dsum1 += xi * du1;
                            dsum2 += xi * du2;
                        }
                        ds[cell] = dsum1;
                        ds[cells + cell] = dsum2;
                        const real *from[8] = {gb1, gc1, gb2, gc2, gf1, ga2, ga3, gf4};
                        for (long m = 0; m < 4; m++) {
                            memcpy(dbc + (m * cells + cell) * N, from[m], sizeof(real) * N);
                        }
                        real *to = dfac;
                        for (long m = 0; m < 4; m++) {
                            if (K[m] == N) {
                                memcpy(to + cell * N, from[4 + m], sizeof(real) * N);
                            } else if (K[m] == 1) {
                                real sum = 0;
                                for (long j = 0; j < N; j++) {
                                    sum += from[4 + m][j];
                                }
                                to[cell] = sum;
                            }
                            to += K[m] * cells;
                        }
                        if (t == 0 && dinit) {  /* h1[v,-1] = init1, h2[v,-1] = init2 enter through f1, a2 */
                            const real *F1 = at(f1, z, v, 0, h), *A2 = at(a2, z, v, 0, h);
                            real *di1 = dinit + ((z * V + v) * H + h) * S, *di2 = di1 + b * V * H * S;
                            for (long i = 0; i < P; i++) {
                                for (long j = 0; j < N; j++) {
                                    di1[i * N + j] = F1[j * f1->s[4]] * G1[i * N + j];
                                    di2[i * N + j] = A2[j * a2->s[4]] * G1[i * N + j];
                                }
                            }
                        }
                    }
                    memcpy(R1 + v * S, G1, sizeof(real) * S);
                }
            }
            free(buf);
        }
    }
    return failed;
}
"""
