// flash_cuda.h: FLASH on an NVIDIA GPU (flash.cu), fp32. Host-only API: including this file needs no CUDA headers,
// so train.cpp (compiled by g++) can link build/flash_cuda.o.
//
// Two layers:
//   - the model: FlashCudaModel holds parameters, gradients, AdamW moments and activations on the GPU; every buffer
//     that crosses to the host is the flat param_specs layout of flash.h (the same as FlashModel<float>::params), so
//     a checkpoint saved from either device resumes on the other;
//   - the ops (namespace gpu): every op of flash.h, forward and backward, with the CPU op's signature and meaning,
//     on DEVICE pointers (float only). They exist so test/test_cuda.cu can hold each kernel to its CPU twin.
//
// Every CUDA and cuBLAS call is checked; a failure throws flash_error ("flash.cu:LINE: call failed: error (hint)").
// Everything runs on the legacy default stream, in order, and is deterministic: no atomics in any reduction
// (per-block partials summed in a fixed order, or threads that own whole output elements), and cuBLAS GEMMs, which
// are bit-reproducible run to run on one GPU model and toolkit.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "flash.h"

// ----------------------------------------------------------------------------------------------------
// Device present? false (with the reason in *why, when given) if the driver or a GPU is missing. Never throws.
bool cuda_available(std::string* why = nullptr);

// ----------------------------------------------------------------------------------------------------
// The model on the GPU (FLASH.md §1, §2), the twin of FlashModel<float>: the same Model interface (model.h), so the
// trainer and the debug state hold either without asking which. Parameters, gradients, AdamW moments and activations
// live on the GPU; copy_to_host / copy_from_host move the flat buffers (the param_specs layout of flash.h).

struct FlashCuda;  // the device buffers (flash.cu)

class FlashCudaModel final : public Model<float> {
public:
    explicit FlashCudaModel(const FlashConfig& cfg);  // parameters zero; throws when no GPU is usable
    ~FlashCudaModel() override;
    FlashCudaModel(const FlashCudaModel&) = delete;
    FlashCudaModel& operator=(const FlashCudaModel&) = delete;

    std::string arch() const override { return "flash"; }
    nlohmann::json config_json() const override;
    std::string shape_mismatch(const nlohmann::json& config) const override;
    const std::vector<TensorSpec>& tensor_specs() const override;
    double forward_flops_per_token() const override;
    void init_weights(uint64_t seed, bool strong = false) override;  // drawn on the host, as the CPU model does
    // The loss is summed on the host in double in position order (as the CPU does). A batch of another shape
    // re-allocates the activations.
    double forward(const int* tokens, const int* targets, int B, int T) override;
    void zero_grad() override;
    void backward() override;
    double grad_norm() const override;
    void scale_grads(double factor) override;
    void adamw_update(double lr, const AdamWConfig& opt, int64_t t) override;
    void copy_to_host(ModelBuffer which, float* host) const override;
    void copy_from_host(ModelBuffer which, const float* host) override;
    float* device_buffer(ModelBuffer which) override;

    // The first n values of the last forward's logits, (B*T, V) row-major (for the tests).
    void get_logits(float* host, size_t n) const;

private:
    FlashCuda* dev_ = nullptr;
};

// The precision of every cuBLAS product from now on, process-wide (model.h: MatmulPrecision): fp32 (the default) is
// true fp32; tf32 uses the tensor cores with fp32 sums. Only the products change; needs no GPU to call.
void cuda_set_precision(MatmulPrecision precision);
void cuda_synchronize();   // waits for the GPU; surfaces any asynchronous kernel error as a flash_error

// ----------------------------------------------------------------------------------------------------
// The ops on device pointers. Same argument order, shapes and accumulation (+= into every d... argument of a
// backward) as the CPU ops in flash.h; shapes are documented in flash.cu. Exceptions, each for a reason:
//   - encoder_backward takes the tokens on the HOST: it sorts positions by token there, so that every row of dwte
//     is summed by one thread column in position order (deterministic, no atomics);
//   - the RoPE tables are device arrays of double, (T, s/2), as rope_tables makes them;
//   - crossentropy_forward copies the per-position losses to the host to return their mean; it and
//     crossentropy_backward copy the targets there to count the scored ones (kIgnoreTarget, flash.h).
namespace gpu {
void encoder_forward(float* x, const int* tokens, const float* wte, int N, int d);
void encoder_backward(float* dwte, const float* dx, const int* host_tokens, int N, int d);

void scalenorm_forward(float* xn, float* rstd, const float* x, const float* g, int N, int d, double eps);
void scalenorm_backward(float* dx, float* dg, const float* dxn, const float* x, const float* rstd, const float* g,
                        int N, int d);

void matmul_forward(float* y, const float* x, const float* w, const float* b, int N, int in, int out);
void matmul_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int N, int in,
                     int out);

void silu_forward(float* y, const float* x, size_t n);
void silu_backward(float* dx, const float* dy, const float* x, size_t n);

void offset_scale_forward(float* qq, float* kq, float* ql, float* kl, const float* z, int ldz, const float* gamma,
                          const float* beta, int N, int s);
void offset_scale_backward(float* dz, int lddz, float* dgamma, float* dbeta, const float* dqq, const float* dkq,
                           const float* dql, const float* dkl, const float* z, int ldz, const float* gamma, int N,
                           int s);

void rope_forward(float* x, const double* cos_t, const double* sin_t, int N, int T, int s);
void rope_backward(float* dx, const double* cos_t, const double* sin_t, int N, int T, int s);

void local_attention_forward(float* o, float* relu_s, const float* qq, const float* kq, const float* v, int ldv,
                             const float* rel_bias, int B, int T, int C, int s, int e, bool causal);
void local_attention_backward(float* dqq, float* dkq, float* dv, int lddv, float* drel_bias, const float* d_o,
                              const float* relu_s, const float* qq, const float* kq, const float* v, int ldv, int B,
                              int T, int C, int s, int e, bool causal);

void global_attention_forward(float* o, float* m, const float* ql, const float* kl, const float* v, int ldv, int B,
                              int T, int C, int s, int e, bool causal);
void global_attention_backward(float* dql, float* dkl, float* dv, int lddv, const float* d_o, const float* m,
                               const float* ql, const float* kl, const float* v, int ldv, int B, int T, int C, int s,
                               int e, bool causal);

void gate_forward(float* gated, const float* u, int ldu, const float* o, int N, int e);
void gate_backward(float* du, int lddu, float* d_o, const float* dgated, const float* u, int ldu, const float* o,
                   int N, int e);

void residual_forward(float* y, const float* x, size_t n);

void logits_forward(float* logits, const float* xn, const float* wte, int N, int d, int V);
void logits_backward(float* dxn, float* dwte, const float* dlogits, const float* xn, const float* wte, int N, int d,
                     int V);

double crossentropy_forward(float* losses, float* probs, const float* logits, const int* targets, int N, int V);
void crossentropy_backward(float* dlogits, const float* probs, const int* targets, int N, int V);
}  // namespace gpu
