// bench_decode.cpp: time per generated token at positions 1K .. 64K, cached decoder vs recomputing the prefix.
//
// Small config (FLASH.md §5), random weights (paper init), random tokens, float. For each position P:
//   recompute  FlashModel::forward over the first P+1 tokens rounded UP to a multiple of C (the full forward needs
//              T = G·C), i.e. what generating the token after position P costs without a cache; the best of --reps
//              runs, but one run only from 16K on (a 64K forward takes tens of seconds on 2 cores), and that one
//              includes laying out (allocating and zeroing) its activation buffers, ~15 GB at 64K;
//   prefill    decode_prefill of P tokens (the chunked forward, then the cache is built), per prompt token;
//   cached     --steps decode_step calls from position P on (they cross chunk boundaries), mean per token, the best
//              of --reps such runs;
// plus the memory each holds: the recompute's activation buffers vs the decoder's cache.
// The first cached step's logits are compared with the recompute's logits at position P (they must agree).
//
// The floor of a cached step on a CPU is reading every weight once per token (the caches are small): the benchmark
// measures the memory bandwidth one thread reaches in the same run (the decoder runs on one thread, decode.h) and
// prints each cached step against weights / bandwidth. Batched decoding (decode.h: DecodeBatch) reads the weights
// once per step for n sequences: tokens/s for --batch-sizes sequences at once, caches filled directly.
//
// Then FLASH against the baselines (BASELINES.md §1-§3; section "FLASH against the baselines" below): ms per cached
// step at each position for FLASH, Transformer++, Performer and the Combiner, small presets, each decoder's cache
// filled directly as if P tokens had been decoded (see there).
//
//   build/bench_decode [--positions 1024,4096,16384,65536] [--steps 256] [--reps 3] [--batch-sizes 1,8,32]
//                      [--baselines-only]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include <omp.h>

#include "decode.h"
#include "decode_baselines.h"
#include "options.h"

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::vector<int64_t> parse_list(const char* option, const std::string& text) {
    std::vector<int64_t> out;
    std::stringstream ss(text);
    std::string item;
    while (std::getline(ss, item, ',')) {
        const long long v = OptionTable::parse_integer(option, item, 1, 1ll << 40);
        out.push_back(v);
    }
    return out;
}

// The memory bandwidth one thread reaches, in bytes/s: the best of 5 sums over a buffer of `bytes` (make it far
// larger than the caches). The sum is printed by the caller's check, so the reads cannot be optimised away.
double measure_read_bandwidth(size_t bytes, float* checksum) {
    std::vector<float> buf(bytes / sizeof(float), 1.0f);
    double best = 0;
    float total = 0;
    for (int rep = 0; rep < 5; rep++) {
        const auto t0 = Clock::now();
        float acc = 0;
#pragma omp simd reduction(+ : acc)
        for (size_t i = 0; i < buf.size(); i++) acc += buf[i];
        best = std::max(best, (double)bytes / seconds_since(t0));
        total += acc;
    }
    *checksum = total;
    return best;
}

}  // namespace

// =================================================================================================================
// FLASH against the baselines: the time of one cached step at each position (issues 12, 13).
//
// A step's time depends on the sizes of the caches, never on their values, so instead of a prefill (a Transformer++
// forward over 64K tokens holds O(T²) scores) each cache is filled directly, as if P tokens had been decoded, with
// values of plausible size from a small random pattern: FLASH's M and chunk rows, Transformer++'s rotated k and v rows,
// Performer's sums (positive) and key maxima, the Combiner's span summaries and current-span rows. Then --steps
// steps from position P (they cross chunk and span boundaries), mean per token, one thread each (decode.h).
// Memory: one decoder at a time, freed before the next; the largest is the Transformer++ KV cache at 64K,
// 2·L·d·(P + steps)·4 bytes = 0.54 GB for the small preset (FLASH's cache 5 MB, Performer's 1 MB, the Combiner's
// 2 MB), far below the FLASH recompute above (~15 GB at 64K, freed before this section). Whole program: < 16 GB.
namespace baselines {

// Values from a fixed random pattern in [lo, hi): cheap for hundreds of millions of entries.
template <typename Vec>
void fill_pattern(Vec& x, double lo, double hi, Rng& rng) {
    std::vector<double> pattern(4093);
    for (double& p : pattern) p = lo + (hi - lo) * rng.uniform();
    for (size_t i = 0; i < x.size(); i++) x[i] = (typename Vec::value_type)pattern[i % pattern.size()];
}

void fill_flash(DecodeState<float>& st, int64_t P, Rng& rng) {
    for (DecodeLayerCache<float>& lc : st.layers)
        for (std::vector<float>* buf : {&lc.m, &lc.kq, &lc.v, &lc.kl}) fill_pattern(*buf, -0.5, 0.5, rng);
    st.pos = P;
}

// room: the positions the timed steps will add (the KV cache is reserved for them, so no step reallocates it).
void fill_baseline(BaselineDecodeState<float>& st, int64_t P, int64_t room, Rng& rng) {
    const int d = st.cfg.d;
    for (BaselineLayerCache<float>& lc : st.layers) {
        switch (st.attention.kind) {
            case BaselineAttention::softmax:
                for (std::vector<float>* buf : {&lc.k, &lc.v}) {
                    buf->reserve((size_t)(P + room) * d);
                    buf->resize((size_t)P * d);
                    fill_pattern(*buf, -1.0, 1.0, rng);
                }
                break;
            case BaselineAttention::favor:
                fill_pattern(lc.sums, 0.01, 1.0, rng);
                std::fill(lc.key_max.begin(), lc.key_max.end(), 0.0f);
                break;
            case BaselineAttention::combiner: {
                CombinerCache<float>& cc = lc.combiner[0];
                cc.pos = P;
                for (std::vector<float>* buf : {&cc.k_hat, &cc.v_hat}) {
                    buf->resize((size_t)(P / cc.c) * d);
                    fill_pattern(*buf, -1.0, 1.0, rng);
                }
                for (std::vector<float>* buf : {&cc.q, &cc.k, &cc.v}) fill_pattern(*buf, -1.0, 1.0, rng);
                break;
            }
        }
    }
    st.pos = P;
}

struct StepTiming {
    double ms_per_token, cache_mb;
};

// The mean time of `steps` decode steps from the filled state, and the cache size at the end.
template <typename ModelT, typename StateT>
StepTiming time_steps(const ModelT& model, StateT& state, const std::vector<int>& tokens, int steps) {
    std::vector<float> logits(model.cfg.vocab_size);
    const auto t0 = Clock::now();
    for (int i = 0; i < steps; i++) decode_step(model, state, tokens[(size_t)i], logits.data());
    return {seconds_since(t0) / steps * 1e3, state.cache_bytes() / 1e6};
}

int run(const std::vector<int64_t>& positions, int steps) {
    const FlashConfig flash_cfg = config_preset("small");
    FlashModel<float> flash(flash_cfg);
    flash.init_weights(1);
    TransformerModel<float> tpp(transformer_preset("small", "transformer++"));
    TransformerModel<float> performer(transformer_preset("small", "performer"));
    tpp.init_weights(1);
    performer.init_weights(1);
    // The Combiner is Transformer++'s weights with Combiner-Fixed attention (BASELINES.md §3), block 128.
    const BaselineAttention combiner{BaselineAttention::combiner, 128};
    std::vector<int> tokens(steps);
    Rng rng(3);
    for (int& t : tokens) t = rng.below(tpp.cfg.vocab_size);

    std::printf("\nFLASH against the baselines: one cached step at position P, small presets (FLASH L=%d C=%d; "
                "Transformer++/Performer/Combiner L=%d H=%d f=%d, m=%d, block=%d), float, 1 thread, caches filled "
                "directly, mean of %d steps\n",
                flash_cfg.n_layers, flash_cfg.chunk, tpp.cfg.n_layers, tpp.cfg.n_heads, tpp.cfg.ffn,
                performer.cfg.features, combiner.block, steps);
    std::printf("%8s | %10s %9s | %13s %9s | %10s %9s | %10s %9s\n", "position", "FLASH", "cache", "Transformer++",
                "cache", "Performer", "cache", "Combiner", "cache");
    std::printf("%8s | %10s %9s | %13s %9s | %10s %9s | %10s %9s\n", "", "ms/token", "MB", "ms/token", "MB",
                "ms/token", "MB", "ms/token", "MB");
    for (int64_t P : positions) {
        StepTiming f, t, p, c;
        {
            DecodeState<float> st;
            decode_init(st, flash);
            fill_flash(st, P, rng);
            f = time_steps(flash, st, tokens, steps);
        }
        {
            BaselineDecodeState<float> st;
            decode_init(st, tpp);
            fill_baseline(st, P, steps, rng);
            t = time_steps(tpp, st, tokens, steps);
        }  // the KV cache is freed here, before the next decoder
        {
            BaselineDecodeState<float> st;
            decode_init(st, performer);
            fill_baseline(st, P, steps, rng);
            p = time_steps(performer, st, tokens, steps);
        }
        {
            BaselineDecodeState<float> st;
            decode_init(st, tpp, combiner);
            fill_baseline(st, P, steps, rng);
            c = time_steps(tpp, st, tokens, steps);
        }
        std::printf("%8lld | %10.3f %9.2f | %13.3f %9.2f | %10.3f %9.2f | %10.3f %9.2f\n", (long long)P,
                    f.ms_per_token, f.cache_mb, t.ms_per_token, t.cache_mb, p.ms_per_token, p.cache_mb, c.ms_per_token,
                    c.cache_mb);
        std::fflush(stdout);
    }
    return 0;
}

}  // namespace baselines

// =================================================================================================================
// Batched decoding: n sequences per step, each with its own cache filled directly (as above) at its own position
// around 1K (staggered, so their chunks end at different steps); --steps steps, tokens/s = n · steps / time.
namespace batched {

int run(const std::vector<int64_t>& batch_sizes, int steps, double floor_ms) {
    const FlashConfig cfg = config_preset("small");
    FlashModel<float> model(cfg);
    model.init_weights(1);
    Rng rng(5);
    std::printf("\nbatched decoding: n sequences per step, each at its own position (1024 + 37·i), small config, "
                "float, mean of %d steps; %d threads when n >= %d (the sequences in parallel), else 1\n", steps,
                omp_get_max_threads(), omp_get_max_threads());
    std::printf("%9s | %12s %11s %13s | %12s\n", "sequences", "ms/step", "tokens/s", "step / floor", "cache MB");
    for (int64_t n : batch_sizes) {
        DecodeBatch<float> batch;
        decode_batch_init(batch, model, (int)n);
        for (int i = 0; i < n; i++) baselines::fill_flash(batch.seqs[(size_t)i], 1024 + 37 * i, rng);
        std::vector<int> tokens((size_t)n * steps);
        for (int& t : tokens) t = rng.below(cfg.vocab_size);
        std::vector<float> logits((size_t)n * cfg.vocab_size);
        const auto t0 = Clock::now();
        for (int k = 0; k < steps; k++) decode_batch_step(model, batch, tokens.data() + (size_t)k * n, logits.data());
        const double step_s = seconds_since(t0) / steps;
        size_t cache = 0;
        for (const DecodeState<float>& st : batch.seqs) cache += st.cache_bytes();
        std::printf("%9lld | %12.3f %11.0f %12.2fx | %12.2f\n", (long long)n, step_s * 1e3, n / step_s,
                    step_s * 1e3 / floor_ms, cache / 1e6);
        std::fflush(stdout);
    }
    return 0;
}

}  // namespace batched

int main(int argc, char** argv) {
    try {
        std::vector<int64_t> positions = {1024, 4096, 16384, 65536};
        int steps = 256, reps = 3;
        std::string positions_text = "1024,4096,16384,65536";
        OptionTable options;
        options.add("positions", positions_text, "positions to time, comma-separated");
        options.add("steps", steps, "timed decode steps per position", 1, 1 << 20);
        options.add("reps", reps, "repetitions (the best is reported)", 1, 1000);
        std::string batch_sizes_text = "1,8,32";
        options.add("batch-sizes", batch_sizes_text, "sequences per batched step, comma-separated");
        bool baselines_only = false;
        options.add_flag("baselines-only", baselines_only,
                         "only the comparison with the baselines (skips the recompute, ~15 GB and a minute at 64K)");
        options.parse(argc, argv);
        positions = parse_list("positions", positions_text);
        const std::vector<int64_t> batch_sizes = parse_list("batch-sizes", batch_sizes_text);
        for (int64_t n : batch_sizes)
            FLASH_CHECK(n <= 4096, "--batch-sizes: " << n << " sequences is more than this benchmark holds",
                        "give at most 4096");
        if (baselines_only) return baselines::run(positions, steps);
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
        // The floor: every weight read once per token, at the bandwidth one thread reaches (1 GB buffer).
        float checksum = 0;
        const double bandwidth = measure_read_bandwidth(size_t(1) << 30, &checksum);
        const double weight_bytes = (double)param_count(cfg) * sizeof(float);
        const double floor_ms = weight_bytes / bandwidth * 1e3;
        FLASH_CHECK(checksum > 0, "the bandwidth probe summed to " << checksum, "");
        std::printf("memory floor: the weights (%.1f MB) read once per token at %.1f GB/s (one thread, best of 5 "
                    "sums over 1 GB) = %.3f ms/token\n", weight_bytes / 1e6, bandwidth / 1e9, floor_ms);
        std::printf("recompute = full forward over position+1 tokens rounded up to a multiple of C=%d "
                    "(best of %d runs below 16K; one run from 16K on, including its buffers' allocation); cached = mean of %d "
                    "steps, best of %d runs\n", C, reps, steps, reps);
        std::printf("%8s | %12s %12s | %12s | %12s %8s %10s | %9s\n", "position", "recompute", "recompute", "prefill",
                    "cached", "cached /", "cache", "max rel");
        std::printf("%8s | %12s %12s | %12s | %12s %8s %10s | %9s\n", "", "ms/token", "act memory", "us/prompt-tok",
                    "ms/token", "floor", "memory", "diff");
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
            // The best of --reps runs, each from the same state (the floor is a best of 5 too: host noise only adds).
            double cached_s = 1e30;
            for (int r = 0; r < reps; r++) {
                DecodeState<float> run = state;
                t0 = Clock::now();
                for (int i = 1; i <= steps; i++) decode_step(model, run, tokens[(size_t)(P + i)], logits.data());
                cached_s = std::min(cached_s, seconds_since(t0) / steps);
            }
            std::printf("%8lld | %12.2f %9.0f MB | %12.1f | %12.3f %7.2fx %7.2f MB | %9.1e\n", (long long)P,
                        best * 1e3, act_mb, prefill_s / P * 1e6, cached_s * 1e3, cached_s * 1e3 / floor_ms,
                        state.cache_bytes() / 1e6, err / scale);
            std::fflush(stdout);
        }
        batched::run(batch_sizes, steps, floor_ms);
        return baselines::run(positions, steps);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_decode: error: %s\n", e.what());
        return 1;
    }
}
