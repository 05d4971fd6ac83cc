// model.h: the one model interface. FLASH on the CPU (flash.h: FlashModel) and on the GPU (flash_cuda.h:
// FlashCudaModel) implement it, and so do the baselines (transformer.h: TransformerModel). The trainer, ./sample
// and the debug state hold a Model and never ask which device or architecture it is. The CPU models share their
// buffers and the verbs on them (HostModel, below).
//
// Every architecture keeps its parameters, gradients and AdamW moments as flat buffers in the order of its
// tensor_specs(); the host copies of those buffers are what checkpoints hold (formats/checkpoint.h), so a checkpoint
// made on one device resumes on the other.
//
// One training step, whatever the model:
//   loss = m.forward(tokens, targets, B, T);  m.zero_grad();  m.backward();
//   norm = clip_grad_norm(m, max_norm);       m.adamw_update(lr, opt, step);
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ops.h"  // TensorSpec, AdamWConfig

enum class ModelBuffer { params, grads, adam_m, adam_v };

template <typename Real>
struct Model {
    virtual ~Model() = default;

    // What it is.
    virtual std::string arch() const = 0;                   // "flash", "transformer++", "performer", "combiner"
    virtual nlohmann::json config_json() const = 0;         // its model config, as a checkpoint stores it
    // "" when config (e.g. read from a checkpoint) describes a model of this one's shape, else what differs, like
    // "d: 16 vs 32" (the config's value first). Throws flash_error for a config that is not valid for this arch.
    virtual std::string shape_mismatch(const nlohmann::json& config) const = 0;
    // Parameter layout, in checkpoint order; a tensor that is not trained (TensorSpec::trained, Performer's Ω) is in
    // params and every weights file, and has zeros in grads and the moments, which checkpoints leave out. The flat
    // buffers are param_count() long: FLASH aligns each tensor's start, and the gaps between tensors hold zeros.
    virtual const std::vector<TensorSpec>& tensor_specs() const = 0;
    size_t param_count() const {
        const std::vector<TensorSpec>& specs = tensor_specs();
        return specs.empty() ? 0 : specs.back().offset + specs.back().count;
    }
    virtual double forward_flops_per_token() const = 0;     // the forward; a training step is about 3×

    // Training. tokens, targets: host arrays of B*T ids; targets may be null (then only the logits are computed and
    // the loss is NaN). forward returns the mean cross-entropy loss.
    virtual void init_weights(uint64_t seed, bool strong = false) = 0;   // also zeroes the AdamW moments
    virtual double forward(const int* tokens, const int* targets, int B, int T) = 0;
    virtual void zero_grad() = 0;
    virtual void backward() = 0;                  // after a forward with targets; accumulates (+=) into the gradients
    virtual double grad_norm() const = 0;         // global L2 norm of the gradients, in double, deterministic
    virtual void scale_grads(double factor) = 0;  // grads *= (float or double) factor
    // One AdamW step, t counting from 1, decay only where the tensor's spec says so (ops.h: adamw_update).
    virtual void adamw_update(double lr, const AdamWConfig& opt, int64_t t) = 0;

    // Host copies of the flat buffers (param_count() values each, tensor_specs() layout): how load and save work.
    virtual void copy_to_host(ModelBuffer which, Real* host) const = 0;
    virtual void copy_from_host(ModelBuffer which, const Real* host) = 0;
    // The buffer itself where it lives on a GPU (for NCCL's in-place all-reduce, dist.h); nullptr on the CPU.
    virtual Real* device_buffer(ModelBuffer which) { return nullptr; }
};

// What every CPU model shares: the spec table, the four flat host buffers in its layout, and the verbs that touch
// only those buffers, written once here. FlashModel and TransformerModel derive from it and add their config, the
// named views of params and grads, and the forward and backward passes; the GPU model keeps device buffers instead.
template <typename Real>
struct HostModel : Model<Real> {
    std::vector<TensorSpec> specs;                    // the parameter layout, in checkpoint order
    std::vector<Real> params, grads, adam_m, adam_v;  // flat, param_count() values each, in the layout of specs

    HostModel(const HostModel&) = delete;  // the derived models' views point into these buffers
    HostModel& operator=(const HostModel&) = delete;

    const std::vector<TensorSpec>& tensor_specs() const override { return specs; }
    void zero_grad() override;
    double grad_norm() const override;
    void scale_grads(double factor) override;
    void adamw_update(double lr, const AdamWConfig& opt, int64_t t) override;  // ops.h's, trained tensors only
    void copy_to_host(ModelBuffer which, Real* host) const override;
    void copy_from_host(ModelBuffer which, const Real* host) override;

protected:
    HostModel() = default;
    // Takes the layout and allocates the four buffers, zeroed. The derived constructor calls it once its config is
    // validated and its size checked, then points its views into params and grads.
    void allocate(std::vector<TensorSpec> layout);
    void zero_moments();  // adam_m = adam_v = 0: the optimizer starts afresh (init_weights)

private:
    std::vector<Real>& buffer(ModelBuffer which);
};

// Gradient clipping, the one place it happens: scales the gradients so that their global norm is at most max_norm
// (0: off). Returns the norm before clipping.
template <typename Real>
double clip_grad_norm(Model<Real>& m, double max_norm);

// ----------------------------------------------------------------------------------------------------
// Making a model: the one place an architecture and a device are chosen.

enum class Device { cpu, cuda };
// "cpu", "cuda" or "auto" (the GPU when one is usable, with a note when it is not) -> the device to use. Throws when
// cuda is asked for and this build or machine has none, saying why.
Device choose_device(const std::string& name);
// The GPU's matrix products (every cuBLAS call of flash.cu): fp32, true fp32 (the default), or tf32, tensor cores that
// round the inputs to TF32 (10-bit mantissa) and keep fp32 sums and outputs. Every other kernel, the parameters and
// the AdamW moments stay fp32 either way (docs/FLASH.md §8). The CPU computes in fp32 (or double) only.
// (No bf16: cuBLAS 13.0 on the H200 answered a bf16 compute type for fp32 operands with the same TF32 kernels, to the
// bit; true bf16 products need bf16 copies of the operands, which this code does not make yet.)
enum class MatmulPrecision { fp32, tf32 };
// "fp32" or "tf32" -> the precision; throws for another name, or for tf32 on the CPU.
MatmulPrecision matmul_precision(const std::string& name, Device device);
// Process-wide, for the products that follow; a no-op for fp32 in a build without CUDA.
void set_matmul_precision(MatmulPrecision precision);
// The architecture a model config names: its "arch" key, "flash" when absent.
std::string model_arch(const nlohmann::json& config);
// A model of the config's architecture on the device, parameters zero (call init_weights or load a checkpoint).
// New architectures add their branch in model.cpp. Double precision exists on the CPU only (gradient checks).
template <typename Real>
std::unique_ptr<Model<Real>> make_model(const nlohmann::json& config, Device device = Device::cpu);
