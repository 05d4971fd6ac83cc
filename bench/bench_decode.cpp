// bench_decode.cpp: time per generated token at positions 1K .. 64K, cached decoder vs recomputing the prefix.
//
// Small config (FLASH.md §5), random weights (paper init), random tokens, float. For each position P:
//   recompute  FlashModel::forward over the first P+1 tokens rounded UP to a multiple of C (the full forward needs
//              T = G·C), i.e. what generating the token after position P costs without a cache; the best of --reps
//              runs, but one run only from 16K on (a 64K forward takes tens of seconds on 2 cores), and that one
//              includes laying out (allocating and zeroing) its activation buffers, ~15 GB at 64K;
//   prefill    decode_prefill of P tokens (the chunked forward, then the cache is built), per prompt token;
//   cached     --steps decode_step calls from position P on (they cross chunk boundaries), mean per token;
// plus the memory each holds: the recompute's activation buffers vs the decoder's cache.
// The first cached step's logits are compared with the recompute's logits at position P (they must agree).
//
//   build/bench_decode [--positions 1024,4096,16384,65536] [--steps 256] [--reps 3]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include <omp.h>

#include "decode.h"
#include "options.h"

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::vector<int64_t> parse_list(const std::string& text) {
    std::vector<int64_t> out;
    std::stringstream ss(text);
    std::string item;
    while (std::getline(ss, item, ',')) {
        const long long v = OptionTable::parse_integer("positions", item, 1, 1ll << 40);
        out.push_back(v);
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        std::vector<int64_t> positions = {1024, 4096, 16384, 65536};
        int steps = 256, reps = 3;
        std::string positions_text = "1024,4096,16384,65536";
        OptionTable options;
        options.add("positions", positions_text, "positions to time, comma-separated");
        options.add("steps", steps, "timed decode steps per position", 1, 1 << 20);
        options.add("reps", reps, "repetitions (the best is reported)", 1, 1000);
        options.parse(argc, argv);
        positions = parse_list(positions_text);
        FLASH_CHECK(steps > 0 && reps > 0, "--steps and --reps must be positive", "");

        const FlashConfig cfg = config_preset("small");
        const int C = cfg.chunk, V = cfg.vocab_size;
        FlashModel<float> model(cfg);
        model.init_weights(1);
        int64_t max_pos = 0;
        for (int64_t p : positions) max_pos = std::max(max_pos, p);
        std::vector<int> tokens((size_t)(max_pos + steps + C));
        Rng rng(2);
        for (int& t : tokens) t = rng.below(V);

        std::printf("bench_decode: small config (V=%d d=%d e=%d s=%d L=%d C=%d), float, random weights, %d threads\n",
                    V, cfg.d, cfg.e, cfg.s, cfg.n_layers, C, omp_get_max_threads());
        std::printf("recompute = full forward over position+1 tokens rounded up to a multiple of C=%d "
                    "(best of %d runs below 16K; one run from 16K on, including its buffers' allocation)\n", C, reps);
        std::printf("%8s | %12s %12s | %12s | %12s %10s | %9s\n", "position", "recompute", "recompute", "prefill",
                    "cached", "cache", "max rel");
        std::printf("%8s | %12s %12s | %12s | %12s %10s | %9s\n", "", "ms/token", "act memory", "us/prompt-tok",
                    "ms/token", "memory", "diff");
        for (int64_t P : positions) {
            // Recompute: the logits after position P from scratch.
            const int64_t T_recompute = (P + 1 + C - 1) / C * C;
            const int n_reps = P >= 16384 ? 1 : reps;
            double best = 1e30;
            for (int r = 0; r < n_reps; r++) {
                const auto t0 = Clock::now();
                model.forward(tokens.data(), nullptr, 1, (int)T_recompute);
                best = std::min(best, seconds_since(t0));
            }
            const double act_mb = (model.act_buf.size() + model.grad_act_buf.size()) * sizeof(float) / 1e6;
            std::vector<float> want(model.acts.logits + (size_t)P * V, model.acts.logits + (size_t)(P + 1) * V);
            model.release_activations();

            // Cached: prefill P tokens, then time `steps` single-token steps.
            DecodeState<float> state;
            decode_init(state, model);
            auto t0 = Clock::now();
            decode_prefill(model, state, tokens.data(), P, (float*)nullptr);
            const double prefill_s = seconds_since(t0);
            model.release_activations();
            std::vector<float> logits(V);
            decode_step(model, state, tokens[(size_t)P], logits.data());  // position P: compare with the recompute
            double err = 0, scale = 1e-30;
            for (int k = 0; k < V; k++) {
                err = std::max(err, (double)std::fabs(logits[k] - want[k]));
                scale = std::max(scale, (double)std::fabs(want[k]));
            }
            t0 = Clock::now();
            for (int i = 1; i <= steps; i++) decode_step(model, state, tokens[(size_t)(P + i)], logits.data());
            const double cached_s = seconds_since(t0) / steps;
            std::printf("%8lld | %12.2f %9.0f MB | %12.1f | %12.3f %7.2f MB | %9.1e\n", (long long)P, best * 1e3, act_mb,
                        prefill_s / P * 1e6, cached_s * 1e3, state.cache_bytes() / 1e6, err / scale);
            std::fflush(stdout);
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_decode: error: %s\n", e.what());
        return 1;
    }
}
