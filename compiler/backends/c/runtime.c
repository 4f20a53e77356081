/* The runtime helpers of generated C, as real source: each function is copied verbatim
 * into a file that calls it, after `real` (float or double) and a #define giving each
 * helper a name of that network's own (so that several networks can share a file).
 * Here they are compiled with -Wall -Wextra -Werror and unit-tested. */

static real nncc_sigmoid(real z)
{
    /* 1/(1+exp(-z)) as PyTorch and the numpy module compute it: where exp(-z) overflows
     * it is inf and the sigmoid 0.  The exp(-|z|) form would instead give subnormals
     * there, and a gradient dividing by one (binary cross-entropy's) overflows to inf */
    return 1 / (1 + exp(-z));
}

static real nncc_softplus(real z)
{
    /* log(1 + exp(z)) without overflow */
    return (z > 0 ? z : 0) + log1p(exp(-fabs(z)));
}

static real nncc_where(int condition, real a, real b)
{
    /* both branches evaluated, then one chosen (see the C printer's _print_Where) */
    return condition ? a : b;
}

static real nncc_clamped_log(real a, real floor_)
{
    /* max(log(a), floor_): log(0) = -inf gives floor_ */
    real v = log(a);
    return v > floor_ ? v : floor_;
}

static real nncc_muladd(real a, real b, real c)
{
    /* a*b + c, fused (rounded once) where the target fuses fast, as nncc_gemm's sums are */
#if defined(FP_FAST_FMA) && defined(FP_FAST_FMAF)
    return fma(a, b, c);
#else
    return a * b + c;
#endif
}

#if defined(NNCC_AVX512) && defined(__GNUC__) && !defined(__clang__) && !defined(NNCC_CBLAS)
/* the product alone in AVX-512's 512-bit registers, on a CPU that has them (the cffi build
 * defines NNCC_AVX512 there): twice the tile of the AVX2 build.  Its loops are not
 * if-converted, the gcc 12 miscompilation the rest of the code keeps AVX-512 away from */
#define NNCC_GEMM_TARGET __attribute__((target("avx512f,avx512vl,prefer-vector-width=512"), \
                                        optimize("no-tree-loop-if-convert")))
#define NNCC_GEMM_MR 8
#else
#define NNCC_GEMM_TARGET
#define NNCC_GEMM_MR 4
#endif
static void NNCC_GEMM_TARGET nncc_gemm_tiles(int ta, int tb, long m, long n, long k, real alpha, const real *a,
                                             long lda, const real *b, long ldb, int add, real *c, long ldc,
                                             real *pack)
{
    /* c[i*ldc + j] (+)= alpha * sum_p A[i, p] B[p, j], A[i, p] = ta ? a[p*lda + i] :
     * a[i*lda + p], B[p, j] = tb ? b[j*ldb + p] : b[p*ldb + j]; `pack` holds
     * nncc_gemm_pack_size(m, n, k) reals.
     *
     * Blocked as BLAS libraries block it: a KC x NC panel of B and an MC x KC block of A
     * copied into `pack` as slivers NR columns wide and MR rows tall (zeros past the
     * edges), and an MR x NR tile of sums in vector registers, one array per row (a
     * compiler keeps small arrays in registers, not one of MR*NR).  Every element is
     * summed over p in order, KC terms at a time each added to it, by the same operations
     * wherever it lies and however many rows there are, so a sample's numbers do not
     * depend on its place in the batch.  With -DNNCC_CBLAS, cblas_?gemm instead. */
#ifdef NNCC_CBLAS
    void cblas_sgemm(int, int, int, int, int, int, float, const float *, int, const float *, int,
                     float, float *, int);
    void cblas_dgemm(int, int, int, int, int, int, double, const double *, int, const double *, int,
                     double, double *, int);
    (void)pack;
    (void)nncc_muladd;  /* the own product's, unused here */
    if (sizeof(real) == sizeof(float))
        cblas_sgemm(101, ta ? 112 : 111, tb ? 112 : 111, (int)m, (int)n, (int)k, (float)alpha,
                    (const float *)a, (int)lda, (const float *)b, (int)ldb, add ? 1.0f : 0.0f, (float *)c, (int)ldc);
    else
        cblas_dgemm(101, ta ? 112 : 111, tb ? 112 : 111, (int)m, (int)n, (int)k, (double)alpha,
                    (const double *)a, (int)lda, (const double *)b, (int)ldb, add ? 1.0 : 0.0, (double *)c, (int)ldc);
#else
    enum { MR = NNCC_GEMM_MR, NR = sizeof(real) == sizeof(float) ? 16 : 8, MC = 128, KC = 256, NC = 16 * NR };
    long kcmax = k < KC ? k : KC, ncmax = (n + NR - 1) / NR * NR;
    if (m < MR || k < 2 * MR) {
        /* a few rows (a small batch) or a short sum (a weight's gradient at a small batch):
         * no packing, which would cost more than the product; each element the same
         * operations in the same order as in the tiles below (KC terms at a time) */
        long as = ta ? lda : 1;  /* a[i, p] = a[i * (ta ? 1 : lda) + p * as] */
        for (long i = 0; i < m; i++)
            for (long pc = 0; pc < k; pc += KC) {
                long kc = k - pc < KC ? k - pc : KC;
                const real *ai = a + (ta ? i : i * lda) + pc * as;
                real *ci = c + i * ldc;
                int first = pc == 0 && !add;
                for (long j0 = 0; j0 < n; j0 += NC) {
                    long w = n - j0 < NC ? n - j0 : NC;
                    real t[NC];
                    for (long j = 0; j < w; j++)
                        t[j] = 0;
                    for (long j = 0; tb && j < w; j += 8) {  /* dot products along b's rows */
                        real s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
                        const real *r = b + (j0 + j) * ldb + pc;
                        if (w - j >= 8) {  /* eight at once */
                            for (long p = 0; p < kc; p++) {
                                real x = ai[p * as];
                                s0 = nncc_muladd(x, r[p], s0);
                                s1 = nncc_muladd(x, r[ldb + p], s1);
                                s2 = nncc_muladd(x, r[2 * ldb + p], s2);
                                s3 = nncc_muladd(x, r[3 * ldb + p], s3);
                                s4 = nncc_muladd(x, r[4 * ldb + p], s4);
                                s5 = nncc_muladd(x, r[5 * ldb + p], s5);
                                s6 = nncc_muladd(x, r[6 * ldb + p], s6);
                                s7 = nncc_muladd(x, r[7 * ldb + p], s7);
                            }
                            t[j] = s0, t[j + 1] = s1, t[j + 2] = s2, t[j + 3] = s3;
                            t[j + 4] = s4, t[j + 5] = s5, t[j + 6] = s6, t[j + 7] = s7;
                        } else {
                            for (long q = 0; q < w - j; q++) {
                                real v = 0;
                                for (long p = 0; p < kc; p++)
                                    v = nncc_muladd(ai[p * as], r[q * ldb + p], v);
                                t[j + q] = v;
                            }
                        }
                    }
                    for (long p = 0; !tb && p < kc; p++) {  /* rows of b scaled and added */
                        const real x = ai[p * as], *row = b + (pc + p) * ldb + j0;
                        for (long j = 0; j < w; j++)
                            t[j] = nncc_muladd(x, row[j], t[j]);
                    }
                    for (long j = 0; j < w; j++)
                        ci[j0 + j] = (first ? 0 : ci[j0 + j]) + alpha * t[j];
                }
            }
        return;
    }
    real *bp = pack, *ap = pack + kcmax * (ncmax < NC ? ncmax : NC);
    for (long jc = 0; jc < n; jc += NC) {
        long nc = n - jc < NC ? n - jc : NC;
        for (long pc = 0; pc < k; pc += KC) {
            long kc = k - pc < KC ? k - pc : KC;
            int first = pc == 0 && !add;
            for (long jr = 0; jr < nc; jr += NR) {  /* read along b's rows, whichever way */
                real *to = bp + jr * kc;
                long w = nc - jr < NR ? nc - jr : NR;
                if (tb)
                    for (long j = 0; j < w; j++)
                        for (long p = 0; p < kc; p++)
                            to[p * NR + j] = b[(jc + jr + j) * ldb + pc + p];
                else
                    for (long p = 0; p < kc; p++)
                        for (long j = 0; j < w; j++)
                            to[p * NR + j] = b[(pc + p) * ldb + jc + jr + j];
                for (long p = 0; p < kc; p++)
                    for (long j = w; j < NR; j++)
                        to[p * NR + j] = 0;
            }
            for (long ic = 0; ic < m; ic += MC) {
                long mc = m - ic < MC ? m - ic : MC;
                for (long ir = 0; ir < mc; ir += MR) {
                    real *to = ap + ir * kc;
                    long h = mc - ir < MR ? mc - ir : MR;
                    if (ta)
                        for (long p = 0; p < kc; p++)
                            for (long i = 0; i < h; i++)
                                to[p * MR + i] = a[(pc + p) * lda + ic + ir + i];
                    else
                        for (long i = 0; i < h; i++)
                            for (long p = 0; p < kc; p++)
                                to[p * MR + i] = a[(ic + ir + i) * lda + pc + p];
                    for (long p = 0; p < kc; p++)
                        for (long i = h; i < MR; i++)
                            to[p * MR + i] = 0;
                }
                for (long jr = 0; jr < nc; jr += NR)
                    for (long ir = 0; ir < mc; ir += MR) {
                        const real *x = ap + ir * kc, *y = bp + jr * kc;
                        real t0[NR] = {0}, t1[NR] = {0}, t2[NR] = {0}, t3[NR] = {0};
#if NNCC_GEMM_MR == 8
                        real t4[NR] = {0}, t5[NR] = {0}, t6[NR] = {0}, t7[NR] = {0};
#endif
                        for (long p = 0; p < kc; p++) {
                            const real *xp = x + p * MR, *yp = y + p * NR;
                            for (int j = 0; j < NR; j++) {
                                t0[j] = nncc_muladd(xp[0], yp[j], t0[j]);
                                t1[j] = nncc_muladd(xp[1], yp[j], t1[j]);
                                t2[j] = nncc_muladd(xp[2], yp[j], t2[j]);
                                t3[j] = nncc_muladd(xp[3], yp[j], t3[j]);
#if NNCC_GEMM_MR == 8
                                t4[j] = nncc_muladd(xp[4], yp[j], t4[j]);
                                t5[j] = nncc_muladd(xp[5], yp[j], t5[j]);
                                t6[j] = nncc_muladd(xp[6], yp[j], t6[j]);
                                t7[j] = nncc_muladd(xp[7], yp[j], t7[j]);
#endif
                            }
                        }
                        for (long i = 0; i < MR && ir + i < mc; i++) {
                            /* each row read by name: copied into one array of all the rows
                             * first, gcc keeps rows on the stack through the loop above */
#if NNCC_GEMM_MR == 8
                            const real *row = i == 0 ? t0 : i == 1 ? t1 : i == 2 ? t2 : i == 3 ? t3 :
                                              i == 4 ? t4 : i == 5 ? t5 : i == 6 ? t6 : t7;
#else
                            const real *row = i == 0 ? t0 : i == 1 ? t1 : i == 2 ? t2 : t3;
#endif
                            real *out = c + (ic + ir + i) * ldc + jc + jr;
                            for (long j = 0; j < NR && jr + j < nc; j++)
                                out[j] = (first ? 0 : out[j]) + alpha * row[j];
                        }
                    }
            }
        }
    }
#endif
}

#if defined(NNCC_THREADS) && !defined(NNCC_CBLAS)
#include <pthread.h>
#include <stdlib.h>
#endif
static void *nncc_gemm_half(void *job)
{
    /* nncc_gemm_tiles on the arguments job points to: a thread's start routine */
    void **v = job;
    nncc_gemm_tiles(*(int *)v[0], *(int *)v[1], *(long *)v[2], *(long *)v[3], *(long *)v[4], *(real *)v[5],
                    (const real *)v[6], *(long *)v[7], (const real *)v[8], *(long *)v[9], *(int *)v[10],
                    (real *)v[11], *(long *)v[12], (real *)v[13]);
    return 0;
}

static void nncc_gemm(int ta, int tb, long m, long n, long k, real alpha, const real *a, long lda,
                      const real *b, long ldb, int add, real *c, long ldc, real *pack)
{
    /* nncc_gemm_tiles (its comment says what it computes); in the cffi build (NNCC_THREADS,
     * POSIX) a product of 2^26 terms or more in two halves of its columns, the second on a
     * thread of its own for the call, packing into space of its own: none is kept between
     * calls, so a fork stays safe, and the workspace the header names is the same.  Each
     * element is the same sum either way. */
#if defined(NNCC_THREADS) && !defined(NNCC_CBLAS)
    enum { NR = sizeof(real) == sizeof(float) ? 16 : 8 };
    if (n >= 4 * NR && (double)m * (double)n * (double)k >= 67108864.0) {
        long half = (n / 2 + NR - 1) / NR * NR, rest = n - half;
        long kc = k < 256 ? k : 256, nb = (rest + NR - 1) / NR * NR, ma = (m + 7) / 8 * 8;
        real *own = malloc(sizeof(real) * (size_t)(kc * ((nb < 16 * NR ? nb : 16 * NR) + (ma < 128 ? ma : 128))));
        const real *b2 = tb ? b + half * ldb : b + half;
        void *job[14] = {&ta, &tb, &m, &rest, &k, &alpha, (void *)a, &lda, (void *)b2, &ldb, &add, c + half, &ldc, own};
        pthread_t thread;
        int started = own && pthread_create(&thread, 0, nncc_gemm_half, job) == 0;
        nncc_gemm_tiles(ta, tb, m, started ? half : n, k, alpha, a, lda, b, ldb, add, c, ldc, pack);
        if (started)
            pthread_join(thread, 0);
        free(own);
        return;
    }
#else
    (void)nncc_gemm_half;
#endif
    nncc_gemm_tiles(ta, tb, m, n, k, alpha, a, lda, b, ldb, add, c, ldc, pack);
}
