// test_eval.cpp: the validation measure (eval.h): the whole set scores every target exactly once, the training
// sample is spread over the file and fixed, bits per byte on a hand-computed example, and batched evaluation of
// the real model equals scoring each window alone.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>
#include <numeric>

#include "eval.h"
#include "testutil.h"
#include "tokenizer/bpe.h"

namespace {

// A stand-in for the model over a stream whose token ids are their positions (tokens[i] = i): it records how
// often each position is scored as a target, checks that every scored target is the next token of its input,
// and returns the mean over the scored targets of loss(target) (so the summed loss is known exactly).
struct CountingForward {
    std::vector<int> scored_count;
    std::function<double(int)> loss_of = [](int target) { return (double)target; };
    int batches = 0;
    double operator()(const int* inputs, const int* targets, int B, int T) {
        batches++;
        double sum = 0;
        int scored = 0;
        for (int n = 0; n < B * T; n++) {
            if (targets[n] == kIgnoreTarget) continue;
            CHECK(targets[n] == inputs[n] + 1);
            scored_count.at(targets[n])++;
            sum += loss_of(targets[n]);
            scored++;
        }
        REQUIRE(scored > 0);
        return sum / scored;
    }
};

std::vector<uint32_t> iota_tokens(size_t n) {
    std::vector<uint32_t> t(n);
    std::iota(t.begin(), t.end(), 0u);
    return t;
}

TEST_CASE("whole set: the windows of the worked example in eval.h") {
    const std::vector<EvalWindow> w = whole_set_windows(12, 4);
    REQUIRE(w.size() == 3);
    CHECK(w[0].offset == 0);
    CHECK(w[0].first_scored == 0);
    CHECK(w[1].offset == 4);
    CHECK(w[1].first_scored == 0);
    CHECK(w[2].offset == 7);  // ends at token 11, the last
    CHECK(w[2].first_scored == 1);  // its first target, token 8, was scored by the window at 4
    // N-1 a multiple of T: no extra window
    CHECK(whole_set_windows(13, 4).size() == 3);
    CHECK(whole_set_windows(13, 4)[2].first_scored == 0);
    CHECK_THROWS_WITH_AS(whole_set_windows(4, 4), doctest::Contains("too few for one window of T+1 = 5"), flash_error);
}

TEST_CASE("whole set: every target token is scored exactly once, token 0 never, whatever N, T and B") {
    struct Case {
        size_t N;
        int T, B;
    };
    for (Case c : {Case{12, 4, 1}, Case{13, 4, 2}, Case{5, 4, 3}, Case{101, 8, 3}, Case{1000, 16, 4}, Case{257, 256, 2}}) {
        CAPTURE(c.N);
        CAPTURE(c.T);
        CAPTURE(c.B);
        const std::vector<uint32_t> tokens = iota_tokens(c.N), one_byte(c.N, 1);
        CountingForward counter;
        counter.scored_count.assign(c.N, 0);
        const std::vector<EvalWindow> windows = whole_set_windows(c.N, c.T);
        const EvalResult r = evaluate_windows(std::ref(counter), tokens, windows, one_byte, c.B, c.T);
        CHECK(counter.scored_count[0] == 0);
        for (size_t i = 1; i < c.N; i++) {
            CAPTURE(i);
            CHECK(counter.scored_count[i] == 1);
        }
        CHECK(r.tokens == c.N - 1);
        CHECK(r.bytes == c.N - 1);
        CHECK(counter.batches == (int)((windows.size() + c.B - 1) / c.B));  // the last batch padded, not dropped
        // loss(target) = target: the sum is 1 + 2 + ... + (N-1), exact in double
        CHECK(r.nats == (double)(c.N - 1) * c.N / 2);
    }
}

TEST_CASE("the training sample: one window per stratum over the whole file, the same at every call") {
    const size_t N = 100001;
    const int T = 16, K = 8;
    const uint64_t full = (N - 1) / T;  // 6250 full windows on the whole set's grid
    const std::vector<EvalWindow> s = sample_windows(N, T, K);
    REQUIRE(s.size() == K);
    for (int k = 0; k < K; k++) {
        CAPTURE(k);
        CHECK(s[k].offset % T == 0);
        CHECK(s[k].first_scored == 0);
        CHECK(s[k].offset / T >= k * full / K);
        CHECK(s[k].offset / T < (k + 1) * full / K);
    }
    // spread: not the first K windows (what the old evaluation scored), the last one in the last eighth
    CHECK(s[K - 1].offset >= (uint64_t)7 * N / 8);
    CHECK(s[0].offset == 730 * T);  // pinned: splitmix64 from kEvalSampleSeed, the same on every platform
    // fixed: every evaluation, every run (no state, the seed is a constant), and the same scores
    const std::vector<EvalWindow> again = sample_windows(N, T, K);
    for (int k = 0; k < K; k++) CHECK(again[k].offset == s[k].offset);
    const std::vector<uint32_t> tokens = iota_tokens(N), one_byte(N, 1);
    CountingForward first, second;
    first.scored_count.assign(N, 0);
    second.scored_count.assign(N, 0);
    const EvalResult r1 = evaluate_windows(std::ref(first), tokens, s, one_byte, 4, T);
    const EvalResult r2 = evaluate_windows(std::ref(second), tokens, again, one_byte, 4, T);
    CHECK(r1.tokens == (uint64_t)K * T);
    CHECK(r1.nats == r2.nats);
    CHECK(first.scored_count == second.scored_count);
    // another seed draws other windows
    const std::vector<EvalWindow> other = sample_windows(N, T, K, 7);
    int same = 0;
    for (int k = 0; k < K; k++) same += other[k].offset == s[k].offset;
    CHECK(same < K);
    // asking for more windows than the file has gives each full window once, in order
    const std::vector<EvalWindow> all = sample_windows(50, 16, 8);
    REQUIRE(all.size() == 3);
    for (int j = 0; j < 3; j++) CHECK(all[j].offset == (uint64_t)j * 16);
}

TEST_CASE("bits per byte: a hand-computed example, the bytes of exactly the scored tokens") {
    // 8 nats over 4 bytes: 8 / ln 2 = 11.5416 bits, 2.8854 bits per byte
    CHECK(bits_per_byte(8.0, 4) == doctest::Approx(8.0 / std::log(2.0) / 4).epsilon(1e-15));
    CHECK(bits_per_byte(8 * std::log(2.0), 4) == doctest::Approx(2.0).epsilon(1e-15));

    const bpe::Tokenizer tok;  // untrained: byte tokens of 1 byte, <|endoftext|> of 13, <|mask|> of 8
    const std::vector<uint32_t> bytes = token_byte_lengths(tok);
    REQUIRE(bytes.size() == 258);
    CHECK(bytes[tok.eot_id()] == 13);
    CHECK(bytes[tok.byte_id('a')] == 1);
    // the stream <eot> a b <eot> c: targets a, b, <eot>, c are scored (token 0 never): 1 + 1 + 13 + 1 = 16 bytes
    const std::vector<uint32_t> tokens = tok.encode("<|endoftext|>ab<|endoftext|>c");
    REQUIRE(tokens.size() == 5);
    // a model that loses 5 nats on <eot> and 1 nat on every other token: 8 nats over 4 tokens
    const uint32_t eot = tok.eot_id();
    EvalForward forward = [&](const int*, const int* targets, int B, int T) {
        double sum = 0;
        int scored = 0;
        for (int n = 0; n < B * T; n++)
            if (targets[n] != kIgnoreTarget) sum += targets[n] == (int)eot ? 5.0 : 1.0, scored++;
        return sum / scored;
    };
    const EvalResult r = evaluate_windows(forward, tokens, whole_set_windows(tokens.size(), 2), bytes, 1, 2);
    CHECK(r.tokens == 4);
    CHECK(r.bytes == 16);
    CHECK(r.nats == 8.0);
    CHECK(r.loss() == 2.0);
    // 8 nats / ln 2 / 16 bytes = 0.5 / ln 2
    CHECK(r.bits_per_byte() == doctest::Approx(0.72134752044448).epsilon(1e-13));
    CHECK(format_eval(r) == "val loss 2.0000 nats/token | 0.7213 bits/byte | 4 tokens, 16 bytes");

    // a trained tokenizer's merged tokens count all their bytes
    const bpe::Tokenizer trained = bpe::Tokenizer::train({"hello hello hello hello"}, 270);
    const std::vector<uint32_t> lengths = token_byte_lengths(trained);
    const std::vector<uint32_t> ids = trained.encode("hello hello");
    uint64_t sum = 0;
    for (uint32_t id : ids) sum += lengths[id];
    CHECK(ids.size() < 11);  // merges happened
    CHECK(sum == 11);
}

TEST_CASE("the real model: batched, padded evaluation equals scoring each window alone") {
    FlashConfig cfg = config_preset("tiny");
    const int T = cfg.seq_len;
    FlashModel<double> m(cfg);
    m.init_weights(3, true);
    Rng rng(5);
    std::vector<uint32_t> tokens((size_t)5 * T + 7);  // 5 full windows and a last one that scores 6 targets
    for (uint32_t& t : tokens) t = (uint32_t)rng.below(cfg.vocab_size);
    const std::vector<EvalWindow> windows = whole_set_windows(tokens.size(), T);
    REQUIRE(windows.size() == 6);
    REQUIRE(windows[5].first_scored == T - 6);
    const std::vector<uint32_t> bytes(cfg.vocab_size, 2);
    const EvalResult r = evaluate_windows([&](const int* x, const int* y, int B, int T_) { return m.forward(x, y, B, T_); },
                                          tokens, windows, bytes, 4, T);  // 2 batches, the second with 2 padding rows
    // reference: each window alone, every target scored, its already-scored targets dropped by hand
    double expected = 0;
    std::vector<int> x(T), y(T);
    for (const EvalWindow& w : windows) {
        for (int t = 0; t < T; t++) x[t] = (int)tokens[w.offset + t], y[t] = (int)tokens[w.offset + t + 1];
        m.forward(x.data(), y.data(), 1, T);
        for (int t = w.first_scored; t < T; t++) expected += m.acts.losses[t];
    }
    CHECK(r.tokens == tokens.size() - 1);
    CHECK(r.bytes == 2 * (tokens.size() - 1));
    CHECK(r.nats == doctest::Approx(expected).epsilon(1e-12));
    CHECK(r.loss() > 3.0);  // a random model: near ln(64) = 4.16, not 0
}

}  // namespace
