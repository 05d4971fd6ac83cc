// model.cpp: what every model shares (clipping) and the factory that makes one. Read model.h first.
#include "model.h"

#include "formats/json_file.h"  // clip_text

#include <cstdio>

#include "flash.h"
#include "formats/config.h"
#include "transformer.h"
#ifdef FLASH_HAVE_CUDA
#include "flash_cuda.h"
#endif

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
