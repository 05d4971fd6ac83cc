// test_decode.cpp: cached decoding against the full forward (FLASH.md §6, oracle 6), prefill, and sampling.
// Every equality test runs with the paper's initialisation AND the strong one (FLASH.md §1), in float and double,
// over lengths that cross several chunk boundaries.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>

#include <omp.h>

#include "decode.h"
#include "testutil.h"

namespace {

// The tiny models here give threads nothing to share, and a few hundred forwards each forking threads take 10 s
// instead of 0.3 s on two busy cores. The ops' results do not depend on the thread count (flash.cpp orders every
// reduction), and the threaded forward is test_model's business.
const int kOneThread = (omp_set_num_threads(1), 1);

// The tiny config (C = 4), and a variant with another shape: odd vocabulary, C = 8, three layers, s = 6.
FlashConfig tiny() { return config_preset("tiny"); }
FlashConfig variant() {
    FlashConfig c = config_preset("tiny");
    c.vocab_size = 37; c.d = 12; c.e = 20; c.s = 6; c.n_layers = 3; c.chunk = 8; c.seq_len = 16; c.rope_base = 500;
    return c;
}

// Of rel_err (testutil.h), relative to the logits' scale: ~0.1 under the paper's init, ~10 under the strong one.
template <typename Real> double tolerance();
template <> double tolerance<float>() { return 1e-5; }
template <> double tolerance<double>() { return 1e-12; }

template <typename Real>
std::string label(bool strong, const FlashConfig& c) {
    return std::string(sizeof(Real) == 4 ? "float" : "double") + (strong ? ", strong init" : ", paper init") +
           ", C=" + std::to_string(c.chunk);
}

// Token by token from position 0: the logits at every position equal the full forward's.
template <typename Real>
void check_cached_equals_forward(const FlashConfig& cfg, bool strong, int T) {
    FlashModel<Real> m(cfg);
    m.init_weights(11, strong);
    const int V = cfg.vocab_size;
    std::vector<int> tokens = random_tokens(V, T, 5);
    m.forward(tokens.data(), nullptr, 1, T);
    std::vector<Real> want(m.acts.logits, m.acts.logits + (size_t)T * V);

    DecodeState<Real> st;
    decode_init(st, m);
    std::vector<Real> got(V);
    double worst = 0;
    for (int t = 0; t < T; t++) {
        decode_step(m, st, tokens[t], got.data());
        worst = std::max(worst, rel_err(got.data(), want.data() + (size_t)t * V, V));
    }
    CHECK(st.pos == T);
    CHECK(worst < tolerance<Real>());
    MESSAGE("cached vs full forward, " << label<Real>(strong, cfg) << ", T=" << T << ": max rel error " << worst);
}

// Prefill of n tokens, then cached steps to T: the prefill's logits (for position n−1) and every step's equal the
// full forward's, for every n in 0..T (n = 0: everything goes through decode_step).
template <typename Real>
void check_prefill_then_steps(const FlashConfig& cfg, bool strong, int T) {
    FlashModel<Real> full(cfg), m(cfg);
    full.init_weights(23, strong);
    m.init_weights(23, strong);
    const int V = cfg.vocab_size;
    std::vector<int> tokens = random_tokens(V, T, 9);
    full.forward(tokens.data(), nullptr, 1, T);
    const Real* want = full.acts.logits;
    std::vector<Real> got(V);
    double worst = 0;
    for (int n = 0; n <= T; n++) {
        DecodeState<Real> st;
        decode_init(st, m);
        std::fill(got.begin(), got.end(), Real(-12345));
        decode_prefill(m, st, tokens.data(), n, got.data());
        REQUIRE(st.pos == n);
        if (n > 0) worst = std::max(worst, rel_err(got.data(), want + (size_t)(n - 1) * V, V));
        else CHECK(got[0] == Real(-12345));  // nothing fed, nothing written
        for (int t = n; t < T; t++) {
            decode_step(m, st, tokens[t], got.data());
            worst = std::max(worst, rel_err(got.data(), want + (size_t)t * V, V));
        }
    }
    CHECK(worst < tolerance<Real>());
    MESSAGE("prefill + steps vs full forward, " << label<Real>(strong, cfg) << ", T=" << T << ": max rel error "
                                                << worst);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Cached decoding equals the full forward

TEST_CASE("cached decoding equals the full forward at every position: double") {
    for (bool strong : {false, true}) {
        check_cached_equals_forward<double>(tiny(), strong, 40);
        check_cached_equals_forward<double>(variant(), strong, 40);
    }
}

TEST_CASE("cached decoding equals the full forward at every position: float") {
    for (bool strong : {false, true}) {
        check_cached_equals_forward<float>(tiny(), strong, 40);
        check_cached_equals_forward<float>(variant(), strong, 40);
    }
}

TEST_CASE("a prefill of any length followed by cached steps equals the full forward: double") {
    for (bool strong : {false, true}) {
        check_prefill_then_steps<double>(tiny(), strong, 28);
        check_prefill_then_steps<double>(variant(), strong, 32);
    }
}

TEST_CASE("a prefill of any length followed by cached steps equals the full forward: float") {
    for (bool strong : {false, true}) {
        check_prefill_then_steps<float>(tiny(), strong, 28);
        check_prefill_then_steps<float>(variant(), strong, 32);
    }
}

TEST_CASE("the global part matters: dropping M changes the cached logits") {
    // Guards the equality tests against a decoder whose lin term were dead: with M zeroed after two chunks the
    // logits must move (strong init), so the tests above really compare the global part.
    FlashModel<double> m(tiny());
    m.init_weights(3, true);
    std::vector<int> tokens = random_tokens(m.cfg.vocab_size, 12, 1);
    DecodeState<double> a, b;
    decode_init(a, m);
    decode_init(b, m);
    std::vector<double> la(m.cfg.vocab_size), lb(m.cfg.vocab_size);
    decode_prefill(m, a, tokens.data(), 9, la.data());
    decode_prefill(m, b, tokens.data(), 9, lb.data());
    for (auto& lc : b.layers) std::fill(lc.m.begin(), lc.m.end(), 0.0);
    decode_step(m, a, tokens[9], la.data());
    decode_step(m, b, tokens[9], lb.data());
    CHECK(max_abs_diff(la.data(), lb.data(), la.size()) > 1e-3);
}

TEST_CASE("the cache does not grow with the position, and positions past int range work") {
    FlashModel<float> m(tiny());
    m.init_weights(4, true);
    DecodeState<float> st;
    decode_init(st, m);
    const FlashConfig& c = m.cfg;
    const size_t expect = (size_t)c.n_layers * ((size_t)c.s * c.e + (size_t)c.chunk * (2 * c.s + c.e)) * sizeof(float);
    CHECK(st.cache_bytes() == expect);
    std::vector<float> logits(c.vocab_size);
    for (int t = 0; t < 50; t++) decode_step(m, st, t % c.vocab_size, logits.data());
    CHECK(st.cache_bytes() == expect);
    // Far past 2^31: RoPE angles come from the int64 position in double, and the step stays finite.
    st.pos = (int64_t)3 << 32;
    decode_step(m, st, 1, logits.data());
    CHECK(st.pos == ((int64_t)3 << 32) + 1);
    for (float v : logits) REQUIRE(std::isfinite(v));
}

TEST_CASE("release_activations frees the forward's buffers, and decoding and forward work after it") {
    FlashModel<double> m(tiny());
    m.init_weights(6, true);
    const int V = m.cfg.vocab_size;
    std::vector<int> tokens = random_tokens(V, 12, 2);
    m.forward(tokens.data(), nullptr, 1, 12);
    std::vector<double> want(m.acts.logits, m.acts.logits + (size_t)12 * V);
    DecodeState<double> st;
    decode_init(st, m);
    std::vector<double> got(V);
    decode_prefill(m, st, tokens.data(), 9, got.data());
    m.release_activations();
    CHECK(m.act_buf.capacity() == 0);
    CHECK(m.grad_act_buf.capacity() == 0);
    for (int t = 9; t < 12; t++) decode_step(m, st, tokens[t], got.data());
    CHECK(rel_err(got.data(), want.data() + (size_t)11 * V, V) < 1e-12);
    m.forward(tokens.data(), nullptr, 1, 12);
    CHECK(max_abs_diff(m.acts.logits, want.data(), want.size()) == 0.0);
}

TEST_CASE("decoding refuses a non-causal model, a foreign state and bad tokens") {
    FlashConfig nc = tiny();
    nc.causal = false;
    FlashModel<double> non_causal(nc);
    DecodeState<double> st;
    CHECK_THROWS_WITH_AS(decode_init(st, non_causal), doctest::Contains("non-causal"), flash_error);

    FlashModel<double> m(tiny());
    m.init_weights(1);
    std::vector<double> logits(m.cfg.vocab_size);
    CHECK_THROWS_WITH_AS(decode_step(m, st, 0, logits.data()), doctest::Contains("decode_init"), flash_error);
    FlashModel<double> other(variant());
    decode_init(st, other);
    CHECK_THROWS_WITH_AS(decode_step(m, st, 0, logits.data()), doctest::Contains("does not belong"), flash_error);

    decode_init(st, m);
    CHECK_THROWS_WITH_AS(decode_step(m, st, m.cfg.vocab_size, logits.data()), doctest::Contains("out of range"),
                         flash_error);
    std::vector<int> bad = {1, 2, 3, -1, 5};
    CHECK_THROWS_WITH_AS(decode_prefill(m, st, bad.data(), (int64_t)bad.size(), logits.data()),
                         doctest::Contains("out of range"), flash_error);
}

// ---------------------------------------------------------------------------------------------------------------
// Batched decoding

namespace {
// Three sequences at different positions (prompts of 0, 5 and C+3 tokens, so their chunks end at different steps),
// then 2C+1 batched steps: every row of the batch's logits equals what decode_step gives for that sequence alone
// (the naive version: one sequence at a time), and every position advances by one per step.
template <typename Real>
void check_batch_equals_alone(const FlashConfig& cfg, bool strong) {
    FlashModel<Real> m(cfg);
    m.init_weights(31, strong);
    const int V = cfg.vocab_size, C = cfg.chunk, n = 3, steps = 2 * C + 1;
    const int prompt_len[n] = {0, 5, C + 3};
    DecodeBatch<Real> batch;
    decode_batch_init(batch, m, n);
    std::vector<DecodeState<Real>> alone(n);
    std::vector<std::vector<int>> seq_tokens(n);
    for (int i = 0; i < n; i++) {
        seq_tokens[i] = random_tokens(V, prompt_len[i] + steps, 40 + i);
        decode_init(alone[i], m);
        decode_prefill(m, batch.seqs[i], seq_tokens[i].data(), prompt_len[i], (Real*)nullptr);
        decode_prefill(m, alone[i], seq_tokens[i].data(), prompt_len[i], (Real*)nullptr);
    }
    std::vector<Real> batch_logits((size_t)n * V), one(V);
    std::vector<int> step_tokens(n);
    double worst = 0;
    for (int t = 0; t < steps; t++) {
        for (int i = 0; i < n; i++) step_tokens[i] = seq_tokens[i][prompt_len[i] + t];
        decode_batch_step(m, batch, step_tokens.data(), batch_logits.data());
        for (int i = 0; i < n; i++) {
            decode_step(m, alone[i], step_tokens[i], one.data());
            worst = std::max(worst, rel_err(batch_logits.data() + (size_t)i * V, one.data(), V));
            CHECK(batch.seqs[i].pos == prompt_len[i] + t + 1);
        }
    }
    CHECK(worst < tolerance<Real>());
    MESSAGE("batched vs one at a time, " << label<Real>(strong, cfg) << ": max rel error " << worst);
}
}  // namespace

TEST_CASE("batched decoding equals decoding each sequence alone: double and float") {
    for (bool strong : {false, true}) {
        check_batch_equals_alone<double>(tiny(), strong);
        check_batch_equals_alone<double>(variant(), strong);
        check_batch_equals_alone<float>(variant(), strong);
    }
}

// With as many sequences as threads, the sequences' own work runs in parallel (decode.cpp: decode_rows), and the
// products of the rows are split among the threads: still what decoding each sequence alone gives.
TEST_CASE("batched decoding with 2 threads (sequences in parallel) equals decoding each sequence alone") {
    omp_set_num_threads(2);
    check_batch_equals_alone<double>(variant(), true);
    check_batch_equals_alone<float>(variant(), false);
    omp_set_num_threads(kOneThread);
}

TEST_CASE("batched decoding refuses an empty batch and names the sequence of a bad token") {
    FlashModel<double> m(tiny());
    m.init_weights(1);
    DecodeBatch<double> batch;
    std::vector<int> tokens = {1, m.cfg.vocab_size, 2};
    std::vector<double> logits(3 * (size_t)m.cfg.vocab_size);
    CHECK_THROWS_WITH_AS(decode_batch_step(m, batch, tokens.data(), logits.data()), doctest::Contains("empty"),
                         flash_error);
    CHECK_THROWS_WITH_AS(decode_batch_init(batch, m, 0), doctest::Contains("at least one"), flash_error);
    decode_batch_init(batch, m, 3);
    CHECK_THROWS_WITH_AS(decode_batch_step(m, batch, tokens.data(), logits.data()),
                         doctest::Contains("of sequence 1"), flash_error);
}

// ---------------------------------------------------------------------------------------------------------------
// Sampling

namespace {
// A hand-made distribution, in scrambled id order: p = 0.05, 0.5, 0.1, 0.2, 0.15 for ids 0..4.
const std::vector<double> kProbs = {0.05, 0.5, 0.1, 0.2, 0.15};
std::vector<double> hand_logits() {
    std::vector<double> l;
    for (double p : kProbs) l.push_back(std::log(p) + 3.0);  // an offset changes nothing
    return l;
}
void check_dist(const std::vector<double>& got, const std::vector<double>& want) {
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); i++) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-12));
}
}  // namespace

TEST_CASE("sampling distribution: plain, top-k, top-p, both, and temperature") {
    const std::vector<double> l = hand_logits();
    const int V = (int)l.size();
    check_dist(sampling_distribution(l.data(), V, 1.0, 0, 1.0), kProbs);
    check_dist(sampling_distribution(l.data(), V, 1.0, V + 3, 1.0), kProbs);  // k ≥ V: off
    // top-k = 2 keeps 0.5 and 0.2
    check_dist(sampling_distribution(l.data(), V, 1.0, 2, 1.0), {0, 0.5 / 0.7, 0, 0.2 / 0.7, 0});
    // top-p: the smallest most-probable set with mass ≥ p
    check_dist(sampling_distribution(l.data(), V, 1.0, 0, 0.3), {0, 1, 0, 0, 0});
    check_dist(sampling_distribution(l.data(), V, 1.0, 0, 0.6), {0, 0.5 / 0.7, 0, 0.2 / 0.7, 0});
    check_dist(sampling_distribution(l.data(), V, 1.0, 0, 0.8), {0, 0.5 / 0.85, 0, 0.2 / 0.85, 0.15 / 0.85});
    check_dist(sampling_distribution(l.data(), V, 1.0, 0, 0.97), {0.05, 0.5, 0.1, 0.2, 0.15});
    // top-k then top-p on the renormalised top-k: k = 3 gives 0.5, 0.2, 0.15 (mass 0.85); p = 0.8 of that is
    // 0.68 < 0.7, so 0.5 and 0.2 stay.
    check_dist(sampling_distribution(l.data(), V, 1.0, 3, 0.8), {0, 0.5 / 0.7, 0, 0.2 / 0.7, 0});
    // temperature T: p^(1/T), renormalised
    std::vector<double> hot(V);
    double sum = 0;
    for (int i = 0; i < V; i++) sum += hot[i] = std::sqrt(kProbs[i]);
    for (double& p : hot) p /= sum;
    check_dist(sampling_distribution(l.data(), V, 2.0, 0, 1.0), hot);
    // temperature 0: everything on the argmax
    check_dist(sampling_distribution(l.data(), V, 0.0, 0, 1.0), {0, 1, 0, 0, 0});
    // ties go to the lower id, for argmax and for the top-k cut
    std::vector<float> tied = {1.0f, 3.0f, 2.0f, 3.0f};
    check_dist(sampling_distribution(tied.data(), 4, 0.0, 0, 1.0), {0, 1, 0, 0});
    std::vector<double> k1 = sampling_distribution(tied.data(), 4, 1.0, 1, 1.0);
    check_dist(k1, {0, 1, 0, 0});
}

TEST_CASE("sampling refuses bad settings and non-finite logits") {
    const std::vector<double> l = hand_logits();
    Rng rng(1);
    CHECK_THROWS_AS(sample_token(l.data(), 5, -1.0, 0, 1.0, rng), flash_error);
    CHECK_THROWS_AS(sample_token(l.data(), 5, 1.0, -2, 1.0, rng), flash_error);
    CHECK_THROWS_AS(sample_token(l.data(), 5, 1.0, 0, 0.0, rng), flash_error);
    CHECK_THROWS_AS(sample_token(l.data(), 5, 1.0, 0, 1.5, rng), flash_error);
    std::vector<double> nan = l;
    nan[2] = std::numeric_limits<double>::quiet_NaN();
    CHECK_THROWS_WITH_AS(sample_token(nan.data(), 5, 1.0, 0, 1.0, rng), doctest::Contains("non-finite"), flash_error);
}

TEST_CASE("sample_token draws from the filtered distribution") {
    const std::vector<double> l = hand_logits();
    const int V = (int)l.size(), draws = 200000;
    for (auto [top_k, top_p] : {std::pair<int, double>{0, 1.0}, {2, 1.0}, {0, 0.8}}) {
        std::vector<double> want = sampling_distribution(l.data(), V, 1.0, top_k, top_p);
        std::vector<int> count(V, 0);
        Rng rng(77);
        for (int i = 0; i < draws; i++) count[sample_token(l.data(), V, 1.0, top_k, top_p, rng)]++;
        for (int k = 0; k < V; k++) {
            const double freq = (double)count[k] / draws, sd = std::sqrt(want[k] * (1 - want[k]) / draws);
            CHECK(std::fabs(freq - want[k]) <= 5 * sd + 1e-12);  // 5 sigma; filtered-out ids never drawn
        }
    }
}

TEST_CASE("temperature 0 is greedy: argmax of every step, without using the rng") {
    FlashModel<float> m(tiny());
    m.init_weights(8, true);
    const int V = m.cfg.vocab_size;
    DecodeState<float> st;
    decode_init(st, m);
    std::vector<float> logits(V);
    std::vector<int> prompt = {3, 1, 4, 1, 5};
    decode_prefill(m, st, prompt.data(), (int64_t)prompt.size(), logits.data());
    Rng rng(99);
    const uint64_t before = rng.state;
    for (int i = 0; i < 20; i++) {
        int tok = sample_token(logits.data(), V, 0.0, 5, 0.9, rng);
        CHECK(tok == (int)(std::max_element(logits.begin(), logits.end()) - logits.begin()));
        decode_step(m, st, tok, logits.data());
    }
    CHECK(rng.state == before);
}

TEST_CASE("sampling with a seed is reproducible, and another seed differs") {
    FlashModel<float> m(tiny());
    m.init_weights(8, true);
    const int V = m.cfg.vocab_size;
    auto generate = [&](uint64_t seed) {
        DecodeState<float> st;
        decode_init(st, m);
        std::vector<float> logits(V);
        std::vector<int> out = {7, 7, 2, 9, 11, 3};  // prompt: one full chunk and two tokens more
        decode_prefill(m, st, out.data(), (int64_t)out.size(), logits.data());
        Rng rng(seed);
        for (int i = 0; i < 30; i++) {
            out.push_back(sample_token(logits.data(), V, 1.0, 0, 1.0, rng));
            decode_step(m, st, out.back(), logits.data());
        }
        return out;
    };
    CHECK(generate(1234) == generate(1234));
    CHECK(generate(1234) != generate(4321));
}
