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
// Then FLASH against the baselines (BASELINES.md §1-§3; section "FLASH against the baselines" below): ms per cached
// step at each position for FLASH, Transformer++, Performer and the Combiner, small presets, each decoder's cache
// filled directly as if P tokens had been decoded (see there).
//
//   build/bench_decode [--positions 1024,4096,16384,65536] [--steps 256] [--reps 3] [--baselines-only]
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

int main(int argc, char** argv) {
    try {
        std::vector<int64_t> positions = {1024, 4096, 16384, 65536};
        int steps = 256, reps = 3;
        std::string positions_text = "1024,4096,16384,65536";
        OptionTable options;
        options.add("positions", positions_text, "positions to time, comma-separated");
        options.add("steps", steps, "timed decode steps per position", 1, 1 << 20);
        options.add("reps", reps, "repetitions (the best is reported)", 1, 1000);
        bool baselines_only = false;
        options.add_flag("baselines-only", baselines_only,
                         "only the comparison with the baselines (skips the recompute, ~15 GB and a minute at 64K)");
        options.parse(argc, argv);
        positions = parse_list(positions_text);
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
        return baselines::run(positions, steps);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_decode: error: %s\n", e.what());
        return 1;
    }
}
