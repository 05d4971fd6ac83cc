// ops.h: the ops any architecture of this project reuses, CPU reference (ops.cpp). FLASH (flash.h) is built from
// them, and so will Transformer++ and Performer be: the token embedding, the norms, the matrix products, RoPE, SiLU,
// gating, the residual, cross-entropy, AdamW, and the chunk prefix sum of linear attention.
//
// House rules for every op (docs/FLASH.md §1 forward, §2 backward):
//   - a pair op_forward / op_backward, arguments in the order: outputs, saved activations, inputs, parameters, sizes;
//   - templated on the scalar type: float to train, double for the gradient checks;
//   - a backward ACCUMULATES (+=) into every d... argument;
//   - ops.cpp gives every shape next to the code, and each backward quotes the forward line it differentiates.
// N = B*T rows of a batch of B sequences of T tokens.
#pragma once
#include <cstddef>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"

// `#pragma omp simd` in a header that nvcc also reads (it compiles without OpenMP and would warn)
#ifdef _OPENMP
#define FLASH_OMP_SIMD _Pragma("omp simd")
#else
#define FLASH_OMP_SIMD
#endif

// ----------------------------------------------------------------------------------------------------
// Parameter tensors: a name, a shape, and a place in one flat buffer (params, grads and both AdamW moments share
// the layout). Each architecture lists its own (flash.h: param_specs, transformer.h: transformer_param_specs).
// A tensor that is not trained (Performer's Ω, BASELINES.md §2) is part of the model and of every weights file,
// but gets no gradient, no moments and no decay: its grads and moments stay zero, and checkpoints hold no moments
// for it.

struct TensorSpec {
    std::string name;
    std::vector<int64_t> shape;
    size_t offset = 0;   // in elements, into the flat buffer
    size_t count = 0;    // number of elements
    bool decay = false;  // AdamW weight decay applies (matrices only: not gains, biases, offsets, rel_bias)
    bool trained = true;  // false: drawn at initialisation, saved, never updated
};
// Elements of the tensors that are trained (what "parameters" counts in logs), and of all the tensors (trained or
// fixed; a flat buffer may be longer, when its tensors are aligned: flash.cpp, walk_params).
size_t trained_param_count(const std::vector<TensorSpec>& specs);
size_t tensor_element_count(const std::vector<TensorSpec>& specs);

// ----------------------------------------------------------------------------------------------------
// Matrix products. gemm: C = alpha · op(A) · op(B) + beta · C, row-major, op(A) (M,K), op(B) (K,N); one overload per
// precision. A large product is split among the OpenMP threads (ops.cpp says why): gemm_parts blocks of whole rows
// (or columns) of C, each one single-threaded BLAS call. gemm_blas is the plain OpenBLAS call (sgemm / dgemm, with
// OpenBLAS's own threads), the naive version the tests compare gemm with.
void gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
          float beta, float* C, int ldc);
void gemm(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda, const double* B, int ldb,
          double beta, double* C, int ldc);
void gemm_blas(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
               float beta, float* C, int ldc);
void gemm_blas(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda, const double* B,
               int ldb, double beta, double* C, int ldc);
// The number of blocks gemm cuts an (M,N,K) product into here: min(OpenMP threads, OpenBLAS threads), 1 inside a
// parallel region (active or not: see for_each_chunk) or for a product under 4 MFLOP, and no block narrower than 16.
int gemm_parts(int M, int N, int K);

// Holds OpenBLAS at n threads until the end of the scope, then restores its count.
struct BlasThreads {
    explicit BlasThreads(int n);
    ~BlasThreads();
    BlasThreads(const BlasThreads&) = delete;
    BlasThreads& operator=(const BlasThreads&) = delete;
    int saved;
};

// Loops over independent chunks (FLASH's chunks; a head of a batch row in the baselines). for_each_chunk(n,
// make_scratch, body) calls body(i, scratch) once for each i in [0, n), where scratch is what make_scratch() returned
// for the thread running it (for_each_chunk(n, body) calls body(i) and has none). Two ways, chosen by chunk_threads:
//   - over chunks, when there are at least half as many chunks as threads: a parallel loop on min(n, threads)
//     threads, each chunk on one thread with OpenBLAS held at one thread;
//   - one after the other, with fewer chunks (FLASH-Quad at B = 1 has one): on the calling thread and outside any
//     parallel region, so that gemm splits each product among all the threads.
// The second way must not run inside a parallel region, not even one of one thread (`omp parallel if (0)`): a product
// split there starts a nested team of new threads while the outer team's idle threads spin, and on a machine with as
// many threads as cores the two fight over them. Measured before this rule, small config, 2 threads on 2 cores, one
// chunk per step: 270 ms a step (67 ms on one thread; 40 ms now). On 16 cores with 8 chunks, 16 threads took 1,800 ms
// and 8 threads 81 ms, which this explains (not measured there again).
int chunk_threads(int n_chunks);  // threads of the parallel loop, or 1: one after the other
template <typename MakeScratch, typename Body>
void for_each_chunk(int n, MakeScratch&& make_scratch, Body&& body) {
    const int threads = chunk_threads(n);
#ifdef _OPENMP  // (nvcc reads this header too, without OpenMP; the GPU code never calls this)
    if (threads > 1) {
        BlasThreads one_blas_thread(1);
#pragma omp parallel num_threads(threads)
        {
            auto scratch = make_scratch();
#pragma omp for schedule(static)
            for (int i = 0; i < n; i++) body(i, scratch);
        }
        return;
    }
#endif
    auto scratch = make_scratch();
    for (int i = 0; i < n; i++) body(i, scratch);
}
template <typename Body>
void for_each_chunk(int n, Body&& body) {
    for_each_chunk(n, [] { return 0; }, [&](int i, int&) { body(i); });
}

// Sums over rows (bias gradients, gain gradients, the embedding scatter) split the COLUMNS among threads, in blocks
// of kColBlock, and walk the rows in order inside a block: reads stay contiguous, and every sum has the same order
// whatever the number of threads.
constexpr int kColBlock = 64;

// The machine's matrix-multiply peak as a program sees it, in FLOP/s: the best of twenty 1024³ sgemm products, half
// with OpenBLAS's own threads and half split by gemm (best, not mean: on a shared machine the slow calls measure the
// neighbours, not the machine). openblas_threads_peak, if given, gets the best of OpenBLAS's own threads alone.
double measure_sgemm_peak(double* openblas_threads_peak = nullptr);

// ----------------------------------------------------------------------------------------------------
// The ops. Shapes are documented in ops.cpp.

template <typename Real> void encoder_forward(Real* x, const int* tokens, const Real* wte, int N, int d);
template <typename Real> void encoder_backward(Real* dwte, const Real* dx, const int* tokens, int N, int d);

// ScaleNorm: one scalar gain per norm. (An RMSNorm with a vector gain, for Transformer++, goes next to it.)
template <typename Real> void scalenorm_forward(Real* xn, Real* rstd, const Real* x, const Real* g, int N, int d, double eps);
template <typename Real> void scalenorm_backward(Real* dx, Real* dg, const Real* dxn, const Real* x, const Real* rstd,
                                                 const Real* g, int N, int d);

// ldw: the row stride of w (and dw) when the product takes the first out columns of a wider matrix; 0 means out.
template <typename Real> void matmul_forward(Real* y, const Real* x, const Real* w, const Real* b, int N, int in, int out,
                                             int ldw = 0);
// y = residual + x · w + b (the residual connection fused into the product; its backward is matmul_backward, with
// dresidual += dy). The naive version is matmul_forward then residual_forward.
template <typename Real> void matmul_residual_forward(Real* y, const Real* residual, const Real* x, const Real* w,
                                                      const Real* b, int N, int in, int out);
template <typename Real> void matmul_backward(Real* dx, Real* dw, Real* db, const Real* dy, const Real* x, const Real* w,
                                              int N, int in, int out, int ldw = 0);

// exp for float, branch-free so that `#pragma omp simd` loops vectorise it (AVX2 or AVX-512: the Makefile compiles
// for the machine it runs on). exp(x) = 2^k · exp(r), k = round(x / ln 2), r = x − k·ln 2 (ln 2 split in two parts so
// that r is exact), |r| ≤ ln2/2; exp(r) by its Taylor series to r⁷ (truncation < 1e-8 relative), 2^k from the exponent
// bits. x is clamped to [−87, 88], where 2^k stays a normal float: below −87 it returns exp(−87) ≈ 1.6e-38 instead of
// a denormal or 0, above 88 exp(88) ≈ 1.7e38 instead of inf. Measured max relative error against std::exp over
// [−87, 88]: test_ops "exp_approx" (bound 2e-7, under 2 ulp; measured 7.7e-8).
inline float exp_approx(float x_in) {
    // Clamped by compares that send NaN to −87 (so the float-to-int conversion below is always in range); a NaN
    // input is handed back at the end. (Not fmin/fmax: their NaN rules keep GCC from vectorising.)
    float x = x_in > -87.0f ? x_in : -87.0f;
    x = x < 88.0f ? x : 88.0f;
    const float t = x * 1.44269504f;  // x / ln 2
    // round to nearest: adding 1.5·2^23 pushes the fraction out of the mantissa (no -ffast-math here, so it stays)
    const float kf = (t + 12582912.0f) - 12582912.0f;
    const float r = (x - kf * 0.693145752f) - kf * 1.42860677e-6f;  // ln 2 = 0.693145752 + 1.42860677e-6, hi exact in k
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = ((int32_t)kf + 127) << 23;  // 2^k: k in [−126, 127]
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return x_in == x_in ? p * scale : x_in;  // NaN stays NaN
}
// The exp of the tuned float paths; double (the gradient checks) keeps std::exp.
inline float exp_tuned(float x) { return exp_approx(x); }
inline double exp_tuned(double x) { return std::exp(x); }

// SiLU, tuned: exp_tuned in loops the compiler vectorises. silu_*_naive: std::exp one value at a time, kept to check
// the tuned ones against (test_ops).
template <typename Real> void silu_forward(Real* y, const Real* x, size_t n);
template <typename Real> void silu_backward(Real* dx, const Real* dy, const Real* x, size_t n);
template <typename Real> void silu_forward_naive(Real* y, const Real* x, size_t n);
template <typename Real> void silu_backward_naive(Real* dx, const Real* dy, const Real* x, size_t n);

// RoPE works in place: rope_forward rotates x by +θ, rope_backward rotates dx by −θ.
// θ_i(t) = t · rope_frequency(i): the frequency of pair i of s dims, in double (§1); the tables and the decoder's
// one-position angles both use it, so their angles are bit-identical.
inline double rope_frequency(int i, int s, double base) { return std::pow(base, -2.0 * i / s); }
// cos_t/sin_t: (T, s/2) tables from rope_tables; row n of x is at position first_pos + (n mod T).
void rope_tables(std::vector<double>& cos_t, std::vector<double>& sin_t, int first_pos, int T, int s, double base);
// One row of s values rotated by +θ (sign = 1) or −θ (sign = −1), θ given by one table row c, sn (s/2 each): the rule
// rope_forward/backward and the fused row ops of flash.cpp share. The two halves never overlap, so it vectorises.
template <typename Real>
inline void rope_rotate_row(Real* r, const double* c, const double* sn, int half, double sign) {
    Real* lo = r;
    Real* hi = r + half;
    FLASH_OMP_SIMD
    for (int i = 0; i < half; i++) {
        const double a = lo[i], b = hi[i], sv = sign * sn[i];
        lo[i] = (Real)(a * c[i] - b * sv);
        hi[i] = (Real)(b * c[i] + a * sv);
    }
}
template <typename Real> void rope_forward(Real* x, const double* cos_t, const double* sin_t, int N, int T, int s);
template <typename Real> void rope_backward(Real* dx, const double* cos_t, const double* sin_t, int N, int T, int s);

template <typename Real> void gate_forward(Real* gated, const Real* u, int ldu, const Real* o, int N, int e);
template <typename Real> void gate_backward(Real* du, int lddu, Real* d_o, const Real* dgated, const Real* u, int ldu,
                                            const Real* o, int N, int e);

template <typename Real> void residual_forward(Real* y, const Real* x, size_t n);

// v = n zeros in fresh memory that Linux is asked to back with 2 MB transparent huge pages: the flat buffers a
// training step streams through (parameters, gradients, AdamW moments, activations), hundreds of MB that every
// elementwise pass and product walks. With 4 KB pages such a pass misses the TLB about once a page; on 2 MB pages the
// SiLU/RoPE rows of the small config ran ~20% faster. The memory is reserved (allocated, not yet touched), advised
// (madvise: Debian's default THP mode serves only memory that asks), then filled, so the first touch faults in huge
// pages. Advice, not a requirement: where the kernel declines, v is the same buffer on ordinary pages.
template <typename Real> void assign_zeros_on_huge_pages(std::vector<Real>& v, size_t n);

// x[0..n) = 0, split among the threads: a backward pass zeroes its gradient scratch layer after layer (over 500 MB
// per step for the small FLASH at 4096 tokens), more than one thread's share of the memory bandwidth keeps up with.
template <typename Real> void zero_fill(Real* x, size_t n);

template <typename Real> void logits_forward(Real* logits, const Real* xn, const Real* wte, int N, int d, int V);
template <typename Real> void logits_backward(Real* dxn, Real* dwte, const Real* dlogits, const Real* xn, const Real* wte,
                                              int N, int d, int V);

// A target of kIgnoreTarget is not scored: no loss, no gradient. Evaluation windows use it for targets an earlier
// window already scored; the masked-LM objective uses it for the positions that are not chosen.
inline constexpr int kIgnoreTarget = -1;
// A batch's ids, the checks every architecture makes: every token in [0, V), every target in [0, V) or
// kIgnoreTarget (targets may be null). Throws naming the first bad id and its position.
void check_token_ids(const int* tokens, const int* targets, int N, int V);
// How many of targets[0..N) are scored (not kIgnoreTarget): the divisor of the mean loss, on the CPU and the GPU.
int scored_target_count(const int* targets, int N);

template <typename Real> double crossentropy_forward(Real* losses, Real* probs, const Real* logits, const int* targets,
                                                     int N, int V);
template <typename Real> void crossentropy_backward(Real* dlogits, const Real* probs, const int* targets, int N, int V);

// ----------------------------------------------------------------------------------------------------
// The chunk prefix sum of linear attention, in place over G chunk states (each `stride` values apart):
//   exclusive (causal):   x[g] = Σ_{h<g} x[h]   (reverse: Σ_{h>g} x[h], the backward of the forward one); the
//                         last chunk in the sum's direction is only written, so its callers need not compute it
//   total (non-causal):   x[g] = Σ_h x[h]       (its own backward)
// for `width` adjacent columns at once, each with its own running sum in running (width values). Every column adds
// its chunks in the same order whatever the width: the CPU op below sweeps wide blocks of columns chunk by chunk
// (contiguous loads), the CUDA kernel one column per thread (width 1), and they add alike.
template <typename Real>
FLASH_HD inline void chunk_prefix_sum_columns(Real* x, int width, Real* running, int G, size_t stride, bool exclusive,
                                              bool reverse) {
    for (int k = 0; k < width; k++) running[k] = 0;
    if (exclusive) {
        for (int step = 0; step < G; step++) {
            Real* row = x + (size_t)(reverse ? G - 1 - step : step) * stride;
            if (step == G - 1) {  // the last chunk's own state feeds no chunk: it is not read (need not be computed)
                for (int k = 0; k < width; k++) row[k] = running[k];
                break;
            }
            for (int k = 0; k < width; k++) {
                const Real p = row[k];
                row[k] = running[k];
                running[k] += p;
            }
        }
    } else {
        for (int g = 0; g < G; g++)
            for (int k = 0; k < width; k++) running[k] += x[(size_t)g * stride + k];
        for (int g = 0; g < G; g++)
            for (int k = 0; k < width; k++) x[(size_t)g * stride + k] = running[k];
    }
}
// Every column of m (B, G, se): per batch row, the prefix sum above over its G chunks.
template <typename Real> void chunk_prefix_sum(Real* m, int B, int G, size_t se, bool exclusive, bool reverse);

// ----------------------------------------------------------------------------------------------------
// AdamW (decoupled weight decay), one step t ≥ 1 over the flat buffers, decay only where the spec says so; tensors
// that are not trained are skipped. Every architecture's update is this one function.

struct AdamWConfig {
    double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};
template <typename Real> void adamw_update(Real* params, const Real* grads, Real* adam_m, Real* adam_v,
                                           const std::vector<TensorSpec>& specs, double lr, const AdamWConfig& opt,
                                           int64_t t);
