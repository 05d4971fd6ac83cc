// flash.cu: FLASH on an NVIDIA GPU, fp32. The twin of flash.cpp: the same ops in the same order, each a CUDA kernel
// (or a cuBLAS product) with the CPU op's arguments, then the model's forward, backward and AdamW built from them.
// Read it next to flash.cpp; section numbers (§1, §2, ...) refer to docs/FLASH.md.
//
// Layout: exactly the CPU's. A token row of h / act is [u (e) | v (e) | z (s)] (leading dimension 2e+s); N = B*T rows;
// chunk bg = b*G + g starts at row bg*C (T = G*C), so per-chunk operands are a fixed stride apart and one strided-
// batched cuBLAS call covers every chunk of the batch.
//
// Determinism: no atomics anywhere. Reductions are either owned by one thread (a column of a sum over rows, a diagonal
// of the bias gradient, an element of the chunk prefix sum) or written as per-block partials and summed in a fixed
// order. cuBLAS GEMMs are bit-reproducible run to run on one GPU model and toolkit (cuBLAS docs, "Results
// reproducibility"; we never enable cublasSetAtomicsMode). So forward and backward are the same bits every run.
//
// Precision: every kernel keeps its values and its sums in fp32 (row statistics in double where the CPU uses double),
// including the local scores S, A = relu(S)² and the chunk sums M that FLASH.md §8 warns about. The cuBLAS products
// are true fp32 unless cuda_set_precision asks for tf32 tensor cores: then cuBLAS rounds the products' inputs
// (the weights, and the chunk operands Q, K, V, M) and still sums and writes fp32.
#include "flash_cuda.h"
#include "formats/config.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

// ====================================================================================================
// Error checking: every CUDA and cuBLAS call, and every kernel launch, goes through one of these. A failure throws
// flash_error "flash.cu:LINE: <call> failed: <error name> (<error text>) (hint: ...)".

static const char* cuda_hint(cudaError_t err) {
    switch (err) {
        case cudaErrorMemoryAllocation:
            return "the GPU is out of memory: use a smaller batch B or sequence length T, or free the GPU (nvidia-smi)";
        case cudaErrorNoDevice:
        case cudaErrorInsufficientDriver:
            return "no usable GPU: check nvidia-smi, and that the driver supports this CUDA toolkit";
        case cudaErrorNoKernelImageForDevice:
        case cudaErrorUnsupportedPtxVersion:
            return "the binary was built for another GPU: rebuild with CUDA_ARCH=sm_XX, XX from "
                   "'nvidia-smi --query-gpu=compute_cap --format=csv'";
        case cudaErrorIllegalAddress:
        case cudaErrorLaunchFailure:
            return "a kernel read or wrote out of bounds: rerun with FLASH_CUDA_SYNC=1 to name the kernel, or under "
                   "compute-sanitizer";
        default:
            return "rerun with FLASH_CUDA_SYNC=1 (synchronizes after every kernel) to find the first failing call";
    }
}

#define CUDA_CHECK(call)                                                                                  \
    do {                                                                                                  \
        const cudaError_t err_ = (call);                                                                  \
        if (err_ != cudaSuccess) {                                                                        \
            cudaGetLastError(); /* clear it, so that the next check does not blame an innocent kernel */  \
            FLASH_FAIL(#call << " failed: " << cudaGetErrorName(err_) << " (" << cudaGetErrorString(err_) \
                             << ")",                                                                      \
                       cuda_hint(err_));                                                                  \
        }                                                                                                 \
    } while (0)

#define CUBLAS_CHECK(call)                                                                                    \
    do {                                                                                                      \
        const cublasStatus_t st_ = (call);                                                                    \
        if (st_ != CUBLAS_STATUS_SUCCESS)                                                                     \
            FLASH_FAIL(#call << " failed: " << cublasGetStatusName(st_) << " (" << cublasGetStatusString(st_) \
                             << ")",                                                                          \
                       "an earlier kernel may have failed; rerun with FLASH_CUDA_SYNC=1");                    \
    } while (0)

// FLASH_CUDA_SYNC=1: synchronize after every kernel, to name the one that faults (at the cost of speed).
static bool sync_each_launch() {
    static const bool on = [] {
        const char* v = std::getenv("FLASH_CUDA_SYNC");
        return v && v[0] == '1';
    }();
    return on;
}

// After every <<<...>>>: a bad launch configuration shows at once; a fault inside the kernel shows at the next
// synchronization, or right here with FLASH_CUDA_SYNC=1.
#define CUDA_CHECK_LAUNCH(kernel_name)                                                                    \
    do {                                                                                                  \
        cudaError_t err_ = cudaGetLastError();                                                            \
        if (err_ == cudaSuccess && sync_each_launch()) err_ = cudaDeviceSynchronize();                    \
        if (err_ != cudaSuccess)                                                                          \
            FLASH_FAIL("kernel " << kernel_name << " failed: " << cudaGetErrorName(err_) << " ("          \
                                 << cudaGetErrorString(err_) << ")",                                      \
                       cuda_hint(err_));                                                                  \
    } while (0)

// ====================================================================================================
// Process-wide state: the cuBLAS handle and a scratch buffer. Everything runs on the legacy default stream, so work
// is ordered and a buffer handed out by scratch() is free again once the op that asked for it has enqueued its kernels
// (the next op's kernels run after them). Rule: one scratch() call per op, never nested.

struct CudaContext {
    cublasHandle_t blas = nullptr;
    void* scratch = nullptr;
    size_t scratch_bytes = 0;
};

static CudaContext& ctx() {
    // The handle is never destroyed: destroying it from a static destructor can run after the CUDA runtime has shut
    // down. The process exit releases it.
    static CudaContext c;
    if (!c.blas) {
        CUBLAS_CHECK(cublasCreate(&c.blas));
    }
    return c;
}

static void* scratch(size_t bytes) {
    CudaContext& c = ctx();
    if (bytes > c.scratch_bytes) {
        // Kernels of earlier ops may still read the old buffer: wait for them before freeing it.
        // Grows by at least half, so a run of slightly larger requests does not reallocate each time.
        const size_t grown = std::max(bytes, c.scratch_bytes + c.scratch_bytes / 2);
        CUDA_CHECK(cudaDeviceSynchronize());
        if (c.scratch) CUDA_CHECK(cudaFree(c.scratch));
        c.scratch = nullptr;
        c.scratch_bytes = 0;
        CUDA_CHECK(cudaMalloc(&c.scratch, grown));
        c.scratch_bytes = grown;
    }
    return c.scratch;
}
// Splits one scratch request into pieces, each 256-byte aligned.
struct ScratchPlan {
    std::vector<size_t> offsets;
    size_t total = 0;
    size_t add(size_t bytes) {
        offsets.push_back(total);
        total += (bytes + 255) / 256 * 256;
        return offsets.size() - 1;
    }
};

// The products' precision is a compute type handed to each cuBLAS call (the handle keeps its default math mode), so
// setting it needs no handle and no GPU.
static MatmulPrecision g_matmul_precision = MatmulPrecision::fp32;

void cuda_set_precision(MatmulPrecision precision) { g_matmul_precision = precision; }

static cublasComputeType_t compute_type() {
    switch (g_matmul_precision) {
        case MatmulPrecision::tf32: return CUBLAS_COMPUTE_32F_FAST_TF32;
        case MatmulPrecision::fp32: break;
    }
    return CUBLAS_COMPUTE_32F;
}

void cuda_synchronize() { CUDA_CHECK(cudaDeviceSynchronize()); }

bool cuda_available(std::string* why) {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        if (why) *why = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorName(err) + " (" +
                        cudaGetErrorString(err) + ")";
        cudaGetLastError();  // reset the runtime's last-error slot, so a later check does not report this one
        return false;
    }
    if (n == 0) {
        if (why) *why = "no CUDA device found";
        return false;
    }
    if (why) *why = "";
    return true;
}

// ====================================================================================================
// cuBLAS, row-major. Same convention as flash.cpp's gemm: C (M,N) = alpha · op(A) · op(B) + beta · C, op(A) (M,K),
// op(B) (K,N), leading dimensions of the row-major buffers. cuBLAS is column-major, and a row-major X read
// column-major is Xᵀ, so we ask it for Cᵀ = op(B)ᵀ · op(A)ᵀ: the operands swap places and keep their transpose flags.

static void device_gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
                 float beta, float* C, int ldc) {
    CUBLAS_CHECK(cublasGemmEx(ctx().blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha,
                              B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda, &beta, C, CUDA_R_32F, ldc, compute_type(),
                              CUBLAS_GEMM_DEFAULT));
}
// The same product for `batch` problems, operand i at A + i·strideA etc.: one call for every chunk of the batch.
static void gemm_batched(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, long long strideA,
                         const float* B, int ldb, long long strideB, float beta, float* C, int ldc, long long strideC,
                         int batch) {
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(ctx().blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                            N, M, K, &alpha, B, CUDA_R_32F, ldb, strideB, A, CUDA_R_32F, lda, strideA,
                                            &beta, C, CUDA_R_32F, ldc, strideC, batch, compute_type(),
                                            CUBLAS_GEMM_DEFAULT));
}

// ====================================================================================================
// Launch helpers and reductions

static const int kThreads = 256;
// Blocks for a grid-stride loop over n elements (kernels loop, so a capped grid still covers everything).
static unsigned blocks_for(size_t n) {
    return (unsigned)std::max<size_t>(1, std::min<size_t>((n + kThreads - 1) / kThreads, 1u << 20));
}
#define GRID_STRIDE_LOOP(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

// Butterfly sum over a warp. a + b == b + a exactly, so after each step the two partners hold the same bits and at
// the end every lane holds the identical total; the order is fixed, so it is the same every run.
template <typename T>
__device__ T warp_sum(T v) {
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}
__device__ float warp_max(float v) {
    for (int off = 16; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}
// Sum / max over a block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// warp_reduce is warp_sum or warp_max; identity fills the slots of absent warps (0 or -inf).
template <typename T, T (*warp_reduce)(T)>
__device__ T block_reduce(T v, T identity) {
    __shared__ T warp_part[32];
    __shared__ T total;
    const int lane = threadIdx.x % 32, w = threadIdx.x / 32, n_warps = blockDim.x / 32;
    v = warp_reduce(v);
    if (lane == 0) warp_part[w] = v;
    __syncthreads();
    if (w == 0) {
        T x = lane < n_warps ? warp_part[lane] : identity;
        x = warp_reduce(x);
        if (lane == 0) total = x;
    }
    __syncthreads();
    const T result = total;
    __syncthreads();  // the shared slots may be reused by a following call
    return result;
}
template <typename T>
__device__ T block_sum(T v) {
    return block_reduce<T, warp_sum<T>>(v, T(0));
}
__device__ float block_max(float v) { return block_reduce<float, warp_max>(v, -INFINITY); }

// Column sums in two passes, no atomics: pass 1 gives each (column, slice of rows) to one thread, which sums the
// slice in row order into part[slice, column]; pass 2 gives each column to one thread, which adds the slices in
// order. Threads of a warp take adjacent columns, so every load is coalesced.
// part (n_slices, cols); src (rows, cols) with row stride ld
__global__ void column_sum_partial_kernel(float* part, const float* src, int ld, int rows, int cols,
                                          int rows_per_slice) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x, slice = blockIdx.y;
    if (j >= cols) return;
    const int r0 = slice * rows_per_slice, r1 = min(rows, r0 + rows_per_slice);
    float sum = 0;
    for (int r = r0; r < r1; r++) sum += src[(size_t)r * ld + j];
    part[(size_t)slice * cols + j] = sum;
}
// dst[j] += Σ_slices part[slice, j]   (part has row stride part_ld)
__global__ void column_sum_finish_kernel(float* dst, const float* part, int n_slices, int cols, int part_ld) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    float sum = 0;
    for (int k = 0; k < n_slices; k++) sum += part[(size_t)k * part_ld + j];
    dst[j] += sum;
}
// Rows per slice for a column reduction: ~64 rows per thread, at most 65535 slices (the grid's y limit).
static int rows_per_slice(int rows) { return std::max(64, (rows + 65534) / 65535); }

// dst (cols) += Σ_rows src (rows, cols; row stride ld)
static void column_sum_accumulate(float* dst, const float* src, int ld, int rows, int cols) {
    const int per = rows_per_slice(rows), n_slices = (rows + per - 1) / per;
    float* part = (float*)scratch(sizeof(float) * (size_t)n_slices * cols);
    const int tpb = 128;
    column_sum_partial_kernel<<<dim3((cols + tpb - 1) / tpb, n_slices), tpb>>>(part, src, ld, rows, cols, per);
    CUDA_CHECK_LAUNCH("column_sum_partial_kernel");
    column_sum_finish_kernel<<<(cols + tpb - 1) / tpb, tpb>>>(dst, part, n_slices, cols, cols);
    CUDA_CHECK_LAUNCH("column_sum_finish_kernel");
}

// dst[0] += (float) Σ parts, summed in double by one block in a fixed order.
__global__ void sum_doubles_kernel(float* dst, const double* parts, int n) {
    double sum = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum += parts[i];
    sum = block_sum(sum);
    if (threadIdx.x == 0) dst[0] += (float)sum;
}

// ====================================================================================================
// The ops (§1, §2), in flash.cpp's order. N = B*T rows.

namespace gpu {

// x[n,:] = wte[tokens[n],:]
// x (N,d), tokens (N) on the device, wte (V,d)
__global__ void encoder_forward_kernel(float* x, const int* tokens, const float* wte, int N, int d) {
    GRID_STRIDE_LOOP(i, (size_t)N * d) {
        const size_t n = i / d, j = i % d;
        x[i] = wte[(size_t)tokens[n] * d + j];
    }
}
void encoder_forward(float* x, const int* tokens, const float* wte, int N, int d) {
    encoder_forward_kernel<<<blocks_for((size_t)N * d), kThreads>>>(x, tokens, wte, N, d);
    CUDA_CHECK_LAUNCH("encoder_forward_kernel");
}

// Backward of: x[n,:] = wte[tokens[n],:]   =>   dwte[tokens[n],:] += dx[n,:]
// A token repeats, so rows collide. The host sorts the positions by token (stably: position order within a token);
// then one thread owns dwte[token, j] and adds that token's rows in position order, exactly as the CPU does.
// dwte (V,d); dx (N,d); positions (N) grouped by token; starts (n_unique+1) into positions; unique_tokens (n_unique)
__global__ void encoder_backward_kernel(float* dwte, const float* dx, const int* positions, const int* starts,
                                        const int* unique_tokens, int d) {
    const int u = blockIdx.y, j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    float* w = dwte + (size_t)unique_tokens[u] * d + j;
    float acc = *w;
    for (int p = starts[u]; p < starts[u + 1]; p++) acc += dx[(size_t)positions[p] * d + j];
    *w = acc;
}
void encoder_backward(float* dwte, const float* dx, const int* host_tokens, int N, int d) {
    // Counting sort of the positions by token, on the host (tokens come from the host anyway).
    int max_token = 0;
    for (int n = 0; n < N; n++) max_token = std::max(max_token, host_tokens[n]);
    std::vector<int> count((size_t)max_token + 2, 0);
    for (int n = 0; n < N; n++) count[(size_t)host_tokens[n] + 1]++;
    std::vector<int> unique_tokens, starts;
    for (int t = 0; t <= max_token; t++)
        if (count[(size_t)t + 1] > 0) unique_tokens.push_back(t);
    for (int t = 0; t <= max_token; t++) count[(size_t)t + 1] += count[t];  // count[t] = first slot of token t
    std::vector<int> positions(N);
    std::vector<int> next(count.begin(), count.end() - 1);
    for (int n = 0; n < N; n++) positions[next[host_tokens[n]]++] = n;
    for (int t : unique_tokens) starts.push_back(count[t]);
    starts.push_back(N);
    const int n_unique = (int)unique_tokens.size();
    FLASH_CHECK(n_unique <= 65535, "encoder_backward: " << n_unique << " distinct tokens in one batch, at most 65535",
                "use a smaller batch");

    ScratchPlan plan;
    const size_t i_pos = plan.add(sizeof(int) * N), i_starts = plan.add(sizeof(int) * (n_unique + 1)),
                 i_tok = plan.add(sizeof(int) * n_unique);
    char* base = (char*)scratch(plan.total);
    int* d_pos = (int*)(base + plan.offsets[i_pos]);
    int* d_starts = (int*)(base + plan.offsets[i_starts]);
    int* d_tok = (int*)(base + plan.offsets[i_tok]);
    // Synchronous copies on the default stream: ordered after the kernels before, and the host vectors may go.
    CUDA_CHECK(cudaMemcpy(d_pos, positions.data(), sizeof(int) * N, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_starts, starts.data(), sizeof(int) * (n_unique + 1), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_tok, unique_tokens.data(), sizeof(int) * n_unique, cudaMemcpyHostToDevice));
    const int tpb = 128;
    encoder_backward_kernel<<<dim3((d + tpb - 1) / tpb, n_unique), tpb>>>(dwte, dx, d_pos, d_starts, d_tok, d);
    CUDA_CHECK_LAUNCH("encoder_backward_kernel");
}

// xn = g · x / sqrt(mean(x²) + eps), ONE scalar gain g; rstd = 1/sqrt(mean(x²) + eps) is saved.
// One warp per row; the sum of squares in double, as on the CPU.
// xn (N,d), rstd (N), x (N,d), g (1)
__global__ void scalenorm_forward_kernel(float* xn, float* rstd, const float* x, const float* g, int N, int d,
                                         double eps) {
    const int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;  // n is the same for the whole warp, so the warp leaves together
    const float* xr = x + (size_t)n * d;
    double ss = 0;
    for (int j = lane; j < d; j += 32) ss += (double)xr[j] * xr[j];
    ss = warp_sum(ss);
    const float r = (float)(1.0 / sqrt(ss / d + eps));
    if (lane == 0) rstd[n] = r;
    const float gv = g[0];
    for (int j = lane; j < d; j += 32) xn[(size_t)n * d + j] = gv * xr[j] * r;
}
void scalenorm_forward(float* xn, float* rstd, const float* x, const float* g, int N, int d, double eps) {
    const int rows_per_block = kThreads / 32;
    scalenorm_forward_kernel<<<(N + rows_per_block - 1) / rows_per_block, kThreads>>>(xn, rstd, x, g, N, d, eps);
    CUDA_CHECK_LAUNCH("scalenorm_forward_kernel");
}

// Backward of: xn = g · x · rstd.   With r = 1/rstd:
//   dg += Σ dxn·x/r;   dx += (g/r)·(dxn − x·(Σ_j dxn_j x_j)/(d·r²))
// One warp per row, in double like the CPU; dg_row[n] (double) is summed afterwards by one block in a fixed order.
__global__ void scalenorm_backward_kernel(float* dx, double* dg_row, const float* dxn, const float* x,
                                          const float* rstd, const float* g, int N, int d) {
    const int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const float* xr = x + (size_t)n * d;
    const float* dr = dxn + (size_t)n * d;
    double dot = 0;
    for (int j = lane; j < d; j += 32) dot += (double)dr[j] * xr[j];
    dot = warp_sum(dot);
    const double r = rstd[n];
    if (lane == 0) dg_row[n] = dot * r;
    const double c = dot * r * r / d;  // (Σ dxn x) / (d r²), with rstd = 1/r
    const double gr = g[0] * r;
    for (int j = lane; j < d; j += 32) dx[(size_t)n * d + j] += (float)(gr * (dr[j] - xr[j] * c));
}
void scalenorm_backward(float* dx, float* dg, const float* dxn, const float* x, const float* rstd, const float* g,
                        int N, int d) {
    double* dg_row = (double*)scratch(sizeof(double) * N);
    const int rows_per_block = kThreads / 32;
    scalenorm_backward_kernel<<<(N + rows_per_block - 1) / rows_per_block, kThreads>>>(dx, dg_row, dxn, x, rstd, g, N,
                                                                                       d);
    CUDA_CHECK_LAUNCH("scalenorm_backward_kernel");
    sum_doubles_kernel<<<1, 1024>>>(dg, dg_row, N);
    CUDA_CHECK_LAUNCH("sum_doubles_kernel");
}

// y[n,:] = b: the bias is written first, then the product adds to it (beta = 1), as on the CPU.
// y (N,out), b (out)
__global__ void broadcast_rows_kernel(float* y, const float* b, int N, int out) {
    GRID_STRIDE_LOOP(i, (size_t)N * out) y[i] = b[i % out];
}
// y = x · w + b
// y (N,out), x (N,in), w (in,out), b (out) or null
void matmul_forward(float* y, const float* x, const float* w, const float* b, int N, int in, int out) {
    if (b) {
        broadcast_rows_kernel<<<blocks_for((size_t)N * out), kThreads>>>(y, b, N, out);
        CUDA_CHECK_LAUNCH("broadcast_rows_kernel");
    }
    device_gemm(false, false, N, out, in, 1.0f, x, in, w, out, b ? 1.0f : 0.0f, y, out);
}
// Backward of: y = x · w + b   =>   dx += dy · wᵀ;  dw += xᵀ · dy;  db += Σ_rows dy
void matmul_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int N, int in,
                     int out) {
    device_gemm(false, true, N, in, out, 1.0f, dy, out, w, out, 1.0f, dx, in);
    device_gemm(true, false, in, out, N, 1.0f, x, in, dy, out, 1.0f, dw, out);
    if (db) column_sum_accumulate(db, dy, out, N, out);
}

// y = x · σ(x), elementwise over n values
__global__ void silu_forward_kernel(float* y, const float* x, size_t n) {
    GRID_STRIDE_LOOP(i, n) y[i] = x[i] / (1.0f + expf(-x[i]));
}
void silu_forward(float* y, const float* x, size_t n) {
    silu_forward_kernel<<<blocks_for(n), kThreads>>>(y, x, n);
    CUDA_CHECK_LAUNCH("silu_forward_kernel");
}
// Backward of: y = x · σ(x)   =>   dx += dy · σ(x) · (1 + x · (1 − σ(x)))
__global__ void silu_backward_kernel(float* dx, const float* dy, const float* x, size_t n) {
    GRID_STRIDE_LOOP(i, n) {
        const float sig = 1.0f / (1.0f + expf(-x[i]));
        dx[i] += dy[i] * sig * (1.0f + x[i] * (1.0f - sig));
    }
}
void silu_backward(float* dx, const float* dy, const float* x, size_t n) {
    silu_backward_kernel<<<blocks_for(n), kThreads>>>(dx, dy, x, n);
    CUDA_CHECK_LAUNCH("silu_backward_kernel");
}

// head_i = z ⊙ γ[i] + β[i] for the four heads i = qq, kq, ql, kl ("offset-scale")
// qq, kq, ql, kl (N,s); z (N,s) with row stride ldz; gamma, beta (4,s)
__global__ void offset_scale_forward_kernel(float* qq, float* kq, float* ql, float* kl, const float* z, int ldz,
                                            const float* gamma, const float* beta, int N, int s) {
    GRID_STRIDE_LOOP(idx, (size_t)N * s) {
        const size_t n = idx / s;
        const int j = (int)(idx % s);
        const float zv = z[n * ldz + j];
        qq[idx] = zv * gamma[0 * s + j] + beta[0 * s + j];
        kq[idx] = zv * gamma[1 * s + j] + beta[1 * s + j];
        ql[idx] = zv * gamma[2 * s + j] + beta[2 * s + j];
        kl[idx] = zv * gamma[3 * s + j] + beta[3 * s + j];
    }
}
void offset_scale_forward(float* qq, float* kq, float* ql, float* kl, const float* z, int ldz, const float* gamma,
                          const float* beta, int N, int s) {
    offset_scale_forward_kernel<<<blocks_for((size_t)N * s), kThreads>>>(qq, kq, ql, kl, z, ldz, gamma, beta, N, s);
    CUDA_CHECK_LAUNCH("offset_scale_forward_kernel");
}

// Backward of: head_i = z ⊙ γ[i] + β[i]   =>   dγ[i] += Σ_rows dhead_i ⊙ z;  dβ[i] += Σ_rows dhead_i;
//                                          dz += Σ_i dhead_i ⊙ γ[i]
// One thread per (column j, slice of rows): it writes dz for its rows and the slice's partial sums of the 8 column
// sums into part[slice, 0..8s) = [dγ partials (4,s) | dβ partials (4,s)]; column_sum_finish_kernel adds the slices.
__global__ void offset_scale_backward_kernel(float* dz, int lddz, float* part, const float* dqq, const float* dkq,
                                             const float* dql, const float* dkl, const float* z, int ldz,
                                             const float* gamma, int N, int s, int rows_per_slice) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x, slice = blockIdx.y;
    if (j >= s) return;
    const float* dheads[4] = {dqq, dkq, dql, dkl};
    float g[4], dg[4] = {0, 0, 0, 0}, db[4] = {0, 0, 0, 0};
    for (int i = 0; i < 4; i++) g[i] = gamma[i * s + j];
    const int r0 = slice * rows_per_slice, r1 = min(N, r0 + rows_per_slice);
    for (int n = r0; n < r1; n++) {
        const float zv = z[(size_t)n * ldz + j];
        float acc = 0;
        for (int i = 0; i < 4; i++) {
            const float dhv = dheads[i][(size_t)n * s + j];
            dg[i] += dhv * zv;
            db[i] += dhv;
            acc += dhv * g[i];
        }
        dz[(size_t)n * lddz + j] += acc;
    }
    float* p = part + (size_t)slice * 8 * s;
    for (int i = 0; i < 4; i++) {
        p[i * s + j] = dg[i];
        p[(4 + i) * s + j] = db[i];
    }
}
void offset_scale_backward(float* dz, int lddz, float* dgamma, float* dbeta, const float* dqq, const float* dkq,
                           const float* dql, const float* dkl, const float* z, int ldz, const float* gamma, int N,
                           int s) {
    const int per = rows_per_slice(N), n_slices = (N + per - 1) / per, tpb = 128;
    float* part = (float*)scratch(sizeof(float) * (size_t)n_slices * 8 * s);
    offset_scale_backward_kernel<<<dim3((s + tpb - 1) / tpb, n_slices), tpb>>>(dz, lddz, part, dqq, dkq, dql, dkl, z,
                                                                               ldz, gamma, N, s, per);
    CUDA_CHECK_LAUNCH("offset_scale_backward_kernel");
    column_sum_finish_kernel<<<(4 * s + tpb - 1) / tpb, tpb>>>(dgamma, part, n_slices, 4 * s, 8 * s);
    CUDA_CHECK_LAUNCH("column_sum_finish_kernel");
    column_sum_finish_kernel<<<(4 * s + tpb - 1) / tpb, tpb>>>(dbeta, part + 4 * s, n_slices, 4 * s, 8 * s);
    CUDA_CHECK_LAUNCH("column_sum_finish_kernel");
}

// Rotate-half RoPE, in place: r'[i] = r[i]·cos θ_i − r[i+s/2]·sin θ_i;  r'[i+s/2] = r[i+s/2]·cos θ_i + r[i]·sin θ_i
// (forward, sign = +1), or the rotation by −θ (backward, sign = −1: the transpose of a rotation).
// The tables are double, made on the host by rope_tables (angles in double, §1), and the rotation is done in double
// as on the CPU, then rounded once to float.
// x (N,s); row n is at table row n mod T; cos_t, sin_t (T, s/2)
__global__ void rope_kernel(float* x, const double* cos_t, const double* sin_t, int N, int T, int s, double sign) {
    const int half = s / 2;
    GRID_STRIDE_LOOP(idx, (size_t)N * half) {
        const size_t n = idx / half;
        const int i = (int)(idx % half);
        float* r = x + n * s;
        const double c = cos_t[(n % T) * half + i], sn = sign * sin_t[(n % T) * half + i];
        const double a = r[i], b = r[i + half];
        r[i] = (float)(a * c - b * sn);
        r[i + half] = (float)(b * c + a * sn);
    }
}
void rope_forward(float* x, const double* cos_t, const double* sin_t, int N, int T, int s) {
    rope_kernel<<<blocks_for((size_t)N * (s / 2)), kThreads>>>(x, cos_t, sin_t, N, T, s, 1.0);
    CUDA_CHECK_LAUNCH("rope_kernel");
}
// Backward of the rotation above: the transpose of a rotation by θ is the rotation by −θ, applied to dx in place.
void rope_backward(float* dx, const double* cos_t, const double* sin_t, int N, int T, int s) {
    rope_kernel<<<blocks_for((size_t)N * (s / 2)), kThreads>>>(dx, cos_t, sin_t, N, T, s, -1.0);
    CUDA_CHECK_LAUNCH("rope_kernel");
}

// ----------------------------------------------------------------------------------------------------
// Local squared-ReLU attention: the kernels that make FLASH fast.
//
// Per chunk, S = qq·kqᵀ/C is a (C,C) product with K = s (128): small, done by one strided-batched cuBLAS call
// straight into relu_s, which the backward needs anyway. A cheap elementwise kernel then adds the bias, masks and
// applies relu in place. The big products have K or N = e (1536): quad = A·v (forward), dA = do·vᵀ and dv += Aᵀ·do
// (backward). They run on chunk_tile_kernel, a tiled SGEMM written here for two reasons cuBLAS cannot serve:
//   - causality: A is lower triangular, so tiles above the diagonal are skipped (half of every product's work);
//   - fusion: A = relu(S)² is formed while loading the tile, and dS = 2·relu(S) ⊙ dA in the epilogue, so neither A
//     nor dA ever exists in memory.
// All sums are fp32 (FLASH.md §8: relu² is unbounded).
//
// chunk_tile_kernel: for each chunk bg (blockIdx.z), out(i,j) = Σ_k a(i,k) · b(k,j) over k in a range the op may
// narrow per tile (the causal skip); the op reads its operands and stores the result. A 64×64 output tile per block
// of 256 threads, each thread a 4×4 register tile; the k dimension in steps of 16 through shared memory. Loads are
// coalesced along whichever index is contiguous in memory (the op says which). Every bound is checked, so no
// dimension needs to be a multiple of a tile size. Each output is one thread's fp32 sum in k order: deterministic.

constexpr int kTileM = 64, kTileN = 64, kTileK = 16, kTileThreads = 256;

template <class Op>
__global__ void __launch_bounds__(kTileThreads) chunk_tile_kernel(const Op op) {
    __shared__ __align__(16) float As[kTileK][kTileM + 4];  // As[k][i]; +4 keeps float4 alignment, spreads banks
    __shared__ __align__(16) float Bs[kTileK][kTileN + 4];  // Bs[k][j]
    const int bg = blockIdx.z, i0 = blockIdx.y * kTileM, j0 = blockIdx.x * kTileN;
    const int tid = threadIdx.x, ti = tid / 16, tj = tid % 16;  // this thread's rows i0+4ti.., columns j0+4tj..
    int k0, k1;
    op.k_range(i0, j0, k0, k1);
    float acc[4][4];
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
        for (int c = 0; c < 4; c++) acc[r][c] = 0.0f;

    for (int kt = k0; kt < k1; kt += kTileK) {
#pragma unroll
        for (int q = 0; q < kTileM * kTileK / kTileThreads; q++) {
            const int idx = tid + q * kTileThreads;
            int i, k;
            if (Op::kAContiguousInK) { i = idx / kTileK; k = idx % kTileK; }
            else                     { k = idx / kTileM; i = idx % kTileM; }
            As[k][i] = (i0 + i < op.M && kt + k < k1) ? op.a(bg, i0 + i, kt + k) : 0.0f;
        }
#pragma unroll
        for (int q = 0; q < kTileN * kTileK / kTileThreads; q++) {
            const int idx = tid + q * kTileThreads;
            int j, k;
            if (Op::kBContiguousInN) { k = idx / kTileN; j = idx % kTileN; }
            else                     { j = idx / kTileK; k = idx % kTileK; }
            Bs[k][j] = (j0 + j < op.N && kt + k < k1) ? op.b(bg, kt + k, j0 + j) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < kTileK; k++) {
            const float4 a4 = *reinterpret_cast<const float4*>(&As[k][ti * 4]);
            const float4 b4 = *reinterpret_cast<const float4*>(&Bs[k][tj * 4]);
            const float a[4] = {a4.x, a4.y, a4.z, a4.w}, b[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
            for (int r = 0; r < 4; r++)
#pragma unroll
                for (int c = 0; c < 4; c++) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
        }
        __syncthreads();  // the tiles are overwritten next step
    }
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const int i = i0 + ti * 4 + r, j = j0 + tj * 4 + c;
            if (i < op.M && j < op.N) op.store(bg, i, j, acc[r][c]);
        }
}
template <class Op>
static void launch_chunk_tile(const Op& op, int n_chunks, const char* name) {
    FLASH_CHECK(n_chunks <= 65535, name << ": " << n_chunks << " chunks in one batch, at most 65535",
                "use a smaller batch B or sequence length T");
    const dim3 grid((op.N + kTileN - 1) / kTileN, (op.M + kTileM - 1) / kTileM, n_chunks);
    chunk_tile_kernel<Op><<<grid, kTileThreads>>>(op);
    CUDA_CHECK_LAUNCH(name);
}

// quad[a,:] = Σ_b A[a,b] v[b,:] with A = relu_s², per chunk. i = query a, k = key b, j = column of v.
// Causal: A[a,b] = 0 for b > a, so a query tile [i0, i0+64) needs keys below i0+64 only.
struct LocalQuadForward {
    static constexpr bool kAContiguousInK = true, kBContiguousInN = true;
    float* o;               // (N,e), overwritten
    const float* relu_s;    // (B,G,C,C)
    const float* v;         // (N,e), row stride ldv
    int ldv, C, e, M, N;    // M = C, N = e
    bool causal;
    __device__ void k_range(int i0, int, int& k0, int& k1) const { k0 = 0; k1 = causal ? min(C, i0 + kTileM) : C; }
    __device__ float a(int bg, int i, int k) const {
        const float r = relu_s[((size_t)bg * C + i) * C + k];
        return r * r;
    }
    __device__ float b(int bg, int k, int j) const { return v[((size_t)bg * C + k) * ldv + j]; }
    __device__ void store(int bg, int i, int j, float acc) const { o[((size_t)bg * C + i) * e + j] = acc; }
};
// dv[b,:] += Σ_a A[a,b] do[a,:] (dv += Aᵀ·do), per chunk. i = key b, k = query a, j = column.
// Causal: only queries a ≥ b contribute, so a key tile [i0, ..) needs queries from i0 on.
struct LocalQuadBackwardDv {
    static constexpr bool kAContiguousInK = false, kBContiguousInN = true;  // A(i=b, k=a) = relu_s[a,b]: contiguous in b
    float* dv;              // (N,e), row stride lddv, accumulated
    const float* relu_s;    // (B,G,C,C)
    const float* d_o;       // (N,e)
    int lddv, C, e, M, N;   // M = C, N = e
    bool causal;
    __device__ void k_range(int i0, int, int& k0, int& k1) const { k0 = causal ? i0 : 0; k1 = C; }
    __device__ float a(int bg, int i, int k) const {
        const float r = relu_s[((size_t)bg * C + k) * C + i];
        return r * r;
    }
    __device__ float b(int bg, int k, int j) const { return d_o[((size_t)bg * C + k) * e + j]; }
    __device__ void store(int bg, int i, int j, float acc) const { dv[((size_t)bg * C + i) * lddv + j] += acc; }
};
// dS[a,b] = 2·relu_s[a,b] · dA[a,b] with dA = do·vᵀ, per chunk. i = query a, j = key b, k = column of do and v.
// Causal: a tile wholly above the diagonal (every b > every a) is zero: its k range is empty, it stores 0.
struct LocalScoreBackward {
    static constexpr bool kAContiguousInK = true, kBContiguousInN = false;  // B(k, j=b) = v[b,k]: contiguous in k
    float* ds;              // (B,G,C,C), overwritten
    const float* relu_s;    // (B,G,C,C)
    const float* d_o;       // (N,e)
    const float* v;         // (N,e), row stride ldv
    int ldv, C, e, M, N;    // M = N = C
    bool causal;
    __device__ void k_range(int i0, int j0, int& k0, int& k1) const {
        k0 = 0;
        k1 = (causal && j0 > i0 + kTileM - 1) ? 0 : e;
    }
    __device__ float a(int bg, int i, int k) const { return d_o[((size_t)bg * C + i) * e + k]; }
    __device__ float b(int bg, int k, int j) const { return v[((size_t)bg * C + j) * ldv + k]; }
    __device__ void store(int bg, int i, int j, float acc) const {
        const size_t at = ((size_t)bg * C + i) * C + j;
        ds[at] = 2.0f * relu_s[at] * acc;  // relu_s = 0 where masked or where relu was off
    }
};

// In place on the raw scores S = qq·kqᵀ/C: relu_s = relu(S + w[a−b]) where b ≤ a (causal), else 0.
// relu_s (B·G, C, C); rel_bias (C) causal, (2C−1) non-causal (index a−b+C−1)
__global__ void local_scores_relu_kernel(float* relu_s, const float* rel_bias, size_t total, int C, bool causal) {
    GRID_STRIDE_LOOP(i, total) {
        const int b = (int)(i % C), a = (int)((i / C) % C);
        relu_s[i] = (causal && b > a) ? 0.0f : fmaxf(0.0f, relu_s[i] + rel_bias[rel_bias_index(a, b, C, causal)]);
    }
}

// Local squared-ReLU attention inside each chunk (writes o = quad; the global part adds to it):
//   S[a,b] = (qq[a]·kq[b]) / C + w[a−b];   A[a,b] = relu(S[a,b])² if b ≤ a (causal) else 0;   quad[a] = Σ_b A[a,b] v[b]
// o (N,e); relu_s (B,G,C,C) saved; qq, kq (N,s); v (N,e) with row stride ldv; rel_bias (C) or (2C−1)
void local_attention_forward(float* o, float* relu_s, const float* qq, const float* kq, const float* v, int ldv,
                             const float* rel_bias, int B, int T, int C, int s, int e, bool causal) {
    const int G = T / C, BG = B * G;
    gemm_batched(false, true, C, C, s, 1.0f / C, qq, s, (long long)C * s, kq, s, (long long)C * s, 0.0f, relu_s, C,
                 (long long)C * C, BG);
    const size_t total = (size_t)BG * C * C;
    local_scores_relu_kernel<<<blocks_for(total), kThreads>>>(relu_s, rel_bias, total, C, causal);
    CUDA_CHECK_LAUNCH("local_scores_relu_kernel");
    LocalQuadForward op{o, relu_s, v, ldv, C, e, C, e, causal};
    launch_chunk_tile(op, BG, "chunk_tile_kernel<LocalQuadForward>");
}

// Per chunk, per bias index k: part[bg, k] = Σ_{a−b = k} dS[a,b] (causal; non-causal index k = a−b+C−1), one thread
// per diagonal summing in row order, as the CPU's per-chunk partial does.
// part (B·G, nbias); ds (B·G, C, C)
__global__ void local_bias_grad_partial_kernel(float* part, const float* ds, int BG, int C, int nbias, bool causal) {
    GRID_STRIDE_LOOP(idx, (size_t)BG * nbias) {
        const size_t bg = idx / nbias;
        const int k = (int)(idx % nbias);
        const int offset = rel_bias_offset(k, C, causal);  // a − b on this diagonal
        const int b_first = max(0, -offset), b_end = min(C, C - offset);
        const float* dsc = ds + bg * C * C;
        float sum = 0;
        for (int b = b_first; b < b_end; b++) sum += dsc[(size_t)(b + offset) * C + b];
        part[idx] = sum;
    }
}
// drel_bias[k] += part[bg, k] for bg in order (the CPU's serial loop over chunks).
__global__ void local_bias_grad_finish_kernel(float* drel_bias, const float* part, int BG, int nbias) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= nbias) return;
    float acc = drel_bias[k];
    for (int bg = 0; bg < BG; bg++) acc += part[(size_t)bg * nbias + k];
    drel_bias[k] = acc;
}

// Backward of: quad = A · v with A = relu(S)² (masked), S = qq·kqᵀ/C + w:
//   dA = do · vᵀ (masked);  dv += Aᵀ · do;  dS = 2·relu(S) ⊙ dA;
//   dqq += dS · kq / C;  dkq += dSᵀ · qq / C;  dw[a−b] += dS[a,b]
// dS (B,G,C,C) lives in scratch; dw is summed per chunk into a partial, then over chunks in order.
void local_attention_backward(float* dqq, float* dkq, float* dv, int lddv, float* drel_bias, const float* d_o,
                              const float* relu_s, const float* qq, const float* kq, const float* v, int ldv, int B,
                              int T, int C, int s, int e, bool causal) {
    const int G = T / C, BG = B * G, nbias = rel_bias_count(C, causal);
    ScratchPlan plan;
    const size_t i_ds = plan.add(sizeof(float) * (size_t)BG * C * C), i_part = plan.add(sizeof(float) * BG * nbias);
    char* base = (char*)scratch(plan.total);
    float* ds = (float*)(base + plan.offsets[i_ds]);
    float* part = (float*)(base + plan.offsets[i_part]);

    LocalScoreBackward score_op{ds, relu_s, d_o, v, ldv, C, e, C, C, causal};
    launch_chunk_tile(score_op, BG, "chunk_tile_kernel<LocalScoreBackward>");
    LocalQuadBackwardDv dv_op{dv, relu_s, d_o, lddv, C, e, C, e, causal};
    launch_chunk_tile(dv_op, BG, "chunk_tile_kernel<LocalQuadBackwardDv>");
    local_bias_grad_partial_kernel<<<blocks_for((size_t)BG * nbias), kThreads>>>(part, ds, BG, C, nbias, causal);
    CUDA_CHECK_LAUNCH("local_bias_grad_partial_kernel");
    local_bias_grad_finish_kernel<<<(nbias + 127) / 128, 128>>>(drel_bias, part, BG, nbias);
    CUDA_CHECK_LAUNCH("local_bias_grad_finish_kernel");
    gemm_batched(false, false, C, s, C, 1.0f / C, ds, C, (long long)C * C, kq, s, (long long)C * s, 1.0f, dqq, s,
                 (long long)C * s, BG);
    gemm_batched(true, false, C, s, C, 1.0f / C, ds, C, (long long)C * C, qq, s, (long long)C * s, 1.0f, dkq, s,
                 (long long)C * s, BG);
}

// ----------------------------------------------------------------------------------------------------
// Global linear attention. The per-chunk products are strided-batched cuBLAS calls; between them, the chunk prefix
// sum turns P into M in place.
//
// The prefix sum: per batch row there are s·e independent scans (one per entry of the (s,e) state), each over only
// G = T/C chunks (4..32 in the base config). One thread per (batch row, entry) walks its G chunks in order with an fp32
// running sum: consecutive threads take consecutive entries, so every step's load and store is one coalesced sweep,
// and the kernel moves each value of P once in and once out, which is the least any scan can do; a parallel (tree)
// scan over G would add passes without adding parallelism we lack (B·s·e ≥ 196K threads already). The sum order is
// the CPU's, so given the same P the result is bit-identical.
// m (B, G, s·e): P in, M out
__global__ void chunk_prefix_sum_kernel(float* m, int B, int G, size_t se, bool causal, bool reverse) {
    GRID_STRIDE_LOOP(idx, (size_t)B * se) {
        const size_t b = idx / se, k = idx % se;
        float running;
        chunk_prefix_sum_columns(m + b * G * se + k, 1, &running, G, se, /*exclusive=*/causal, reverse);
    }
}

// Global linear attention across chunks (adds to o):
//   P[g] = kl[g]ᵀ · v[g] / C;   M[g] = Σ_{h<g} P[h] (causal, exclusive) or Σ_h P[h] (non-causal);   o[g] += ql[g] · M[g]
// o (N,e); m (B,G,s,e) saved; ql, kl (N,s); v (N,e) with row stride ldv
void global_attention_forward(float* o, float* m, const float* ql, const float* kl, const float* v, int ldv, int B,
                              int T, int C, int s, int e, bool causal) {
    const int G = T / C, BG = B * G;
    const size_t se = (size_t)s * e;
    gemm_batched(true, false, s, e, C, 1.0f / C, kl, s, (long long)C * s, v, ldv, (long long)C * ldv, 0.0f, m, e,
                 (long long)se, BG);
    chunk_prefix_sum_kernel<<<blocks_for((size_t)B * se), kThreads>>>(m, B, G, se, causal, false);
    CUDA_CHECK_LAUNCH("chunk_prefix_sum_kernel");
    gemm_batched(false, false, C, e, s, 1.0f, ql, s, (long long)C * s, m, e, (long long)se, 1.0f, o, e,
                 (long long)C * e, BG);
}
// Backward of: o[g] += ql[g] · M[g] with M[g] = Σ_{h<g} kl[h]ᵀ v[h] / C:
//   dql[g] += do[g] · M[g]ᵀ;   dM[g] = ql[g]ᵀ · do[g];   R[g] = Σ_{h>g} dM[h] (non-causal: Σ_h dM[h]);
//   dkl[g] += v[g] · R[g]ᵀ / C;   dv[g] += kl[g] · R[g] / C
// R (B,G,s,e) lives in scratch.
void global_attention_backward(float* dql, float* dkl, float* dv, int lddv, const float* d_o, const float* m,
                               const float* ql, const float* kl, const float* v, int ldv, int B, int T, int C, int s,
                               int e, bool causal) {
    const int G = T / C, BG = B * G;
    const size_t se = (size_t)s * e;
    float* r = (float*)scratch(sizeof(float) * (size_t)BG * se);  // dM, then R in place
    gemm_batched(false, true, C, s, e, 1.0f, d_o, e, (long long)C * e, m, e, (long long)se, 1.0f, dql, s,
                 (long long)C * s, BG);
    gemm_batched(true, false, s, e, C, 1.0f, ql, s, (long long)C * s, d_o, e, (long long)C * e, 0.0f, r, e,
                 (long long)se, BG);
    chunk_prefix_sum_kernel<<<blocks_for((size_t)B * se), kThreads>>>(r, B, G, se, causal, true);
    CUDA_CHECK_LAUNCH("chunk_prefix_sum_kernel");
    gemm_batched(false, true, C, s, e, 1.0f / C, v, ldv, (long long)C * ldv, r, e, (long long)se, 1.0f, dkl, s,
                 (long long)C * s, BG);
    gemm_batched(false, false, C, e, s, 1.0f / C, kl, s, (long long)C * s, r, e, (long long)se, 1.0f, dv, lddv,
                 (long long)C * lddv, BG);
}

// gated = u ⊙ o
// gated (N,e); u (N,e) with row stride ldu; o (N,e)
__global__ void gate_forward_kernel(float* gated, const float* u, int ldu, const float* o, int N, int e) {
    GRID_STRIDE_LOOP(i, (size_t)N * e) gated[i] = u[(i / e) * ldu + i % e] * o[i];
}
void gate_forward(float* gated, const float* u, int ldu, const float* o, int N, int e) {
    gate_forward_kernel<<<blocks_for((size_t)N * e), kThreads>>>(gated, u, ldu, o, N, e);
    CUDA_CHECK_LAUNCH("gate_forward_kernel");
}
// Backward of: gated = u ⊙ o   =>   du += dgated ⊙ o;  do += dgated ⊙ u
__global__ void gate_backward_kernel(float* du, int lddu, float* d_o, const float* dgated, const float* u, int ldu,
                                     const float* o, int N, int e) {
    GRID_STRIDE_LOOP(i, (size_t)N * e) {
        const size_t n = i / e, j = i % e;
        const float dg = dgated[i];
        du[n * lddu + j] += dg * o[i];
        d_o[i] += dg * u[n * ldu + j];
    }
}
void gate_backward(float* du, int lddu, float* d_o, const float* dgated, const float* u, int ldu, const float* o,
                   int N, int e) {
    gate_backward_kernel<<<blocks_for((size_t)N * e), kThreads>>>(du, lddu, d_o, dgated, u, ldu, o, N, e);
    CUDA_CHECK_LAUNCH("gate_backward_kernel");
}

// y += x: the residual connection (its backward passes the gradient through unchanged)
__global__ void residual_forward_kernel(float* y, const float* x, size_t n) {
    GRID_STRIDE_LOOP(i, n) y[i] += x[i];
}
void residual_forward(float* y, const float* x, size_t n) {
    residual_forward_kernel<<<blocks_for(n), kThreads>>>(y, x, n);
    CUDA_CHECK_LAUNCH("residual_forward_kernel");
}

// logits = xn · wteᵀ (tied embedding)
// logits (N,V), xn (N,d), wte (V,d)
void logits_forward(float* logits, const float* xn, const float* wte, int N, int d, int V) {
    device_gemm(false, true, N, V, d, 1.0f, xn, d, wte, d, 0.0f, logits, V);
}
// Backward of: logits = xn · wteᵀ   =>   dxn += dlogits · wte;  dwte += dlogitsᵀ · xn
void logits_backward(float* dxn, float* dwte, const float* dlogits, const float* xn, const float* wte, int N, int d,
                     int V) {
    device_gemm(false, false, N, d, V, 1.0f, dlogits, V, wte, d, 1.0f, dxn, d);
    device_gemm(true, false, V, d, N, 1.0f, dlogits, V, xn, d, 1.0f, dwte, d);
}

// losses[n] = logsumexp(logits[n]) − logits[n, targets[n]] (0 where targets[n] is kIgnoreTarget);
// probs = softmax(logits). One block per row; the exponentials are stored as float and summed in double, as on
// the CPU.
// losses (N), probs (N,V), logits (N,V), targets (N) on the device
__global__ void crossentropy_forward_kernel(float* losses, float* probs, const float* logits, const int* targets,
                                            int N, int V) {
    const int n = blockIdx.x;
    const float* lr = logits + (size_t)n * V;
    float* pr = probs + (size_t)n * V;
    float mx = -INFINITY;
    for (int k = threadIdx.x; k < V; k += blockDim.x) mx = fmaxf(mx, lr[k]);
    mx = block_max(mx);
    double sum = 0;
    for (int k = threadIdx.x; k < V; k += blockDim.x) {
        const float p = expf(lr[k] - mx);
        pr[k] = p;
        sum += p;
    }
    sum = block_sum(sum);
    // Each thread rescales the entries it wrote itself: no barrier needed.
    for (int k = threadIdx.x; k < V; k += blockDim.x) pr[k] = (float)(pr[k] / sum);
    if (threadIdx.x == 0) losses[n] = targets[n] == kIgnoreTarget ? 0.0f : (float)(log(sum) + mx - lr[targets[n]]);
}
// The number of scored targets, counted on the host (N ints: small next to the N×V the kernels touch).
static int scored_target_count_device(const int* targets, int N) {
    std::vector<int> host(N);
    CUDA_CHECK(cudaMemcpy(host.data(), targets, sizeof(int) * N, cudaMemcpyDeviceToHost));
    return scored_target_count(host.data(), N);
}
double crossentropy_forward(float* losses, float* probs, const float* logits, const int* targets, int N, int V) {
    crossentropy_forward_kernel<<<N, 512>>>(losses, probs, logits, targets, N, V);
    CUDA_CHECK_LAUNCH("crossentropy_forward_kernel");
    std::vector<float> host(N);
    CUDA_CHECK(cudaMemcpy(host.data(), losses, sizeof(float) * N, cudaMemcpyDeviceToHost));
    double total = 0;  // in position order, in double: the CPU's sum
    for (int n = 0; n < N; n++) total += host[n];
    const int scored = scored_target_count_device(targets, N);
    return scored > 0 ? total / scored : 0.0;
}
// Backward of: loss = mean over scored n of (logsumexp(logits[n]) − logits[n, t_n])
//   =>   dlogits[n] += (probs[n] − onehot(t_n)) / scored   for each scored n (ignored rows get nothing)
__global__ void crossentropy_backward_kernel(float* dlogits, const float* probs, const int* targets, int N, int V,
                                             float scale) {
    GRID_STRIDE_LOOP(i, (size_t)N * V) {
        const size_t n = i / V;
        const int k = (int)(i % V);
        if (targets[n] != kIgnoreTarget) dlogits[i] += (probs[i] - (k == targets[n] ? 1.0f : 0.0f)) * scale;
    }
}
void crossentropy_backward(float* dlogits, const float* probs, const int* targets, int N, int V) {
    const int scored = scored_target_count_device(targets, N);
    if (scored == 0) return;
    crossentropy_backward_kernel<<<blocks_for((size_t)N * V), kThreads>>>(dlogits, probs, targets, N, V,
                                                                           1.0f / scored);
    CUDA_CHECK_LAUNCH("crossentropy_backward_kernel");
}

}  // namespace gpu

// ====================================================================================================
// The model

struct FlashCuda {
    FlashConfig cfg;
    std::vector<TensorSpec> specs;
    size_t n_params = 0;
    float *params = nullptr, *grads = nullptr, *adam_m = nullptr, *adam_v = nullptr;  // device, n_params each
    ParamView<float> p, dp;  // named views of params and grads (device pointers)
    // Batch-dependent state, (re)allocated when B or T change.
    int B = 0, T = 0;
    float *act_buf = nullptr, *grad_act_buf = nullptr;
    Acts<float> acts{};
    GradActs<float> dacts{};
    double *rope_cos = nullptr, *rope_sin = nullptr;  // (T, s/2), device
    int *d_tokens = nullptr, *d_targets = nullptr;    // (B*T), device
    std::vector<int> tokens;                          // host copy of the last batch (encoder_backward sorts it)
    bool has_targets = false;
    double loss = 0;
};

static void free_batch_state(FlashCuda* m) {
    m->B = m->T = 0;
    // Each pointer is cleared before its cudaFree can throw, so a later cleanup never frees it twice.
    for (void** slot : {(void**)&m->act_buf, (void**)&m->grad_act_buf, (void**)&m->rope_cos, (void**)&m->rope_sin,
                        (void**)&m->d_tokens, (void**)&m->d_targets}) {
        void* ptr = *slot;
        *slot = nullptr;
        if (ptr) CUDA_CHECK(cudaFree(ptr));
    }
}

// The activations for a batch, laid out exactly as flash.cpp's layout_activations.
static void layout_activations(FlashCuda* m, int B, int T) {
    free_batch_state(m);
    const FlashConfig& c = m->cfg;
    const size_t N = (size_t)B * T;
    size_t n_act, n_grad;
    activation_counts(c, B, T, &n_act, &n_grad);
    CUDA_CHECK(cudaMalloc(&m->act_buf, sizeof(float) * n_act));
    CUDA_CHECK(cudaMalloc(&m->grad_act_buf, sizeof(float) * n_grad));
    CUDA_CHECK(cudaMemset(m->act_buf, 0, sizeof(float) * n_act));
    CUDA_CHECK(cudaMemset(m->grad_act_buf, 0, sizeof(float) * n_grad));
    view_activations(m->acts, m->dacts, m->act_buf, m->grad_act_buf, c, B, T);  // device pointers, flash.cpp's layout

    std::vector<double> cos_t, sin_t;
    rope_tables(cos_t, sin_t, 0, T, c.s, c.rope_base);
    CUDA_CHECK(cudaMalloc(&m->rope_cos, sizeof(double) * cos_t.size()));
    CUDA_CHECK(cudaMalloc(&m->rope_sin, sizeof(double) * sin_t.size()));
    CUDA_CHECK(cudaMemcpy(m->rope_cos, cos_t.data(), sizeof(double) * cos_t.size(), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(m->rope_sin, sin_t.data(), sizeof(double) * sin_t.size(), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMalloc(&m->d_tokens, sizeof(int) * N));
    CUDA_CHECK(cudaMalloc(&m->d_targets, sizeof(int) * N));
    m->B = B;
    m->T = T;
}

static void cuda_model_destroy(FlashCuda* m);

static FlashCuda* cuda_model_create(const FlashConfig& cfg) {
    config_validate(cfg);
    std::string why;
    FLASH_CHECK(cuda_available(&why), "no GPU for the CUDA model: " << why,
                "run on a machine with an NVIDIA GPU, or train on the CPU");
    FlashCuda* m = new FlashCuda();
    try {
        m->cfg = cfg;
        m->specs = param_specs(cfg);
        m->n_params = param_count(cfg);
        for (float** buf : {&m->params, &m->grads, &m->adam_m, &m->adam_v}) {
            CUDA_CHECK(cudaMalloc(buf, sizeof(float) * m->n_params));
            CUDA_CHECK(cudaMemset(*buf, 0, sizeof(float) * m->n_params));
        }
        m->p = view_params(m->params, cfg);  // pointer arithmetic only: fine on device pointers
        m->dp = view_params(m->grads, cfg);  // the activations are laid out by the first forward
    } catch (...) {
        cuda_model_destroy(m);
        throw;
    }
    return m;
}

static void cuda_model_destroy(FlashCuda* m) {
    if (!m) return;
    // No throwing from here (it runs during unwinding): errors are ignored, the memory goes with the process anyway.
    for (void* ptr : {(void*)m->params, (void*)m->grads, (void*)m->adam_m, (void*)m->adam_v, (void*)m->act_buf,
                      (void*)m->grad_act_buf, (void*)m->rope_cos, (void*)m->rope_sin, (void*)m->d_tokens,
                      (void*)m->d_targets})
        if (ptr) cudaFree(ptr);
    delete m;
}


static void copy_in(float* dev, const float* host, size_t n) {
    CUDA_CHECK(cudaMemcpy(dev, host, sizeof(float) * n, cudaMemcpyHostToDevice));
}
static void copy_out(float* host, const float* dev, size_t n) {
    CUDA_CHECK(cudaMemcpy(host, dev, sizeof(float) * n, cudaMemcpyDeviceToHost));
}
static void cuda_model_set_params(FlashCuda* m, const float* host) { copy_in(m->params, host, m->n_params); }
static void cuda_model_set_adam(FlashCuda* m, const float* host_m, const float* host_v) {
    copy_in(m->adam_m, host_m, m->n_params);
    copy_in(m->adam_v, host_v, m->n_params);
}
static void cuda_model_get_logits(FlashCuda* m, float* host, size_t n) {
    FLASH_CHECK(m->B > 0 && n <= (size_t)m->B * m->T * m->cfg.vocab_size,
                "cuda_model_get_logits: asked for " << n << " values, the last batch has "
                                                    << (size_t)m->B * m->T * m->cfg.vocab_size,
                "run a forward first, and ask for at most B*T*V values");
    copy_out(host, m->acts.logits, n);
}

// The forward of flash.cpp, op for op.
static double cuda_model_forward(FlashCuda* m, const int* tok, const int* tgt, int B, int T) {
    const FlashConfig& cfg = m->cfg;
    check_batch(cfg, tok, tgt, B, T);
    const int N = B * T, V = cfg.vocab_size;
    if (B != m->B || T != m->T) layout_activations(m, B, T);
    m->tokens.assign(tok, tok + N);
    m->has_targets = tgt != nullptr;
    CUDA_CHECK(cudaMemcpy(m->d_tokens, tok, sizeof(int) * N, cudaMemcpyHostToDevice));
    if (tgt) CUDA_CHECK(cudaMemcpy(m->d_targets, tgt, sizeof(int) * N, cudaMemcpyHostToDevice));

    const int d = cfg.d, e = cfg.e, s = cfg.s, I = cfg.inner(), C = cfg.chunk;
    Acts<float>& acts = m->acts;
    gpu::encoder_forward(acts.layers[0].x, m->d_tokens, m->p.wte, N, d);
    for (int l = 0; l < cfg.n_layers; l++) {
        const LayerParams<float>& lp = m->p.layers[l];
        LayerActs<float>& la = acts.layers[l];
        float* x_next = (l + 1 < cfg.n_layers) ? acts.layers[l + 1].x : acts.x_final;
        const float *u = acts.act, *v = acts.act + e, *z = acts.act + 2 * e;  // one layer's silu(h): Acts::act
        gpu::scalenorm_forward(la.xn, la.rstd, la.x, lp.norm_g, N, d, cfg.eps);
        gpu::matmul_forward(la.h, la.xn, lp.w_in, lp.b_in, N, d, I);
        gpu::silu_forward(acts.act, la.h, (size_t)N * I);
        gpu::offset_scale_forward(la.qq, la.kq, la.ql, la.kl, z, I, lp.gamma, lp.beta, N, s);
        // The four heads are adjacent (N rows each, N a multiple of T): one launch rotates all 4N rows.
        gpu::rope_forward(la.qq, m->rope_cos, m->rope_sin, 4 * N, T, s);
        gpu::local_attention_forward(la.o, la.relu_s, la.qq, la.kq, v, I, lp.rel_bias, B, T, C, s, e, cfg.causal);
        gpu::global_attention_forward(la.o, la.m, la.ql, la.kl, v, I, B, T, C, s, e, cfg.causal);
        gpu::gate_forward(la.gated, u, I, la.o, N, e);
        gpu::matmul_forward(x_next, la.gated, lp.w_out, lp.b_out, N, e, d);
        gpu::residual_forward(x_next, la.x, (size_t)N * d);
    }
    gpu::scalenorm_forward(acts.xn_f, acts.rstd_f, acts.x_final, m->p.norm_f_g, N, d, cfg.eps);
    gpu::logits_forward(acts.logits, acts.xn_f, m->p.wte, N, d, V);
    if (tgt) {
        m->loss = gpu::crossentropy_forward(acts.losses, acts.probs, acts.logits, m->d_targets, N, V);
    } else {
        CUDA_CHECK(cudaDeviceSynchronize());  // surface any kernel error here rather than in a later call
        m->loss = std::numeric_limits<double>::quiet_NaN();
    }
    return m->loss;
}

static void cuda_model_zero_grad(FlashCuda* m) { CUDA_CHECK(cudaMemset(m->grads, 0, sizeof(float) * m->n_params)); }

// The backward of flash.cpp, op for op.
static void cuda_model_backward(FlashCuda* m) {
    FLASH_CHECK(m->B > 0 && m->has_targets, "cuda_model_backward needs a forward with targets first", "");
    const FlashConfig& cfg = m->cfg;
    const int B = m->B, T = m->T;
    const int N = B * T, d = cfg.d, e = cfg.e, s = cfg.s, I = cfg.inner(), C = cfg.chunk, V = cfg.vocab_size;
    GradActs<float>& g = m->dacts;
    const Acts<float>& acts = m->acts;
    // All of grad_act_buf: dres .. dlogits
    CUDA_CHECK(cudaMemset(g.dres, 0, sizeof(float) * (size_t)(g.dlogits + (size_t)N * V - g.dres)));

    gpu::crossentropy_backward(g.dlogits, acts.probs, m->d_targets, N, V);
    gpu::logits_backward(g.dxn, m->dp.wte, g.dlogits, acts.xn_f, m->p.wte, N, d, V);
    gpu::scalenorm_backward(g.dres, m->dp.norm_f_g, g.dxn, acts.x_final, acts.rstd_f, m->p.norm_f_g, N, d);

    for (int l = cfg.n_layers - 1; l >= 0; l--) {
        const LayerParams<float>& lp = m->p.layers[l];
        const LayerParams<float>& dlp = m->dp.layers[l];
        const LayerActs<float>& la = acts.layers[l];
        gpu::silu_forward(acts.act, la.h, (size_t)N * I);  // this layer's act again (Acts::act)
        const float *u = acts.act, *v = acts.act + e, *z = acts.act + 2 * e;
        float *du = g.dact, *dv = g.dact + e, *dz = g.dact + 2 * e;
        // This layer's scratch gradients (dxn .. dgated, contiguous) accumulate from zero; g.dres carries d(x_next)
        // in and d(x) out.
        CUDA_CHECK(cudaMemset(g.dxn, 0, sizeof(float) * (size_t)(g.dlogits - g.dxn)));
        gpu::matmul_backward(g.dgated, dlp.w_out, dlp.b_out, g.dres, la.gated, lp.w_out, N, e, d);
        gpu::gate_backward(du, I, g.d_o, g.dgated, u, I, la.o, N, e);
        gpu::global_attention_backward(g.dql, g.dkl, dv, I, g.d_o, la.m, la.ql, la.kl, v, I, B, T, C, s, e,
                                       cfg.causal);
        gpu::local_attention_backward(g.dqq, g.dkq, dv, I, dlp.rel_bias, g.d_o, la.relu_s, la.qq, la.kq, v, I, B, T, C,
                                      s, e, cfg.causal);
        gpu::rope_backward(g.dqq, m->rope_cos, m->rope_sin, 4 * N, T, s);  // dqq, dkq, dql, dkl are adjacent
        gpu::offset_scale_backward(dz, I, dlp.gamma, dlp.beta, g.dqq, g.dkq, g.dql, g.dkl, z, I, lp.gamma, N, s);
        gpu::silu_backward(g.dh, g.dact, la.h, (size_t)N * I);
        gpu::matmul_backward(g.dxn, dlp.w_in, dlp.b_in, g.dh, la.xn, lp.w_in, N, d, I);
        // residual: dres already holds the direct path; the scalenorm path adds to it.
        gpu::scalenorm_backward(g.dres, dlp.norm_g, g.dxn, la.x, la.rstd, lp.norm_g, N, d);
    }
    gpu::encoder_backward(m->dp.wte, g.dres, m->tokens.data(), N, d);
}

// Σ x², per block in double over a grid-stride slice; the block sums land in part[blockIdx.x].
__global__ void sum_squares_partial_kernel(double* part, const float* x, size_t n) {
    double ss = 0;
    GRID_STRIDE_LOOP(i, n) ss += (double)x[i] * x[i];
    ss = block_sum(ss);
    if (threadIdx.x == 0) part[blockIdx.x] = ss;
}
__global__ void sum_doubles_to_double_kernel(double* out, const double* parts, int n) {
    double sum = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum += parts[i];
    sum = block_sum(sum);
    if (threadIdx.x == 0) out[0] = sum;
}

static double cuda_model_grad_norm(FlashCuda* m) {
    // A fixed grid, so the partition of the sum (and its rounding) is the same every call.
    const int n_blocks = 1024;
    double* part = (double*)scratch(sizeof(double) * (n_blocks + 1));
    sum_squares_partial_kernel<<<n_blocks, kThreads>>>(part, m->grads, m->n_params);
    CUDA_CHECK_LAUNCH("sum_squares_partial_kernel");
    sum_doubles_to_double_kernel<<<1, 1024>>>(part + n_blocks, part, n_blocks);
    CUDA_CHECK_LAUNCH("sum_doubles_to_double_kernel");
    double ss = 0;
    CUDA_CHECK(cudaMemcpy(&ss, part + n_blocks, sizeof(double), cudaMemcpyDeviceToHost));
    return std::sqrt(ss);
}

__global__ void scale_kernel(float* x, size_t n, float factor) {
    GRID_STRIDE_LOOP(i, n) x[i] *= factor;
}
static void cuda_model_scale_grads(FlashCuda* m, double factor) {
    scale_kernel<<<blocks_for(m->n_params), kThreads>>>(m->grads, m->n_params, (float)factor);
    CUDA_CHECK_LAUNCH("scale_kernel");
}

// One AdamW step over n values, in double as on the CPU (HostModel::adamw_update):
//   m = β1 m + (1−β1) g;  v = β2 v + (1−β2) g²;  w −= lr · ((m/bc1) / (sqrt(v/bc2) + eps) + wd · w)
__global__ void adamw_kernel(float* w, const float* grad, float* m1, float* m2, size_t n, double lr, double beta1,
                             double beta2, double eps, double wd, double bc1, double bc2) {
    GRID_STRIDE_LOOP(i, n) {
        const double gi = grad[i];
        const double mi = beta1 * m1[i] + (1 - beta1) * gi;
        const double vi = beta2 * m2[i] + (1 - beta2) * gi * gi;
        m1[i] = (float)mi;
        m2[i] = (float)vi;
        const double update = (mi / bc1) / (sqrt(vi / bc2) + eps) + wd * w[i];
        w[i] = (float)(w[i] - lr * update);
    }
}
static void cuda_model_adamw_update(FlashCuda* m, double lr, const AdamWConfig& opt, int64_t t) {
    FLASH_CHECK(t >= 1, "AdamW step counter must start at 1, got " << t, "");
    const double bc1 = 1.0 - std::pow(opt.beta1, (double)t), bc2 = 1.0 - std::pow(opt.beta2, (double)t);
    // One launch per run of adjacent tensors with the same decay (b_in, gamma, beta, rel_bias go together, ...). A run
    // also covers the alignment gaps between its tensors (flash.cpp, walk_params): zeros, which stay zeros.
    size_t i = 0;
    while (i < m->specs.size()) {
        size_t j = i;
        while (j + 1 < m->specs.size() && m->specs[j + 1].decay == m->specs[i].decay) j++;
        const size_t off = m->specs[i].offset, n = m->specs[j].offset + m->specs[j].count - off;
        const double wd = m->specs[i].decay ? opt.weight_decay : 0.0;
        adamw_kernel<<<blocks_for(n), kThreads>>>(m->params + off, m->grads + off, m->adam_m + off, m->adam_v + off, n,
                                                  lr, opt.beta1, opt.beta2, opt.eps, wd, bc1, bc2);
        CUDA_CHECK_LAUNCH("adamw_kernel");
        i = j + 1;
    }
}

// ====================================================================================================
// The Model interface over the functions above.

FlashCudaModel::FlashCudaModel(const FlashConfig& cfg) : dev_(cuda_model_create(cfg)) {}
FlashCudaModel::~FlashCudaModel() { cuda_model_destroy(dev_); }

nlohmann::json FlashCudaModel::config_json() const { return config_to_json(dev_->cfg); }
std::string FlashCudaModel::shape_mismatch(const nlohmann::json& config) const {
    return config_shape_mismatch(config_from_json(config), dev_->cfg);
}
const std::vector<TensorSpec>& FlashCudaModel::tensor_specs() const { return dev_->specs; }
double FlashCudaModel::forward_flops_per_token() const { return ::forward_flops_per_token(dev_->cfg); }

void FlashCudaModel::init_weights(uint64_t seed, bool strong) {
    std::vector<float> host(dev_->n_params, 0.0f), zeros(dev_->n_params, 0.0f);
    init_flash_weights(view_params(host.data(), dev_->cfg), dev_->cfg, seed, strong);
    cuda_model_set_params(dev_, host.data());
    cuda_model_set_adam(dev_, zeros.data(), zeros.data());
}

double FlashCudaModel::forward(const int* tokens, const int* targets, int B, int T) {
    return cuda_model_forward(dev_, tokens, targets, B, T);
}
void FlashCudaModel::zero_grad() { cuda_model_zero_grad(dev_); }
void FlashCudaModel::backward() { cuda_model_backward(dev_); }
double FlashCudaModel::grad_norm() const { return cuda_model_grad_norm(dev_); }
void FlashCudaModel::scale_grads(double factor) { cuda_model_scale_grads(dev_, factor); }
void FlashCudaModel::adamw_update(double lr, const AdamWConfig& opt, int64_t t) {
    cuda_model_adamw_update(dev_, lr, opt, t);
}

static float* buffer_of(FlashCuda* m, ModelBuffer which) {
    switch (which) {
        case ModelBuffer::params: return m->params;
        case ModelBuffer::grads: return m->grads;
        case ModelBuffer::adam_m: return m->adam_m;
        case ModelBuffer::adam_v: return m->adam_v;
    }
    FLASH_FAIL("unknown model buffer", "this is a bug");
}
void FlashCudaModel::copy_to_host(ModelBuffer which, float* host) const {
    copy_out(host, buffer_of(dev_, which), dev_->n_params);
}
void FlashCudaModel::copy_from_host(ModelBuffer which, const float* host) {
    copy_in(buffer_of(dev_, which), host, dev_->n_params);
}
float* FlashCudaModel::device_buffer(ModelBuffer which) { return ::buffer_of(dev_, which); }
void FlashCudaModel::get_logits(float* host, size_t n) const { cuda_model_get_logits(dev_, host, n); }
