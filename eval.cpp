// eval.cpp: whole-set and sampled validation windows, and their loss in nats per token and bits per byte.
#include "eval.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common.h"
#include "data/dataloader.h"
#include "flash.h"
#include "tokenizer/bpe.h"

// Full windows of T+1 tokens, T apart, that fit in n_tokens: the whole set's grid, which the sample draws from.
static uint64_t full_window_count(size_t n_tokens, int T) {
    FLASH_CHECK(T >= 1 && n_tokens >= (size_t)T + 1,
                "the validation set has " << n_tokens << " tokens, too few for one window of T+1 = " << T + 1,
                "use a smaller --seq-len or a bigger validation split");
    return (n_tokens - 1) / (uint64_t)T;
}

std::vector<EvalWindow> whole_set_windows(size_t n_tokens, int T, flash_data::Objective objective) {
    full_window_count(n_tokens, T);  // checks the sizes
    // The targets are tokens shift..n-1: the next token (ar) or the token itself (mlm).
    const uint64_t shift = objective == flash_data::Objective::ar ? 1 : 0, targets = n_tokens - shift;
    const uint64_t full = targets / T;
    std::vector<EvalWindow> windows;
    for (uint64_t j = 0; j < full; j++) windows.push_back({j * T, 0});
    // Targets up to full*T are scored; the rest, `left` of them, by a window that ends at the last token.
    const uint64_t left = targets - full * T;
    if (left > 0) windows.push_back({n_tokens - shift - T, T - (int)left});
    return windows;
}

std::vector<EvalWindow> sample_windows(size_t n_tokens, int T, int count, uint64_t seed) {
    FLASH_CHECK(count >= 1, "an evaluation sample needs at least one window, got " << count, "");
    const uint64_t full = full_window_count(n_tokens, T);
    const uint64_t K = std::min<uint64_t>(count, full);
    std::vector<EvalWindow> windows;
    uint64_t rng = seed;
    for (uint64_t k = 0; k < K; k++) {
        const uint64_t first = k * full / K, end = (k + 1) * full / K;  // stratum k: windows [first, end)
        windows.push_back({(first + flash_data::random_below(rng, end - first)) * T, 0});
    }
    return windows;
}

std::vector<uint32_t> token_byte_lengths(const bpe::Tokenizer& tok) {
    std::vector<uint32_t> lengths(tok.vocab_size());
    for (uint32_t id = 0; id < tok.vocab_size(); id++) lengths[id] = (uint32_t)tok.token_bytes(id).size();
    return lengths;
}

double bits_per_byte(double nats, uint64_t bytes) { return bytes ? nats / std::log(2.0) / (double)bytes : 0.0; }
double EvalResult::bits_per_byte() const { return ::bits_per_byte(nats, bytes); }

EvalResult evaluate_windows(const EvalForward& forward, const std::vector<uint32_t>& tokens,
                            const std::vector<EvalWindow>& windows, const std::vector<uint32_t>& token_bytes, int B,
                            int T, const flash_data::MlmVocab* mlm) {
    FLASH_CHECK(B >= 1 && T >= 1, "evaluation needs B >= 1 and T >= 1, got B=" << B << " T=" << T, "");
    std::vector<int> inputs((size_t)B * T), targets((size_t)B * T);
    EvalResult r;
    for (size_t first = 0; first < windows.size(); first += B) {
        uint64_t scored = 0;
        for (int b = 0; b < B; b++) {
            int* in = inputs.data() + (size_t)b * T;
            int* tg = targets.data() + (size_t)b * T;
            if (first + b >= windows.size()) {  // padding: any valid ids, nothing scored
                std::fill(in, in + T, 0);
                std::fill(tg, tg + T, kIgnoreTarget);
                continue;
            }
            const EvalWindow& w = windows[first + b];
            FLASH_CHECK(w.offset + T + (mlm ? 0 : 1) <= tokens.size() && w.first_scored >= 0 && w.first_scored <= T,
                        "evaluation window at " << w.offset << " does not fit the " << tokens.size() << "-token stream",
                        "make the windows with whole_set_windows or sample_windows for this stream and T");
            for (int t = 0; t < T; t++) {
                in[t] = (int)tokens[w.offset + t];
                tg[t] = (int)tokens[w.offset + t + (mlm ? 0 : 1)];
            }
            if (mlm) flash_data::mlm_mask(flash_data::kMlmEvalSeed, 0, w.offset, in, T, *mlm, in, tg);
            for (int t = 0; t < T; t++) {
                if (t < w.first_scored) tg[t] = kIgnoreTarget;
                if (tg[t] == kIgnoreTarget) continue;
                scored++;
                r.bytes += token_bytes.at(tg[t]);
            }
        }
        // forward returns the mean over this batch's scored targets; the sum is what adds up across batches.
        if (scored > 0) r.nats += forward(inputs.data(), targets.data(), B, T) * (double)scored;
        r.tokens += scored;
    }
    return r;
}

std::string format_eval(const EvalResult& r) {
    char line[160];
    std::snprintf(line, sizeof line, "val loss %.4f nats/token | %.4f bits/byte | %llu tokens, %llu bytes", r.loss(),
                  r.bits_per_byte(), (unsigned long long)r.tokens, (unsigned long long)r.bytes);
    return line;
}
