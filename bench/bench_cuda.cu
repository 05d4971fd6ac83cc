// bench_cuda.cu: training-step throughput of FLASH against FLASH-Quad (C = T) on the GPU, base config (FLASH.md §5)
// at T = 1024, 2048, 4096, 8192, with the same number of tokens per step at every length (B = tokens / T).
// Prints tokens/s, model FLOP/s (FLASH.md §4: a training step counted as 3× the forward) and the share of the GPU's
// peak. A step is forward + backward + gradient norm + AdamW, as in training.
//
//   build/bench_cuda [--precision fp32|tf32] [--steps N] [--tokens N] [--lengths 1024,2048,...] [--peak TFLOPS]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "flash.h"
#include "flash_cuda.h"
#include "options.h"

static void usage() {
    std::printf(
        "usage: build/bench_cuda [options]\n"
        "  --precision P     the matrix products: fp32 (default) or tf32 tensor cores (model.h)\n"
        "  --steps N         timed steps per configuration (default 5, after 2 warm-up steps)\n"
        "  --tokens N        tokens per step, B = N / T (default 8192)\n"
        "  --lengths LIST    sequence lengths, comma-separated (default 1024,2048,4096,8192)\n"
        "  --peak TFLOPS     the GPU's peak for the share column (default: H200 dense, 67 fp32 or 495 TF32)\n");
}

int main(int argc, char** argv) {
    try {
        std::string precision_name = "fp32";
        int steps = 5, tokens_per_step = 8192;
        double peak_override = 0;
        std::vector<int> lengths = {1024, 2048, 4096, 8192};
        for (int i = 1; i < argc; i++)
            if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
                usage();
                return 0;
            }
        std::string lengths_text = "1024,2048,4096,8192";
        OptionTable options;
        options.add("precision", precision_name, "the matrix products: fp32 or tf32");
        options.add("steps", steps, "timed steps per configuration", 1, 1 << 20);
        options.add("tokens", tokens_per_step, "tokens per step", 1, 1 << 30);
        options.add("lengths", lengths_text, "sequence lengths, comma-separated");
        options.add("peak", peak_override, "the GPU's peak in TFLOP/s", 0, 1e9);
        options.parse(argc, argv);
        lengths.clear();
        std::stringstream ss(lengths_text);
        for (std::string item; std::getline(ss, item, ',');)
            lengths.push_back((int)OptionTable::parse_integer("lengths", item, 1, 1 << 24));
        FLASH_CHECK(steps > 0 && tokens_per_step > 0, "--steps and --tokens must be positive", "");
        std::string why;
        if (!cuda_available(&why)) {
            std::fprintf(stderr, "bench_cuda: no GPU (%s); nothing to measure\n", why.c_str());
            return 1;
        }
        const MatmulPrecision precision = matmul_precision(precision_name, Device::cuda);
        set_matmul_precision(precision);
        const bool fp32 = precision == MatmulPrecision::fp32;
        // The H200's dense peaks from NVIDIA's datasheet, for the products' precision.
        const double datasheet_peak = fp32 ? 67e12 : 495e12;
        const double peak = peak_override > 0 ? peak_override * 1e12 : datasheet_peak;
        std::printf("FLASH vs FLASH-Quad, base config (d=768, e=1536, s=128, L=24, V=32768), %d tokens per step\n",
                    tokens_per_step);
        std::printf("matrix products: %s; peak used for the share: %.0f TFLOP/s (%s)\n",
                    fp32 ? "true fp32" : "tf32 tensor cores, fp32 sums", peak / 1e12,
                    peak_override > 0 ? "--peak" : fp32 ? "H200 dense fp32, datasheet" : "H200 dense tf32, datasheet");
        std::printf("model FLOPs: FLASH.md section 4, training step = 3x forward\n");
        if (!fp32)
            std::printf("note: tf32 speeds up the cuBLAS products only; the local-attention and elementwise kernels\n"
                        "stay fp32, so the share of the tensor-core peak understates them (FLASH-Quad most of all)\n");
        std::printf("\n");
        std::printf("%-11s %6s %5s %5s %10s %12s %10s %8s %8s\n", "model", "T", "C", "B", "ms/step", "tokens/s",
                    "TFLOP/s", "of peak", "loss");

        for (int T : lengths) {
            for (bool quad : {false, true}) {
                FlashConfig cfg = config_preset("base");
                cfg.seq_len = T;
                cfg.chunk = quad ? T : 256;
                const char* name = quad ? "FLASH-Quad" : "FLASH";
                const int B = std::max(1, tokens_per_step / T);
                try {
                    config_validate(cfg);
                    FlashCudaModel m(cfg);
                    // Weights: small uniform noise with unit gains. The speed does not depend on the values, and
                    // this is much cheaper than the paper's init for 110M parameters on the host.
                    std::vector<float> params(m.param_count());
                    Rng rng(1);
                    for (float& p : params) p = (float)(0.04 * (rng.uniform() - 0.5));
                    for (const TensorSpec& spec : param_specs(cfg))
                        if (spec.name.find("norm") != std::string::npos) params[spec.offset] = 1.0f;
                    m.copy_from_host(ModelBuffer::params, params.data());
                    std::vector<int> tokens((size_t)B * T), targets((size_t)B * T);
                    for (int& t : tokens) t = rng.below(cfg.vocab_size);
                    for (int& t : targets) t = rng.below(cfg.vocab_size);
                    AdamWConfig opt;
                    double loss = 0;
                    auto step = [&](int64_t t) {
                        loss = m.forward(tokens.data(), targets.data(), B, T);
                        m.zero_grad();
                        m.backward();
                        clip_grad_norm(m, 1.0);
                        m.adamw_update(1e-4, opt, t);
                    };
                    step(1);
                    step(2);
                    cuda_synchronize();
                    const auto t0 = std::chrono::steady_clock::now();
                    for (int k = 0; k < steps; k++) step(3 + k);
                    cuda_synchronize();
                    const double sec =
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / steps;
                    const double tok_s = (double)B * T / sec;
                    const double flops = 3 * forward_flops_per_token(cfg) * tok_s;
                    std::printf("%-11s %6d %5d %5d %10.1f %12.0f %10.2f %7.1f%% %8.4f\n", name, T, cfg.chunk, B,
                                sec * 1e3, tok_s, flops / 1e12, 100 * flops / peak, loss);
                } catch (const flash_error& ex) {
                    std::printf("%-11s %6d %5d %5d  skipped: %s\n", name, T, cfg.chunk, B, ex.what());
                }
                std::fflush(stdout);
            }
        }
        return 0;
    } catch (const std::exception& ex) {
        std::fprintf(stderr, "bench_cuda: %s\n", ex.what());
        return 1;
    }
}
