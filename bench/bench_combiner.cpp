// bench_combiner.cpp: Combiner-Fixed attention (BASELINES.md §3) alone, forward and backward, against T at a fixed
// number of tokens per call, in float. Prints the time, the model FLOPs per token of combiner_attention_flops_per_token
// (4·d·(c + n + 1)) and the rate they run at; softmax attention's 4·d·T is shown for scale.
//   build/bench_combiner [block] [d] [heads]        defaults: 128 256 4 (the small width, h = 64)
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <omp.h>

#include "bench/bench_util.h"
#include "combiner.h"
#include "flash.h"

int main(int argc, char** argv) {
    try {
        const int c = argc > 1 ? std::atoi(argv[1]) : 128, d = argc > 2 ? std::atoi(argv[2]) : 256;
        const int H = argc > 3 ? std::atoi(argv[3]) : 4, tokens = 8192;
        FLASH_CHECK(H > 0 && d % H == 0, "heads=" << H << " does not divide d=" << d, "pick heads dividing d");
        const int h = d / H;
        std::printf("Combiner-Fixed attention, causal, float, block %d, d %d, %d heads of %d, %d tokens per call, "
                    "%d threads\n", c, d, H, h, tokens, omp_get_max_threads());
        std::printf("%6s %4s %10s %10s %14s %14s %12s\n", "T", "B", "fwd ms", "bwd ms", "MFLOP/token", "softmax MFLOP",
                    "fwd GFLOP/s");
        for (int T = c; T <= tokens; T *= 2) {
            const int B = tokens / T, N = B * T;
            Rng rng(1);
            std::vector<float> qkv((size_t)N * 3 * d), dqkv(qkv.size(), 0.0f), o((size_t)N * d), d_o((size_t)N * d);
            for (float& x : qkv) x = (float)rng.normal();
            for (float& x : d_o) x = (float)rng.normal();
            std::vector<float> saved_buf(combiner_saved_count(B, T, H, h, c));
            const CombinerSaved<float> sv = view_combiner_saved(saved_buf.data(), B, T, H, h, c);
            const float *q = qkv.data(), *k = q + d, *v = q + 2 * d;
            const double fwd = seconds([&] { combiner_attention_forward(o.data(), sv, q, k, v, 3 * d, B, T, H, h, c, true); });
            const double bwd = seconds([&] {
                combiner_attention_backward(dqkv.data(), dqkv.data() + d, dqkv.data() + 2 * d, 3 * d, d_o.data(), sv, q,
                                            k, v, 3 * d, B, T, H, h, c, true);
            });
            const double flops = combiner_attention_flops_per_token(d, T, c);
            std::printf("%6d %4d %10.2f %10.2f %14.3f %14.3f %12.1f\n", T, B, 1e3 * fwd, 1e3 * bwd, flops / 1e6,
                        4.0 * d * T / 1e6, flops * N / fwd / 1e9);
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
