// ops.cpp: the CPU reference of the shared ops (ops.h). Plain loops and BLAS calls, meant to be read top to bottom.
//
// Parallelism: OpenMP on outer loops only (rows, columns, chunks). Every reduction is ordered: a thread owns whole
// output elements, or writes a partial per row or chunk that is then summed serially. Results are therefore the same
// from run to run.
#include "ops.h"

#include <cblas.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <optional>
#include <type_traits>

// ====================================================================================================
// BLAS: y = alpha · op(A) · op(B) + beta · C, row-major, one overload per precision.

void gemm_blas(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
               float beta, float* C, int ldc) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda,
                B, ldb, beta, C, ldc);
}
void gemm_blas(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda, const double* B,
               int ldb, double beta, double* C, int ldc) {
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda,
                B, ldb, beta, C, ldc);
}

// y = alpha · op(A) · x + beta · y for a row-major (rows, cols) A, x with stride incx (sgemv / dgemv). beta = 0
// overwrites y, NaNs included, as gemm does (y is zeroed here first: BLAS versions differ on 0 · NaN).
template <typename Real>
static void gemv(bool trans, int rows, int cols, Real alpha, const Real* A, int lda, const Real* x, int incx,
                 Real beta, Real* y) {
    if (beta == Real(0)) std::fill(y, y + (trans ? cols : rows), Real(0));
    const CBLAS_TRANSPOSE t = trans ? CblasTrans : CblasNoTrans;
    if constexpr (std::is_same_v<Real, float>)
        cblas_sgemv(CblasRowMajor, t, rows, cols, alpha, A, lda, x, incx, beta, y, 1);
    else
        cblas_dgemv(CblasRowMajor, t, rows, cols, alpha, A, lda, x, incx, beta, y, 1);
}
// Inside any parallel region, also an inactive one (a team of one thread): no nested team may start here (ops.h,
// for_each_chunk, says what that costs).
static bool inside_parallel_region() { return omp_get_level() > 0; }

// Why the project splits its products itself (issue 11): OpenBLAS's pthread build runs its own threads, and after
// every OpenMP loop of the step the OpenMP threads keep spinning for a while, so on a machine with as many threads
// as cores the two pools take turns on the cores. Measured on 2 cores: 2 threads were 1.35× one, 2 MPI ranks of one
// thread 1.8×. Here a product is cut into one block of C per thread, whole rows of C (or whole columns, when C is
// wider than tall), and each block is one single-threaded BLAS call inside an OpenMP loop: one pool of threads.
// A block's elements are computed exactly as in a one-block call of the same shape; the blocks' boundaries are on
// multiples of 16 (whole cache lines of C).
//
// A one-row product (M = 1: every product of a decode step) is a matrix-vector product instead: OpenBLAS's gemm
// first packs all of op(B), which for one row of A reads B twice and writes a copy of it. Measured, the products of
// one decoded token of the small config, one thread: 0.65 ms as sgemm, 0.39 ms as sgemv.
//
// OpenBLAS's own threads never run here, not even for a product too small to split (under 4 MFLOP): waking them
// costs more than such a product, and they fight OpenMP's spinning threads for the cores (measured, a decode step of
// 8 sequences on 2 threads, whose products of 8 rows are that small: 4.7 ms with one BLAS thread, 14 ms without).
template <typename Real>
static void gemm_split(bool ta, bool tb, int M, int N, int K, Real alpha, const Real* A, int lda, const Real* B,
                       int ldb, Real beta, Real* C, int ldc) {
    const int parts = gemm_parts(M, N, K);
    std::optional<BlasThreads> one_blas_thread;  // inside a parallel region the caller holds BLAS at one already
    if (!inside_parallel_region()) one_blas_thread.emplace(1);
    if (M == 1 && K > 0) {  // (K = 0: gemv would return without scaling C by beta, where gemm scales it)
        // C (1,N) = alpha · a · op(B) + beta · C with a = op(A) (1,K), stride lda when A is stored transposed:
        //   op(B) = B (K,N)   →  Cᵀ = Bᵀ · aᵀ;   op(B) = Bᵀ, B (N,K)  →  Cᵀ = B · aᵀ.
        gemv(!tb, tb ? N : K, tb ? K : N, alpha, B, ldb, A, ta ? lda : 1, beta, C);
    } else if (parts <= 1) {
        gemm_blas(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    } else {
        const bool by_rows = M >= N;
        const int extent = by_rows ? M : N;
#pragma omp parallel for num_threads(parts) schedule(static, 1)
        for (int p = 0; p < parts; p++) {
            const int lo = p == 0 ? 0 : (int)((int64_t)extent * p / parts) / 16 * 16;
            const int hi = p == parts - 1 ? extent : (int)((int64_t)extent * (p + 1) / parts) / 16 * 16;
            if (hi <= lo) continue;
            if (by_rows)  // rows lo..hi of op(A) and of C
                gemm_blas(ta, tb, hi - lo, N, K, alpha, ta ? A + lo : A + (size_t)lo * lda, lda, B, ldb, beta,
                          C + (size_t)lo * ldc, ldc);
            else  // columns lo..hi of op(B) and of C
                gemm_blas(ta, tb, M, hi - lo, K, alpha, A, lda, tb ? B + (size_t)lo * ldb : B + lo, ldb, beta, C + lo,
                          ldc);
        }
    }
}

int gemm_parts(int M, int N, int K) {
    if (inside_parallel_region()) return 1;  // already one thread's share of a parallel loop (e.g. for_each_chunk)
    // As many parts as threads, where BLAS would have been allowed that many (a caller that holds BLAS at one thread
    // keeps one-block products), each block at least 16 wide and worth a fork (a few MFLOP).
    const int threads = std::min(omp_get_max_threads(), openblas_get_num_threads());
    const int widest = std::max(M, N);
    if (threads <= 1 || 2.0 * M * N * K < 4e6) return 1;
    return std::max(1, std::min(threads, widest / 16));
}

void gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
          float beta, float* C, int ldc) {
    gemm_split(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void gemm(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda, const double* B, int ldb,
          double beta, double* C, int ldc) {
    gemm_split(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

BlasThreads::BlasThreads(int n) : saved(openblas_get_num_threads()) { openblas_set_num_threads(n); }
BlasThreads::~BlasThreads() { openblas_set_num_threads(saved); }

int chunk_threads(int n_chunks) {
    const int threads = omp_get_max_threads();
    if (inside_parallel_region() || n_chunks < 2 || 2 * n_chunks < threads) return 1;
    return std::min(n_chunks, threads);
}

double measure_sgemm_peak(double* openblas_threads_peak) {
    const int n = 1024;
    std::vector<float> a, b, c;  // on huge pages where the kernel allows, as the model's buffers are
    for (std::vector<float>* m : {&a, &b, &c}) assign_zeros_on_huge_pages(*m, (size_t)n * n);
    std::fill(a.begin(), a.end(), 1.0f);
    std::fill(b.begin(), b.end(), 0.5f);
    double best[2] = {0, 0};  // OpenBLAS's own threads, the project's split
    for (int rep = 0; rep < 20; rep++) {
        auto t0 = std::chrono::steady_clock::now();
        if (rep % 2 == 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f,
                        c.data(), n);
        else
            gemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
        double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best[rep % 2] = std::max(best[rep % 2], 2.0 * n * n * n / sec);
    }
    if (openblas_threads_peak) *openblas_threads_peak = best[0];
    return std::max(best[0], best[1]);
}

// ====================================================================================================
// The ops. Shapes use N = B*T rows.

// x[n,:] = wte[tokens[n],:]
// x (N,d), tokens (N), wte (V,d)
template <typename Real>
void encoder_forward(Real* x, const int* tokens, const Real* wte, int N, int d) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) std::memcpy(x + (size_t)n * d, wte + (size_t)tokens[n] * d, sizeof(Real) * d);
}
// Backward of: x[n,:] = wte[tokens[n],:]   =>   dwte[tokens[n],:] += dx[n,:]
// A token can repeat, so rows collide: threads split the columns (whole blocks), and each sums rows in order.
template <typename Real>
void encoder_backward(Real* dwte, const Real* dx, const int* tokens, int N, int d) {
#pragma omp parallel for
    for (int j0 = 0; j0 < d; j0 += kColBlock) {
        const int j1 = std::min(d, j0 + kColBlock);
        for (int n = 0; n < N; n++) {
            Real* dst = dwte + (size_t)tokens[n] * d;
            const Real* src = dx + (size_t)n * d;
            for (int j = j0; j < j1; j++) dst[j] += src[j];
        }
    }
}

// xn = g · x / sqrt(mean(x²) + eps), with ONE scalar gain g; rstd = 1/sqrt(mean(x²) + eps) is saved.
// xn (N,d), rstd (N), x (N,d), g (1)
template <typename Real>
void scalenorm_forward(Real* xn, Real* rstd, const Real* x, const Real* g, int N, int d, double eps) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const Real* xr = x + (size_t)n * d;
        double ss = 0;
#pragma omp simd reduction(+ : ss)
        for (int j = 0; j < d; j++) ss += (double)xr[j] * xr[j];
        Real r = (Real)(1.0 / std::sqrt(ss / d + eps));
        rstd[n] = r;
#pragma omp simd
        for (int j = 0; j < d; j++) xn[(size_t)n * d + j] = g[0] * xr[j] * r;
    }
}
// Backward of: xn = g · x · rstd.   With r = 1/rstd:
//   dg += Σ dxn·x/r;   dx += (g/r)·(dxn − x·(Σ_j dxn_j x_j)/(d·r²))
template <typename Real>
void scalenorm_backward(Real* dx, Real* dg, const Real* dxn, const Real* x, const Real* rstd, const Real* g, int N,
                        int d) {
    std::vector<double> dg_row(N);  // per-row partials, summed in order below
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const Real* xr = x + (size_t)n * d;
        const Real* dr = dxn + (size_t)n * d;
        double dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int j = 0; j < d; j++) dot += (double)dr[j] * xr[j];
        const double r = rstd[n];
        dg_row[n] = dot * r;
        const double c = dot * r * r / d;  // (Σ dxn x) / (d r²), with rstd = 1/r
        for (int j = 0; j < d; j++) dx[(size_t)n * d + j] += (Real)(g[0] * r * (dr[j] - xr[j] * c));
    }
    double sum = 0;
    for (int n = 0; n < N; n++) sum += dg_row[n];
    dg[0] += (Real)sum;
}

// y = x · w + b
// y (N,out), x (N,in), w (in,out) with row stride ldw ≥ out (the first out columns of a wider matrix), b (out) or null
template <typename Real>
void matmul_forward(Real* y, const Real* x, const Real* w, const Real* b, int N, int in, int out, int ldw) {
    if (ldw == 0) ldw = out;
    if (b) {
#pragma omp parallel for
        for (int n = 0; n < N; n++) std::memcpy(y + (size_t)n * out, b, sizeof(Real) * out);
    }
    gemm(false, false, N, out, in, Real(1), x, in, w, ldw, b ? Real(1) : Real(0), y, out);
}
// y = residual + x · w + b: the product and the residual connection after it in one pass over y (residual may be y
// itself); the same as matmul_forward then residual_forward, up to the order of the additions.
// y, residual (N,out), x (N,in), w (in,out), b (out) or null
template <typename Real>
void matmul_residual_forward(Real* y, const Real* residual, const Real* x, const Real* w, const Real* b, int N, int in,
                             int out) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        Real* yr = y + (size_t)n * out;
        const Real* rr = residual + (size_t)n * out;
#pragma omp simd
        for (int j = 0; j < out; j++) yr[j] = rr[j] + (b ? b[j] : Real(0));
    }
    gemm(false, false, N, out, in, Real(1), x, in, w, out, Real(1), y, out);
}
// Backward of: y = x · w + b   =>   dx += dy · wᵀ;  dw += xᵀ · dy;  db += Σ_rows dy   (w and dw with row stride ldw)
template <typename Real>
void matmul_backward(Real* dx, Real* dw, Real* db, const Real* dy, const Real* x, const Real* w, int N, int in,
                     int out, int ldw) {
    if (ldw == 0) ldw = out;
    gemm(false, true, N, in, out, Real(1), dy, out, w, ldw, Real(1), dx, in);
    gemm(true, false, in, out, N, Real(1), x, in, dy, out, Real(1), dw, ldw);
    if (db) {
#pragma omp parallel for
        for (int j0 = 0; j0 < out; j0 += kColBlock) {
            const int j1 = std::min(out, j0 + kColBlock);
            Real sum[kColBlock] = {};
            for (int n = 0; n < N; n++)
                for (int j = j0; j < j1; j++) sum[j - j0] += dy[(size_t)n * out + j];
            for (int j = j0; j < j1; j++) db[j] += sum[j - j0];
        }
    }
}

// y = x · σ(x), elementwise over n values
template <typename Real>
void silu_forward(Real* y, const Real* x, size_t n) {
#pragma omp parallel for simd schedule(static)
    // x · σ(x) rather than x / (1 + e^−x): GCC splits the quotient by exp_approx's clamp into two masked divisions
    for (size_t i = 0; i < n; i++) y[i] = x[i] * (Real(1) / (Real(1) + exp_tuned(-x[i])));
}
// Backward of: y = x · σ(x)   =>   dx += dy · σ(x) · (1 + x · (1 − σ(x)))
template <typename Real>
void silu_backward(Real* dx, const Real* dy, const Real* x, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        const Real sig = Real(1) / (Real(1) + exp_tuned(-x[i]));
        dx[i] += dy[i] * sig * (Real(1) + x[i] * (Real(1) - sig));
    }
}
template <typename Real>
void silu_forward_naive(Real* y, const Real* x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = x[i] / (Real(1) + std::exp(-x[i]));
}
template <typename Real>
void silu_backward_naive(Real* dx, const Real* dy, const Real* x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        Real sig = Real(1) / (Real(1) + std::exp(-x[i]));
        dx[i] += dy[i] * sig * (Real(1) + x[i] * (Real(1) - sig));
    }
}

// RoPE angle tables: θ_i(t) = t · base^(−2i/s) for t = first_pos .. first_pos+T-1, in double (§1).
// cos_t, sin_t: (T, s/2)
void rope_tables(std::vector<double>& cos_t, std::vector<double>& sin_t, int first_pos, int T, int s, double base) {
    const int half = s / 2;
    cos_t.resize((size_t)T * half);
    sin_t.resize((size_t)T * half);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            double theta = (double)(first_pos + t) * rope_frequency(i, s, base);
            cos_t[(size_t)t * half + i] = std::cos(theta);
            sin_t[(size_t)t * half + i] = std::sin(theta);
        }
}
// Rotate-half RoPE, in place: r'[i] = r[i]·cos θ_i − r[i+s/2]·sin θ_i;  r'[i+s/2] = r[i+s/2]·cos θ_i + r[i]·sin θ_i
// x (N,s); row n is at table row n mod T
template <typename Real>
void rope_forward(Real* x, const double* cos_t, const double* sin_t, int N, int T, int s) {
    const int half = s / 2;
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        rope_rotate_row(x + (size_t)n * s, cos_t + (size_t)(n % T) * half, sin_t + (size_t)(n % T) * half, half, 1.0);
}
// Backward of the rotation above: the transpose of a rotation by θ is the rotation by −θ, applied to dx in place.
template <typename Real>
void rope_backward(Real* dx, const double* cos_t, const double* sin_t, int N, int T, int s) {
    const int half = s / 2;
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        rope_rotate_row(dx + (size_t)n * s, cos_t + (size_t)(n % T) * half, sin_t + (size_t)(n % T) * half, half, -1.0);
}

// gated = u ⊙ o
// gated (N,e); u (N,e) with row stride ldu; o (N,e)
template <typename Real>
void gate_forward(Real* gated, const Real* u, int ldu, const Real* o, int N, int e) {
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int j = 0; j < e; j++) gated[(size_t)n * e + j] = u[(size_t)n * ldu + j] * o[(size_t)n * e + j];
}
// Backward of: gated = u ⊙ o   =>   du += dgated ⊙ o;  do += dgated ⊙ u
template <typename Real>
void gate_backward(Real* du, int lddu, Real* d_o, const Real* dgated, const Real* u, int ldu, const Real* o, int N,
                   int e) {
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int j = 0; j < e; j++) {
            Real dg = dgated[(size_t)n * e + j];
            du[(size_t)n * lddu + j] += dg * o[(size_t)n * e + j];
            d_o[(size_t)n * e + j] += dg * u[(size_t)n * ldu + j];
        }
}

template <typename Real>
void assign_zeros_on_huge_pages(std::vector<Real>& v, size_t n) {
    std::vector<Real>().swap(v);  // the old memory goes back first: fresh pages, not ones already touched
    v.reserve(n);
#ifdef MADV_HUGEPAGE
    // The 2 MB pages wholly inside the buffer (a large malloc is page-aligned but not 2 MB-aligned). The advice's
    // result is not checked: EINVAL (THP compiled out or "never") leaves ordinary pages, which are only slower.
    constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
    const uintptr_t lo = ((uintptr_t)v.data() + kHugePage - 1) & ~(kHugePage - 1);
    const uintptr_t hi = ((uintptr_t)v.data() + n * sizeof(Real)) & ~(kHugePage - 1);
    if (hi > lo) (void)madvise((void*)lo, hi - lo, MADV_HUGEPAGE);
#endif
    v.assign(n, Real(0));
}

// x[0..n) = 0: one contiguous part per thread, each cleared by memset (all-zero bits are 0.0 in IEEE floats), whose
// large-block stores do not read the memory they overwrite.
template <typename Real>
void zero_fill(Real* x, size_t n) {
    const int parts = inside_parallel_region() ? 1 : omp_get_max_threads();
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int p = 0; p < parts; p++) {
        const size_t lo = n / parts * p + std::min<size_t>(p, n % parts);
        const size_t hi = n / parts * (p + 1) + std::min<size_t>(p + 1, n % parts);
        std::memset(x + lo, 0, sizeof(Real) * (hi - lo));
    }
}

// y += x: the residual connection (its backward passes the gradient through unchanged)
template <typename Real>
void residual_forward(Real* y, const Real* x, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

// logits = xn · wteᵀ (tied embedding)
// logits (N,V), xn (N,d), wte (V,d)
template <typename Real>
void logits_forward(Real* logits, const Real* xn, const Real* wte, int N, int d, int V) {
    gemm(false, true, N, V, d, Real(1), xn, d, wte, d, Real(0), logits, V);
}
// Backward of: logits = xn · wteᵀ   =>   dxn += dlogits · wte;  dwte += dlogitsᵀ · xn
template <typename Real>
void logits_backward(Real* dxn, Real* dwte, const Real* dlogits, const Real* xn, const Real* wte, int N, int d, int V) {
    gemm(false, false, N, d, V, Real(1), dlogits, V, wte, d, Real(1), dxn, d);
    gemm(true, false, V, d, N, Real(1), dlogits, V, xn, d, Real(1), dwte, d);
}

void check_token_ids(const int* tokens, const int* targets, int N, int V) {
    for (int n = 0; n < N; n++) {
        FLASH_CHECK(tokens[n] >= 0 && tokens[n] < V, "token id " << tokens[n] << " at position " << n
                                                     << " is out of range for vocab_size " << V,
                    "the data was made with another tokenizer; prepare it again or fix vocab_size");
        FLASH_CHECK(!targets || (targets[n] >= 0 && targets[n] < V) || targets[n] == kIgnoreTarget,
                    "target id " << targets[n] << " at position " << n << " is out of range for vocab_size " << V
                                 << " (and is not " << kIgnoreTarget << ", the ignored target)",
                    "the data was made with another tokenizer; prepare it again or fix vocab_size");
    }
}

int scored_target_count(const int* targets, int N) {
    int scored = 0;
    for (int n = 0; n < N; n++) scored += targets[n] != kIgnoreTarget;
    return scored;
}

// max of x[0..n), n ≥ 1, in 16 lanes that the compiler vectorises (a plain max loop is a reduction GCC keeps scalar
// without -ffast-math). A max is exact in any order: the value is the plain loop's.
template <typename Real>
static Real row_max(const Real* x, int n) {
    constexpr int kLanes = 16;
    Real lane[kLanes];
    for (int j = 0; j < kLanes; j++) lane[j] = x[0];
    int k = 0;
    for (; k + kLanes <= n; k += kLanes)
        for (int j = 0; j < kLanes; j++) lane[j] = x[k + j] > lane[j] ? x[k + j] : lane[j];
    Real mx = lane[0];
    for (int j = 1; j < kLanes; j++) mx = lane[j] > mx ? lane[j] : mx;
    for (; k < n; k++) mx = x[k] > mx ? x[k] : mx;
    return mx;
}

// losses[n] = logsumexp(logits[n]) − logits[n, targets[n]] (0 where targets[n] is kIgnoreTarget);
// probs = softmax(logits); returns the mean loss over the scored targets (0 when none is scored).
// losses (N), probs (N,V), logits (N,V), targets (N)
template <typename Real>
double crossentropy_forward(Real* losses, Real* probs, const Real* logits, const int* targets, int N, int V) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const Real* lr = logits + (size_t)n * V;
        Real* pr = probs + (size_t)n * V;
        const Real mx = row_max(lr, V);
        double sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int k = 0; k < V; k++) {
            pr[k] = exp_tuned(lr[k] - mx);
            sum += pr[k];
        }
        const Real sum_r = (Real)sum;
#pragma omp simd
        for (int k = 0; k < V; k++) pr[k] = pr[k] / sum_r;
        losses[n] = targets[n] == kIgnoreTarget ? Real(0) : (Real)(std::log(sum) + mx - lr[targets[n]]);
    }
    double total = 0;
    for (int n = 0; n < N; n++) total += losses[n];
    const int scored = scored_target_count(targets, N);
    return scored > 0 ? total / scored : 0.0;
}
// Backward of: loss = mean over scored n of (logsumexp(logits[n]) − logits[n, t_n])
//   =>   dlogits[n] += (probs[n] − onehot(t_n)) / scored   for each scored n (ignored rows get nothing)
template <typename Real>
void crossentropy_backward(Real* dlogits, const Real* probs, const int* targets, int N, int V) {
    const int scored = scored_target_count(targets, N);
    if (scored == 0) return;
    const Real scale = Real(1) / scored;
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        if (targets[n] == kIgnoreTarget) continue;
        for (int k = 0; k < V; k++) {
            Real p = probs[(size_t)n * V + k];
            dlogits[(size_t)n * V + k] += (p - (k == targets[n] ? Real(1) : Real(0))) * scale;
        }
    }
}

// Every column k of m (B, G, se): the prefix sum over the G chunks of its batch row (chunk_prefix_sum_columns).
// Threads take blocks of 256 columns of every batch row, not whole batch rows: with B = 1 (long context) one thread
// would otherwise sum all of it (128 MB per layer at T = 65,536). A block is swept chunk by chunk, 1 KB contiguous
// each time; walking one column down the chunks instead touched a new page, 256 KB on, at every step. Measured, the
// forward and backward sums of one layer, 2 threads: B = 8, G = 4: 16 → 0.24 ms; B = 1, G = 512: 755 → 21 ms.
// (1024 columns were as slow as the walk at G = 4: the 4 KB running sums alias the rows in the L1 cache.)
template <typename Real>
void chunk_prefix_sum(Real* m, int B, int G, size_t se, bool exclusive, bool reverse) {
    constexpr size_t kColumns = 256;
    const size_t blocks = (se + kColumns - 1) / kColumns;
#pragma omp parallel for schedule(static)
    for (size_t task = 0; task < (size_t)B * blocks; task++) {
        const size_t b = task / blocks, k0 = task % blocks * kColumns, width = std::min(se, k0 + kColumns) - k0;
        Real running[kColumns];
        chunk_prefix_sum_columns(m + b * G * se + k0, (int)width, running, G, se, exclusive, reverse);
    }
}

size_t trained_param_count(const std::vector<TensorSpec>& specs) {
    size_t n = 0;
    for (const TensorSpec& t : specs) n += t.trained ? t.count : 0;
    return n;
}
size_t tensor_element_count(const std::vector<TensorSpec>& specs) {
    size_t n = 0;
    for (const TensorSpec& t : specs) n += t.count;
    return n;
}

// AdamW, per element, in double:
//   m = β1 m + (1−β1) g;  v = β2 v + (1−β2) g²;  w −= lr · ((m/bc1) / (sqrt(v/bc2) + eps) + wd · w)
// with bias corrections bc1 = 1 − β1^t, bc2 = 1 − β2^t, and wd = weight_decay only for tensors whose spec decays.
template <typename Real>
void adamw_update(Real* params, const Real* grads, Real* adam_m, Real* adam_v, const std::vector<TensorSpec>& specs,
                  double lr, const AdamWConfig& opt, int64_t t) {
    FLASH_CHECK(t >= 1, "AdamW step counter must start at 1, got " << t, "");
    const double bc1 = 1.0 - std::pow(opt.beta1, (double)t), bc2 = 1.0 - std::pow(opt.beta2, (double)t);
    for (const TensorSpec& spec : specs) {
        if (!spec.trained) continue;  // Ω: no gradient, no moments, no decay
        const double wd = spec.decay ? opt.weight_decay : 0.0;
        Real* w = params + spec.offset;
        const Real* gr = grads + spec.offset;
        Real *m1 = adam_m + spec.offset, *m2 = adam_v + spec.offset;
        // In vector lanes (simd; -fno-math-errno lets sqrt vectorise): scalar, one double sqrt and three divisions at
        // a time, this took 15 ms a step (small config). Each lane computes what the scalar loop did: the same bits.
        const double beta1 = opt.beta1, beta2 = opt.beta2, eps = opt.eps;
        const size_t count = spec.count;
#pragma omp parallel for simd
        for (size_t i = 0; i < count; i++) {
            const double gi = gr[i];
            const double mi = beta1 * m1[i] + (1 - beta1) * gi;
            const double vi = beta2 * m2[i] + (1 - beta2) * gi * gi;
            m1[i] = (Real)mi;
            m2[i] = (Real)vi;
            const double update = (mi / bc1) / (std::sqrt(vi / bc2) + eps) + wd * w[i];
            w[i] = (Real)(w[i] - lr * update);
        }
    }
}


// ====================================================================================================
// Instantiations, float (training) and double (gradient checks). decltype names each op's own signature, so this
// list names the ops and nothing more.

#define INSTANTIATE(op)                       \
    template decltype(op<float>) op<float>;   \
    template decltype(op<double>) op<double>;
INSTANTIATE(encoder_forward)
INSTANTIATE(encoder_backward)
INSTANTIATE(scalenorm_forward)
INSTANTIATE(scalenorm_backward)
INSTANTIATE(matmul_forward)
INSTANTIATE(matmul_backward)
INSTANTIATE(matmul_residual_forward)
INSTANTIATE(silu_forward)
INSTANTIATE(silu_backward)
INSTANTIATE(silu_forward_naive)
INSTANTIATE(silu_backward_naive)
INSTANTIATE(rope_forward)
INSTANTIATE(rope_backward)
INSTANTIATE(gate_forward)
INSTANTIATE(gate_backward)
INSTANTIATE(residual_forward)
INSTANTIATE(zero_fill)
INSTANTIATE(assign_zeros_on_huge_pages)
INSTANTIATE(logits_forward)
INSTANTIATE(logits_backward)
INSTANTIATE(crossentropy_forward)
INSTANTIATE(crossentropy_backward)
INSTANTIATE(chunk_prefix_sum)
INSTANTIATE(adamw_update)
