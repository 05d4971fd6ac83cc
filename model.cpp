// model.cpp: what every model shares (the CPU models' buffers and their verbs, clipping) and the factory that makes
// one. Read model.h first.
#include "model.h"

#include "formats/json_file.h"  // clip_text

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "flash.h"
#include "formats/config.h"
#include "transformer.h"
#ifdef FLASH_HAVE_CUDA
#include "flash_cuda.h"
#endif

// ----------------------------------------------------------------------------------------------------
// HostModel: the CPU models' buffers and the verbs on them

template <typename Real>
void HostModel<Real>::allocate(std::vector<TensorSpec> layout) {
    specs = std::move(layout);
    const size_t n = this->param_count();
    assign_zeros_on_huge_pages(params, n);
    assign_zeros_on_huge_pages(grads, n);
    assign_zeros_on_huge_pages(adam_m, n);
    assign_zeros_on_huge_pages(adam_v, n);
}

template <typename Real>
void HostModel<Real>::zero_moments() {
    std::fill(adam_m.begin(), adam_m.end(), Real(0));
    std::fill(adam_v.begin(), adam_v.end(), Real(0));
}

template <typename Real>
void HostModel<Real>::zero_grad() {
    zero_fill(grads.data(), grads.size());
}

template <typename Real>
double HostModel<Real>::grad_norm() const {
    double ss = 0;
    for (Real gv : grads) ss += (double)gv * gv;
    return std::sqrt(ss);
}

template <typename Real>
void HostModel<Real>::scale_grads(double factor) {
    const Real f = (Real)factor;
    for (Real& g : grads) g *= f;
}

template <typename Real>
void HostModel<Real>::adamw_update(double lr, const AdamWConfig& opt, int64_t t) {
    ::adamw_update(params.data(), grads.data(), adam_m.data(), adam_v.data(), specs, lr, opt, t);
}

template <typename Real>
std::vector<Real>& HostModel<Real>::buffer(ModelBuffer which) {
    switch (which) {
        case ModelBuffer::params: return params;
        case ModelBuffer::grads: return grads;
        case ModelBuffer::adam_m: return adam_m;
        case ModelBuffer::adam_v: return adam_v;
    }
    FLASH_FAIL("unknown model buffer", "this is a bug");
}

template <typename Real>
void HostModel<Real>::copy_to_host(ModelBuffer which, Real* host) const {
    const std::vector<Real>& b = const_cast<HostModel<Real>*>(this)->buffer(which);
    std::copy(b.begin(), b.end(), host);
}

template <typename Real>
void HostModel<Real>::copy_from_host(ModelBuffer which, const Real* host) {
    std::vector<Real>& b = buffer(which);
    std::copy(host, host + b.size(), b.begin());
}

template struct HostModel<float>;
template struct HostModel<double>;

// ----------------------------------------------------------------------------------------------------
// Clipping

template <typename Real>
double clip_grad_norm(Model<Real>& m, double max_norm) {
    const double norm = m.grad_norm();
    if (max_norm > 0 && norm > max_norm) m.scale_grads(max_norm / norm);
    return norm;
}
template double clip_grad_norm(Model<float>&, double);
template double clip_grad_norm(Model<double>&, double);

Device choose_device(const std::string& name) {
    FLASH_CHECK(name == "cpu" || name == "cuda" || name == "auto", "--device must be cpu, cuda or auto, got '" << name << "'",
                "");
    if (name == "cpu") return Device::cpu;
#ifdef FLASH_HAVE_CUDA
    std::string why;
    const bool ok = cuda_available(&why);
    FLASH_CHECK(ok || name == "auto", "--device cuda: no usable GPU (" << why << ")", "use --device cpu or auto");
    if (!ok) std::printf("--device auto: no usable GPU (%s); training on the CPU\n", why.c_str());
    return ok ? Device::cuda : Device::cpu;
#else
    FLASH_CHECK(name == "auto", "--device cuda: this build has no CUDA support (nvcc was not found by make)",
                "install the CUDA Toolkit and rebuild, or use --device cpu");
    return Device::cpu;
#endif
}

MatmulPrecision matmul_precision(const std::string& name, Device device) {
    FLASH_CHECK(name == "fp32" || name == "tf32", "--precision must be fp32 or tf32, got '" << clip_text(name) << "'",
                "");
    FLASH_CHECK(name == "fp32" || device == Device::cuda,
                "--precision " << name << " is for the GPU's matrix products; the CPU computes in fp32",
                "use --device cuda, or --precision fp32 on the CPU");
    return name == "tf32" ? MatmulPrecision::tf32 : MatmulPrecision::fp32;
}

void set_matmul_precision(MatmulPrecision precision) {
#ifdef FLASH_HAVE_CUDA
    cuda_set_precision(precision);
#else
    FLASH_CHECK(precision == MatmulPrecision::fp32, "tf32 products need the GPU, and this build has no CUDA",
                "build where nvcc exists, or use --precision fp32");
#endif
}

std::string model_arch(const nlohmann::json& config) {
    if (!config.is_object() || !config.contains("arch")) return "flash";
    FLASH_CHECK(config["arch"].is_string(), "model config field 'arch' must be a string, got " << config["arch"].dump(),
                "write \"arch\": \"flash\"");
    return config["arch"].get<std::string>();
}

template <typename Real>
std::unique_ptr<Model<Real>> make_model(const nlohmann::json& config, Device device) {
    const std::string arch = model_arch(config);
    if (arch == "flash") {
        const FlashConfig cfg = config_from_json(config);
        if (device == Device::cpu) return std::make_unique<FlashModel<Real>>(cfg);
#ifdef FLASH_HAVE_CUDA
        if constexpr (std::is_same_v<Real, float>) return std::make_unique<FlashCudaModel>(cfg);
        FLASH_FAIL("the CUDA model computes in float only", "use the CPU for double precision");
#else
        FLASH_FAIL("this build has no CUDA support", "build where nvcc exists, or use --device cpu");
#endif
    }
    if (is_transformer_arch(arch)) {
        const TransformerConfig cfg = transformer_config_from_json(config);
        FLASH_CHECK(device == Device::cpu, "arch " << clip_text(arch) << " has no CUDA model yet (only FLASH runs on the GPU)",
                    "use --device cpu for " << clip_text(arch));
        return std::make_unique<TransformerModel<Real>>(cfg);
    }
    FLASH_FAIL("unknown model architecture '" << clip_text(arch) << "'",
               "\"arch\" is one of flash (the default), transformer++, performer, combiner");
}
template std::unique_ptr<Model<float>> make_model(const nlohmann::json&, Device);
template std::unique_ptr<Model<double>> make_model(const nlohmann::json&, Device);
