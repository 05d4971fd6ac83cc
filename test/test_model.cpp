// test_model.cpp: the whole model against the oracles of FLASH.md §6 (2-5), AdamW, determinism, configs and the
// safetensors files. Every model test runs with the paper's initialisation AND a strong one (FLASH.md §1): near the
// identity, a wrong sign or index changes the loss by only ~1e-8, so the paper's alone would hide bugs.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cblas.h>
#include <omp.h>

#include <cstdio>
#include <fstream>

#include "testutil.h"

namespace {

FlashConfig tiny(bool causal = true) {
    FlashConfig c = config_preset("tiny");
    c.causal = causal;
    return c;
}

struct Batch {
    int B, T;
    std::vector<int> tokens, targets;
};
Batch random_batch(const FlashConfig& c, int B, int T, uint64_t seed) {
    Rng rng(seed);
    Batch b{B, T, std::vector<int>((size_t)B * T), std::vector<int>((size_t)B * T)};
    for (int& t : b.tokens) t = rng.below(c.vocab_size);
    for (int& t : b.targets) t = rng.below(c.vocab_size);
    return b;
}

// ---------------------------------------------------------------------------------------------------
// Oracle 2: the whole model's gradient against finite differences, for a sample of every parameter tensor.
// Error measure: max |analytic − numeric| over the sampled entries of a tensor, divided by
//   - strong init: the largest |numeric| of that tensor (per-tensor relative error);
//   - paper init: the largest |gradient| of the whole model. Near the identity some tensors' gradients are
//     ~1e-8 while the loss is ~4, below what a central difference in double resolves (~1e-11 absolute);
//     the strong-init runs are the ones that check those tensors entry by entry.

void check_model_gradient(bool causal, bool strong) {
    FlashModel<double> m(tiny(causal));
    m.init_weights(42, strong);
    Batch batch = random_batch(m.cfg, 2, m.cfg.seq_len, 7);
    m.forward(batch.tokens.data(), batch.targets.data(), batch.B, batch.T);
    m.zero_grad();
    m.backward();
    std::vector<double> analytic = m.grads;
    const double scale = max_abs(analytic);
    auto loss = [&]() { return m.forward(batch.tokens.data(), batch.targets.data(), batch.B, batch.T); };
    Rng pick(3);
    for (const TensorSpec& spec : m.specs) {
        std::vector<size_t> entries;
        if (spec.count <= 8) {
            for (size_t i = 0; i < spec.count; i++) entries.push_back(spec.offset + i);
        } else {
            for (int k = 0; k < 8; k++) entries.push_back(spec.offset + (size_t)pick.below((int)spec.count));
        }
        // wte: make sure rows of tokens that occur in the batch are sampled (most rows get only the logits path)
        if (spec.name == "wte")
            for (int k = 0; k < 4; k++) entries.push_back((size_t)batch.tokens[k] * m.cfg.d + (size_t)k);
        double max_num = 0;
        for (size_t i : entries) max_num = std::max(max_num, std::fabs(analytic[i]));
        const double rel = gradcheck(m.params, analytic, loss, entries);
        const double err = strong ? rel : rel * max_num / scale;
        const std::string label =
            spec.name + (causal ? " causal" : " non-causal") + (strong ? " strong init" : " paper init");
        INFO(label << ": error " << err);
        CHECK(err < 1e-6);
        if (strong) CHECK(max_num > 1e-4);  // the check is not between near-zeros
    }
}
TEST_CASE("model gradient matches finite differences: causal, paper init") { check_model_gradient(true, false); }
TEST_CASE("model gradient matches finite differences: causal, strong init") { check_model_gradient(true, true); }
TEST_CASE("model gradient matches finite differences: non-causal, paper init") { check_model_gradient(false, false); }
TEST_CASE("model gradient matches finite differences: non-causal, strong init") { check_model_gradient(false, true); }

// ---------------------------------------------------------------------------------------------------
// Oracle 3: the chunked global part against the naive O(T²) form
//   lin[t] = Σ_{t' in earlier chunks} (ql[t]·kl[t'])/C · v[t']   (non-causal: over all chunks)

void check_global_naive(bool causal) {
    const int B = 2, T = 24, C = 4, s = 6, e = 10, N = B * T, ldv = e + 2, G = T / C;
    Rng rng(21);
    auto ql = randn((size_t)N * s, rng), kl = randn((size_t)N * s, rng), v = randn((size_t)N * ldv, rng);
    std::vector<double> o((size_t)N * e, 0.0), m((size_t)B * G * s * e);
    global_attention_forward(o.data(), m.data(), ql.data(), kl.data(), v.data(), ldv, B, T, C, s, e, causal);
    double max_err = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < e; j++) {
                double want = 0;
                for (int t2 = 0; t2 < T; t2++) {
                    if (causal && t2 / C >= t / C) continue;
                    double qk = 0;
                    for (int k = 0; k < s; k++) qk += ql[(size_t)(b * T + t) * s + k] * kl[(size_t)(b * T + t2) * s + k];
                    want += qk / C * v[(size_t)(b * T + t2) * ldv + j];
                }
                max_err = std::max(max_err, std::fabs(o[(size_t)(b * T + t) * e + j] - want));
            }
    CHECK(max_err < 1e-12);
    CHECK(max_abs(o) > 0.1);  // the comparison is not between zeros
}
TEST_CASE("chunked global attention equals the naive O(T^2) form, causal") { check_global_naive(true); }
TEST_CASE("chunked global attention equals the naive O(T^2) form, non-causal") { check_global_naive(false); }

// ---------------------------------------------------------------------------------------------------
// Oracle 4: FLASH with C = T against FLASH-Quad (GAU) written directly from the equations, one token at a time.

std::vector<double> naive_gau_logits(const FlashModel<double>& m, const std::vector<int>& tokens, int B, int T) {
    const FlashConfig& c = m.cfg;
    const int d = c.d, e = c.e, s = c.s, I = c.inner(), V = c.vocab_size;
    std::vector<double> logits((size_t)B * T * V);
    auto norm = [&](const std::vector<double>& x, double g) {
        double ms = 0;
        for (double xi : x) ms += xi * xi;
        std::vector<double> y(x.size());
        for (size_t j = 0; j < x.size(); j++) y[j] = g * x[j] / std::sqrt(ms / x.size() + c.eps);
        return y;
    };
    for (int b = 0; b < B; b++) {
        std::vector<std::vector<double>> x(T, std::vector<double>(d));
        for (int t = 0; t < T; t++)
            for (int j = 0; j < d; j++) x[t][j] = m.p.wte[(size_t)tokens[b * T + t] * d + j];
        for (const LayerParams<double>& lp : m.p.layers) {
            std::vector<std::vector<double>> u(T), v(T), heads[4];
            for (int t = 0; t < T; t++) {
                std::vector<double> xn = norm(x[t], lp.norm_g[0]), act(I);
                for (int k = 0; k < I; k++) {
                    double h = lp.b_in[k];
                    for (int j = 0; j < d; j++) h += xn[j] * lp.w_in[(size_t)j * I + k];
                    act[k] = h / (1 + std::exp(-h));
                }
                u[t].assign(act.begin(), act.begin() + e);
                v[t].assign(act.begin() + e, act.begin() + 2 * e);
                for (int i = 0; i < 4; i++) {
                    std::vector<double> r(s), rot(s);
                    for (int j = 0; j < s; j++) r[j] = act[2 * e + j] * lp.gamma[i * s + j] + lp.beta[i * s + j];
                    for (int j = 0; j < s / 2; j++) {
                        double th = t * std::pow(c.rope_base, -2.0 * j / s);
                        rot[j] = r[j] * std::cos(th) - r[j + s / 2] * std::sin(th);
                        rot[j + s / 2] = r[j + s / 2] * std::cos(th) + r[j] * std::sin(th);
                    }
                    heads[i].push_back(rot);
                }
            }
            for (int t = 0; t < T; t++) {
                std::vector<double> quad(e, 0.0);
                for (int t2 = 0; t2 <= t; t2++) {
                    double sc = 0;
                    for (int j = 0; j < s; j++) sc += heads[0][t][j] * heads[1][t2][j];
                    sc = sc / T + lp.rel_bias[t - t2];
                    const double a = sc > 0 ? sc * sc : 0;
                    for (int j = 0; j < e; j++) quad[j] += a * v[t2][j];
                }
                for (int k = 0; k < d; k++) {
                    double y = lp.b_out[k];
                    for (int j = 0; j < e; j++) y += u[t][j] * quad[j] * lp.w_out[(size_t)j * d + k];
                    x[t][k] += y;  // x is only read at position t from here on in this layer
                }
            }
        }
        for (int t = 0; t < T; t++) {
            std::vector<double> xn = norm(x[t], m.p.norm_f_g[0]);
            for (int k = 0; k < V; k++) {
                double l = 0;
                for (int j = 0; j < d; j++) l += xn[j] * m.p.wte[(size_t)k * d + j];
                logits[((size_t)b * T + t) * V + k] = l;
            }
        }
    }
    return logits;
}

void check_flash_quad(bool strong) {
    FlashConfig c = tiny();
    c.chunk = c.seq_len;  // one chunk: FLASH-Quad
    FlashModel<double> m(c);
    m.init_weights(5, strong);
    Batch batch = random_batch(c, 2, c.seq_len, 8);
    m.forward(batch.tokens.data(), nullptr, batch.B, batch.T);
    std::vector<double> want = naive_gau_logits(m, batch.tokens, batch.B, batch.T);
    const size_t n = want.size();
    CHECK(max_abs_diff(m.acts.logits, want.data(), n) < 1e-12);
    // the global part is exactly zero with one chunk
    for (const LayerActs<double>& la : m.acts.layers)
        CHECK(max_abs_diff(la.m, std::vector<double>((size_t)c.s * c.e * batch.B, 0.0).data(),
                           (size_t)c.s * c.e * batch.B) == 0.0);
}
TEST_CASE("FLASH with C = T equals a naive FLASH-Quad (GAU), paper init") { check_flash_quad(false); }
TEST_CASE("FLASH with C = T equals a naive FLASH-Quad (GAU), strong init") { check_flash_quad(true); }

// ---------------------------------------------------------------------------------------------------
// Oracle 5: causality. Changing token t changes no logits before t, and does change logits at t.

void check_causality(bool strong) {
    FlashModel<double> m(tiny());
    m.init_weights(11, strong);
    const int T = m.cfg.seq_len, C = m.cfg.chunk, V = m.cfg.vocab_size;
    Batch batch = random_batch(m.cfg, 1, T, 12);
    m.forward(batch.tokens.data(), nullptr, 1, T);
    std::vector<double> base(m.acts.logits, m.acts.logits + (size_t)T * V);
    for (int t : {C - 1, C, C + 1, T - 1}) {
        std::vector<int> changed = batch.tokens;
        changed[t] = (changed[t] + 1) % V;
        m.forward(changed.data(), nullptr, 1, T);
        INFO("changed token " << t);
        CHECK(max_abs_diff(m.acts.logits, base.data(), (size_t)t * V) == 0.0);
        CHECK(max_abs_diff(m.acts.logits + (size_t)t * V, base.data() + (size_t)t * V, V) > 1e-6);
    }
}
TEST_CASE("causality: a token changes no earlier logits, paper init") { check_causality(false); }
TEST_CASE("causality: a token changes no earlier logits, strong init") { check_causality(true); }

TEST_CASE("non-causal: a later token does change earlier logits") {
    FlashModel<double> m(tiny(false));
    m.init_weights(11, true);
    const int T = m.cfg.seq_len, V = m.cfg.vocab_size;
    Batch batch = random_batch(m.cfg, 1, T, 12);
    m.forward(batch.tokens.data(), nullptr, 1, T);
    std::vector<double> base(m.acts.logits, m.acts.logits + (size_t)T * V);
    batch.tokens[T - 1] = (batch.tokens[T - 1] + 1) % V;
    m.forward(batch.tokens.data(), nullptr, 1, T);
    CHECK(max_abs_diff(m.acts.logits, base.data(), V) > 1e-6);  // position 0 sees the last chunk
}

// ---------------------------------------------------------------------------------------------------
// The global part at the edges: G = 1 gives exactly zero; the last chunk gets no gradient from it, the first
// chunk's queries see nothing.

TEST_CASE("global attention: G = 1 is exactly zero, and the last chunk gets no gradient") {
    const int B = 2, s = 4, e = 6, ldv = e;
    Rng rng(31);
    for (int T : {8, 16}) {
        const int C = (T == 8) ? 8 : 4, G = T / C, N = B * T;  // G = 1, then G = 4
        auto ql = randn((size_t)N * s, rng), kl = randn((size_t)N * s, rng), v = randn((size_t)N * ldv, rng);
        auto d_o = randn((size_t)N * e, rng);
        std::vector<double> o((size_t)N * e, 0.0), m((size_t)B * G * s * e);
        global_attention_forward(o.data(), m.data(), ql.data(), kl.data(), v.data(), ldv, B, T, C, s, e, true);
        std::vector<double> dql(ql.size(), 0.0), dkl(kl.size(), 0.0), dv(v.size(), 0.0);
        global_attention_backward(dql.data(), dkl.data(), dv.data(), ldv, d_o.data(), m.data(), ql.data(), kl.data(),
                                  v.data(), ldv, B, T, C, s, e, true);
        INFO("T = " << T << ", G = " << G);
        if (G == 1) {
            CHECK(max_abs(o) == 0.0);
            CHECK(max_abs(dql) + max_abs(dkl) + max_abs(dv) == 0.0);
        } else {
            CHECK(max_abs(o) > 0.1);
        }
        for (int b = 0; b < B; b++) {
            const size_t last = (size_t)b * T + (size_t)(G - 1) * C, first = (size_t)b * T;
            CHECK(max_abs_diff(dkl.data() + last * s, std::vector<double>((size_t)C * s, 0.0).data(), (size_t)C * s) == 0.0);
            CHECK(max_abs_diff(dv.data() + last * ldv, std::vector<double>((size_t)C * ldv, 0.0).data(), (size_t)C * ldv) == 0.0);
            CHECK(max_abs_diff(o.data() + first * e, std::vector<double>((size_t)C * e, 0.0).data(), (size_t)C * e) == 0.0);
            CHECK(max_abs_diff(dql.data() + first * s, std::vector<double>((size_t)C * s, 0.0).data(), (size_t)C * s) == 0.0);
            if (G > 1) CHECK(max_abs(std::vector<double>(dkl.begin() + first * s, dkl.begin() + (first + C) * s)) > 0.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Training: AdamW drives the loss of a repeating pattern near zero. Float, as in real training.

TEST_CASE("a few hundred AdamW steps learn a repeating token pattern") {
    FlashConfig c = tiny();
    FlashModel<float> m(c);
    m.init_weights(1, false);
    const int B = 4, T = c.seq_len;
    const int pattern[] = {3, 17, 42, 8, 60, 25, 11};  // period 7: crosses chunk boundaries at every phase
    std::vector<int> tokens(B * T), targets(B * T);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            tokens[b * T + t] = pattern[(b + t) % 7];
            targets[b * T + t] = pattern[(b + t + 1) % 7];
        }
    AdamWConfig opt;
    double first = 0, last = 0;
    for (int step = 1; step <= 300; step++) {
        double loss = m.forward(tokens.data(), targets.data(), B, T);
        if (step == 1) first = loss;
        last = loss;
        m.zero_grad();
        m.backward();
        m.adamw_update(3e-3, opt, step);
    }
    INFO("loss " << first << " -> " << last);
    CHECK(first > 3.5);  // about log(64) = 4.16 at the start
    CHECK(last < 0.05);
}

TEST_CASE("AdamW: one step by hand, and no weight decay on gains, biases and offsets") {
    FlashModel<double> m(tiny());
    m.init_weights(1, true);
    std::fill(m.grads.begin(), m.grads.end(), 0.5);
    std::vector<double> before = m.params;
    AdamWConfig opt;
    opt.weight_decay = 0.1;
    m.adamw_update(0.01, opt, 1);
    // first step: m̂ = g, v̂ = g², so the update is lr·(sign(g)·g/(|g|+eps) + wd·w)
    for (const TensorSpec& spec : m.specs) {
        const size_t i = spec.offset;
        const double wd = spec.decay ? 0.1 : 0.0;
        const double want = before[i] - 0.01 * (0.5 / (0.5 + 1e-8) + wd * before[i]);
        INFO(spec.name);
        CHECK(m.params[i] == doctest::Approx(want).epsilon(1e-14));
    }
    int decayed = 0;
    for (const TensorSpec& spec : m.specs) decayed += spec.decay;
    CHECK(decayed == 1 + 2 * m.cfg.n_layers);  // wte, w_in and w_out of each layer
}

// One float training step's loss and gradients, with `omp_threads` OpenMP and `blas_threads` OpenBLAS threads
// (0: as set).
std::pair<double, std::vector<float>> step_result(const FlashConfig& c, const Batch& batch, int omp_threads,
                                                  int blas_threads) {
    const int saved_omp = omp_get_max_threads(), saved_blas = openblas_get_num_threads();
    if (omp_threads > 0) omp_set_num_threads(omp_threads);
    if (blas_threads > 0) openblas_set_num_threads(blas_threads);
    FlashModel<float> m(c);
    m.init_weights(9, true);
    const double loss = m.forward(batch.tokens.data(), batch.targets.data(), batch.B, batch.T);
    m.zero_grad();
    m.backward();
    omp_set_num_threads(saved_omp);
    openblas_set_num_threads(saved_blas);
    return {loss, m.grads};
}

TEST_CASE("forward and backward are deterministic, bit for bit") {
    FlashConfig c = config_preset("tiny");
    c.d = 32; c.e = 64; c.s = 16; c.chunk = 8; c.seq_len = 32;
    Batch batch = random_batch(c, 3, c.seq_len, 4);
    auto a = step_result(c, batch, 0, 0), b = step_result(c, batch, 0, 0);
    CHECK(a.first == b.first);
    CHECK(a.second == b.second);
}

// The backward takes the last layer's act = silu(h) as the forward left it (FlashModel::act_layer) instead of
// recomputing it. The gradients must be those of a backward that recomputes every layer's act: the same bits on the
// machines measured (gau_rows_forward's SiLU and silu_forward are one expression), asserted to 1e-6 so that no
// compiler's choice of vector code for the two loops can fail it. (A layer differentiated with another layer's act
// fails the finite-difference tests above: checked by breaking it.)
TEST_CASE("the backward's act for the last layer: the forward's gives the gradients of recomputing it") {
    FlashConfig c = config_preset("tiny");
    c.d = 32; c.e = 64; c.s = 16; c.chunk = 8; c.seq_len = 32; c.n_layers = 3;
    const Batch batch = random_batch(c, 3, c.seq_len, 4);
    std::vector<float> grads[2];
    for (int recompute_all : {0, 1}) {
        FlashModel<float> m(c);
        m.init_weights(9, true);
        m.forward(batch.tokens.data(), batch.targets.data(), batch.B, batch.T);
        CHECK(m.act_layer == c.n_layers - 1);
        if (recompute_all) m.act_layer = -1;  // as if act held no layer's
        m.zero_grad();
        m.backward();
        CHECK(m.act_layer == 0);
        grads[recompute_all] = m.grads;
    }
    const double diff = rel_err(grads[0].data(), grads[1].data(), grads[1].size());
    MESSAGE("act left by the forward vs recomputed: max-norm relative gradient difference " << diff);
    CHECK(diff <= 1e-6);
}

// The thread count must not change the result. Two claims, kept apart because only one is ours:
// - the project's own work split (OpenMP threads taking chunks, rows, column blocks) orders every reduction,
//   so with BLAS held at one thread, 1 and 2 OpenMP threads give the same bits;
// - OpenBLAS itself may split a product's sums differently with more threads (it does on some CPUs, e.g.
//   AMD Zen 3 with OpenBLAS 0.3.21), so with both varied only a tight tolerance is promised.
// Many chunks (threads take chunks) and one large chunk (BLAS's threads take the products): both paths.
TEST_CASE("results do not depend on the number of threads") {
    for (int chunk : {8, 256}) {
        FlashConfig c = config_preset("tiny");
        c.d = 128; c.e = 256; c.s = 64; c.vocab_size = 128; c.chunk = chunk; c.seq_len = 256;
        Batch batch = random_batch(c, chunk == 8 ? 2 : 1, c.seq_len, 4);
        INFO("chunk " << chunk);
        auto omp1 = step_result(c, batch, 1, 1), omp2 = step_result(c, batch, 2, 1);
        CHECK(omp1.first == omp2.first);  // bit for bit: our reductions only
        CHECK(omp1.second == omp2.second);
        CHECK(max_abs(std::vector<double>(omp1.second.begin(), omp1.second.end())) > 0);

        auto all2 = step_result(c, batch, 2, 2);  // BLAS threaded too: equal to float rounding
        CHECK(all2.first == doctest::Approx(omp1.first).epsilon(1e-6));
        double max_diff = 0, max_grad = 0;
        for (size_t i = 0; i < omp1.second.size(); i++) {
            max_diff = std::max(max_diff, (double)std::fabs(omp1.second[i] - all2.second[i]));
            max_grad = std::max(max_grad, (double)std::fabs(omp1.second[i]));
        }
        MESSAGE("chunk " << chunk << ": 1 vs 2 BLAS threads, max-norm relative gradient difference "
                         << max_diff / max_grad);
        CHECK(max_diff <= 1e-5 * max_grad);
    }
}

TEST_CASE("float and double agree on the tiny model") {
    FlashModel<float> mf(tiny());
    FlashModel<double> md(tiny());
    mf.init_weights(3, true);
    md.init_weights(3, true);
    Batch batch = random_batch(md.cfg, 2, md.cfg.seq_len, 6);
    double lf = mf.forward(batch.tokens.data(), batch.targets.data(), 2, batch.T);
    double ld = md.forward(batch.tokens.data(), batch.targets.data(), 2, batch.T);
    CHECK(lf == doctest::Approx(ld).epsilon(1e-5));
}

TEST_CASE("bad batches are refused with a clear message") {
    FlashModel<double> m(tiny());
    m.init_weights(1);
    Batch batch = random_batch(m.cfg, 1, 16, 1);
    batch.tokens[5] = 64;
    CHECK_THROWS_WITH_AS(m.forward(batch.tokens.data(), nullptr, 1, 16), doctest::Contains("token id 64 at position 5"),
                         flash_error);
    batch.tokens[5] = 0;
    batch.targets[2] = -2;
    CHECK_THROWS_WITH_AS(m.forward(batch.tokens.data(), batch.targets.data(), 1, 16),
                         doctest::Contains("target id -2 at position 2 is out of range"), flash_error);
    batch.targets[2] = kIgnoreTarget;  // not scored, but a valid target
    CHECK(std::isfinite(m.forward(batch.tokens.data(), batch.targets.data(), 1, 16)));
    CHECK_THROWS_WITH_AS(m.forward(batch.tokens.data(), nullptr, 1, 10), doctest::Contains("not a multiple of the chunk"),
                         flash_error);
}

// ---------------------------------------------------------------------------------------------------
// Configs

TEST_CASE("config JSON: round trip and every field checked") {
    FlashConfig c = config_preset("base");
    FlashConfig back = config_from_json(config_to_json(c));
    CHECK(config_shape_mismatch(c, back) == "");
    CHECK(back.seq_len == 1024);
    // written: "arch" and FLASH's keys, nothing else; a baseline's key is an error naming it
    const nlohmann::json written = config_to_json(c);
    std::vector<std::string> keys;
    for (auto& kv : written.items()) keys.push_back(kv.key());
    CHECK(keys == std::vector<std::string>{"arch", "causal", "chunk", "d", "e", "eps", "n_layers", "rope_base", "s",
                                           "seq_len", "vocab_size"});
    CHECK(written["arch"] == "flash");
    CHECK_THROWS_WITH_AS(config_from_json({{"n_heads", 4}}),
                         doctest::Contains("'n_heads' does not belong to arch flash"), flash_error);
    CHECK_THROWS_WITH_AS(normalized_model_config({{"block", 4}}), doctest::Contains("'block'"), flash_error);
    CHECK(normalized_model_config({{"d", 64}}) == config_to_json([] {
              FlashConfig s = config_preset("small");
              s.d = 64;
              return s;
          }()));
    CHECK(param_count(config_preset("small")) > 4000000);
    CHECK(param_count(config_preset("small")) < 5000000);  // FLASH.md §5: about 4.5M
    using J = nlohmann::json;
    struct Bad { J j; const char* msg; };
    std::vector<Bad> bad = {
        {J{{"d", 0}}, "'d' is 0"},
        {J{{"s", 7}}, "'s' is 7, must be even"},
        {J{{"seq_len", 100}, {"chunk", 32}}, "'seq_len' (100) is not a multiple of 'chunk' (32)"},
        {J{{"vocab_size", -3}}, "'vocab_size' is -3"},
        {J{{"n_layers", 1.5}}, "'n_layers' must be an integer"},
        {J{{"causal", 1}}, "'causal' must be true or false"},
        {J{{"eps", 0}}, "'eps' is 0"},
        {J{{"rope_base", "x"}}, "'rope_base' must be a number"},
        {J{{"heads", 4}}, "config field 'heads' does not belong to arch flash"},
        {J::array(), "must be a JSON object"},
    };
    for (const Bad& b : bad) {
        INFO(b.j.dump());
        CHECK_THROWS_WITH_AS(config_from_json(b.j), doctest::Contains(b.msg), flash_error);
    }
    CHECK(config_shape_mismatch(tiny(), tiny(false)) == "causal: 1 vs 0");
}

// ---------------------------------------------------------------------------------------------------
// Safetensors

std::string tmp_path(const std::string& name) { return "/tmp/flash_test_" + std::to_string(getpid()) + "_" + name; }

void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
}
std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}
std::string with_header(const std::string& header, const std::string& data) {
    std::string out(8, '\0');
    for (int i = 0; i < 8; i++) out[i] = (char)((header.size() >> (8 * i)) & 0xff);
    return out + header + data;
}

TEST_CASE("checkpoint round trip keeps every weight and the config") {
    FlashModel<float> a(tiny(false));
    a.init_weights(17, true);
    const std::string path = tmp_path("rt.safetensors");
    save_weights(path, a);
    SafeTensorsFile f = safetensors_read(path);
    CHECK(f.tensors.size() == a.specs.size());
    CHECK(f.find("layers.1.rel_bias")->shape == std::vector<int64_t>{2 * 4 - 1});
    CHECK(f.find("layers.0.w_in")->shape == std::vector<int64_t>{16, 72});
    FlashConfig c = checkpoint_config(f, path);
    CHECK(config_shape_mismatch(c, a.cfg) == "");
    FlashModel<float> b(c);
    load_weights(path, b);
    CHECK(b.params == a.params);
    std::remove(path.c_str());
}

TEST_CASE("the debug state holds the batch, the loss, every parameter and its gradient") {
    FlashModel<double> m(tiny());
    m.init_weights(2, true);
    Batch batch = random_batch(m.cfg, 2, 16, 3);
    const std::string path = tmp_path("debug.safetensors");
    write_debug_state(path, m, batch.tokens.data(), batch.targets.data(), 2, 16);
    SafeTensorsFile f = safetensors_read(path);
    CHECK(f.tensors.size() == 3 + 2 * m.specs.size());
    std::vector<double> loss(1), grads(m.grads.size());
    read_tensor(*f.find("loss"), {1}, loss.data(), path);
    CHECK(loss[0] == m.loss);
    load_param_tensors(m, grads, f, "grad.", path);
    CHECK(grads == m.grads);
    CHECK(max_abs(grads) > 0);
    CHECK(f.find("batch.tokens")->data.size() == 4 * 32);
    std::remove(path.c_str());
}

TEST_CASE("bad safetensors files are refused, each with its own message") {
    const std::string path = tmp_path("bad.safetensors");
    const std::string eight(8, 'x');
    struct Bad { std::string bytes; const char* msg; };
    std::vector<Bad> bad = {
        {"abc", "only 3 bytes"},
        {std::string("\xff\xff\xff\xff\x00\x00\x00\x00", 8) + "{}", "bad safetensors header length"},
        {with_header("{not json", ""), "not valid JSON"},
        {with_header("[1,2]", ""), "not a JSON object"},
        {with_header(R"({"a":{"dtype":"F32","shape":[2]}})", eight), "lacks a valid dtype, shape or data_offsets"},
        {with_header(R"({"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", eight), "unsupported safetensors dtype"},
        {with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", eight), "the data section has 8 bytes"},
        {with_header(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight), "needs 12"},
        {with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight), "overlap or hole"},
        {with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", eight), "bytes after the last tensor"},
        {with_header(R"({"__metadata__":{"config":3}})", ""), "is not a string"},
    };
    for (const Bad& b : bad) {
        write_bytes(path, b.bytes);
        INFO(b.msg);
        CHECK_THROWS_WITH_AS(safetensors_read(path), doctest::Contains(b.msg), flash_error);
    }
    CHECK_THROWS_WITH_AS(safetensors_read(tmp_path("missing")), doctest::Contains("cannot open"), flash_error);
    std::remove(path.c_str());
}

TEST_CASE("checkpoints of another model, or with missing parts, are refused and change nothing") {
    FlashModel<float> m(tiny());
    m.init_weights(1);
    const std::string path = tmp_path("ck.safetensors");
    std::vector<float> before = m.params;

    // another shape
    FlashConfig other = tiny();
    other.d = 32;
    FlashModel<float> big(other);
    big.init_weights(2);
    save_weights(path, big);
    CHECK_THROWS_WITH_AS(load_weights(path, m), doctest::Contains("another shape (file vs this model: d: 32 vs 16)"),
                         flash_error);
    // no config
    safetensors_write(path, param_tensors(m, m.params, "", "F32"), {});
    CHECK_THROWS_WITH_AS(load_weights(path, m), doctest::Contains("no model config"), flash_error);
    // a bad config
    safetensors_write(path, param_tensors(m, m.params, "", "F32"), {{"config", R"({"s": 3})"}});
    CHECK_THROWS_WITH_AS(load_weights(path, m), doctest::Contains("holds a bad config"), flash_error);
    // a missing tensor
    auto tensors = param_tensors(m, m.params, "", "F32");
    tensors.pop_back();
    safetensors_write(path, tensors, {{"config", config_to_json(m.cfg).dump()}});
    CHECK_THROWS_WITH_AS(load_weights(path, m), doctest::Contains("has no tensor 'norm_f.g'"), flash_error);
    // a tensor of the wrong shape (same byte count)
    tensors = param_tensors(m, m.params, "", "F32");
    tensors[0].shape = {16, 64};
    safetensors_write(path, tensors, {{"config", config_to_json(m.cfg).dump()}});
    CHECK_THROWS_WITH_AS(load_weights(path, m), doctest::Contains("tensor 'wte' has shape (16, 64)"), flash_error);
    // a truncated file
    save_weights(path, big);
    std::string bytes = read_bytes(path);
    write_bytes(path, bytes.substr(0, bytes.size() - 100));
    CHECK_THROWS_WITH_AS(load_weights(path, m), doctest::Contains("the file is truncated"), flash_error);

    CHECK(m.params == before);  // nothing was changed by any failed load
    std::remove(path.c_str());
}

TEST_CASE("a failed write leaves the existing file intact") {
    FlashModel<float> m(tiny());
    m.init_weights(1);
    const std::string path = tmp_path("keep.safetensors");
    save_weights(path, m);
    const std::string before = read_bytes(path);
    std::vector<SafeTensor> broken = param_tensors(m, m.params, "", "F32");
    broken[1].data.pop_back();  // byte count no longer matches the shape
    CHECK_THROWS_WITH_AS(safetensors_write(path, broken, {}), doctest::Contains("has 3 bytes but shape (1)"), flash_error);
    CHECK(read_bytes(path) == before);
    std::remove(path.c_str());
}

}  // namespace

TEST_CASE("make_model: the config's arch picks the architecture; the Model verbs are FlashModel's own") {
    FlashConfig c = config_preset("tiny");
    nlohmann::json j = config_to_json(c);
    CHECK(model_arch(j) == "flash");
    j["arch"] = "flash";
    std::unique_ptr<Model<double>> m = make_model<double>(j);
    CHECK(m->arch() == "flash");
    CHECK(m->param_count() == param_count(c));
    CHECK(m->shape_mismatch(config_to_json(c)) == "");
    CHECK(config_from_json(j).d == c.d);  // a FLASH config may name its arch
    nlohmann::json other = j;
    other["arch"] = "lstm";
    CHECK_THROWS_WITH_AS(make_model<double>(other), doctest::Contains("unknown model architecture 'lstm'"),
                         flash_error);
    other["arch"] = "performer";
    CHECK_THROWS_WITH_AS(config_from_json(other), doctest::Contains("'arch' is \"performer\""), flash_error);
    CHECK_THROWS_WITH_AS(make_model<double>(other), doctest::Contains("'chunk' does not belong to arch performer"),
                         flash_error);

    // Through the interface, a step gives FlashModel's numbers.
    FlashModel<double> direct(c);
    direct.init_weights(3, true);
    m->init_weights(3, true);
    Rng rng(4);
    std::vector<int> tok(2 * c.seq_len), tgt(2 * c.seq_len);
    for (int& t : tok) t = rng.below(c.vocab_size);
    for (int& t : tgt) t = rng.below(c.vocab_size);
    CHECK(m->forward(tok.data(), tgt.data(), 2, c.seq_len) == direct.forward(tok.data(), tgt.data(), 2, c.seq_len));
    m->zero_grad();
    m->backward();
    direct.zero_grad();
    direct.backward();
    std::vector<double> grads(m->param_count());
    m->copy_to_host(ModelBuffer::grads, grads.data());
    CHECK(grads == direct.grads);
}

TEST_CASE("clip_grad_norm: scales the gradients to the bound and returns the norm before; 0 or a larger bound leaves them") {
    FlashModel<double> m(config_preset("tiny"));
    for (size_t i = 0; i < m.grads.size(); i++) m.grads[i] = (i % 2 ? 1.0 : -1.0) * 0.25;
    const double norm = 0.25 * std::sqrt((double)m.grads.size());
    CHECK(clip_grad_norm(m, 0) == doctest::Approx(norm).epsilon(1e-15));
    CHECK(clip_grad_norm(m, 2 * norm) == doctest::Approx(norm).epsilon(1e-15));
    CHECK(m.grads[0] == -0.25);
    CHECK(clip_grad_norm(m, 1.0) == doctest::Approx(norm).epsilon(1e-15));
    CHECK(m.grad_norm() == doctest::Approx(1.0).epsilon(1e-12));
    CHECK(m.grads[1] == doctest::Approx(0.25 / norm).epsilon(1e-15));
}

TEST_CASE("one layout list: activation_counts equals the span view_activations lays out") {
    for (bool causal : {true, false}) {
        FlashConfig c = config_preset("tiny");
        c.causal = causal;
        size_t n_act = 0, n_grad = 0;
        activation_counts(c, 3, 2 * c.seq_len, &n_act, &n_grad);
        std::vector<double> act(n_act), grad(n_grad);
        Acts<double> a;
        GradActs<double> g;
        view_activations(a, g, act.data(), grad.data(), c, 3, 2 * c.seq_len);
        const size_t N = 3 * 2 * (size_t)c.seq_len;
        CHECK(a.losses + N == act.data() + n_act);        // the last activation ends the buffer
        CHECK(g.dlogits + N * c.vocab_size == grad.data() + n_grad);
        CHECK(a.layers[1].x == a.layers[0].gated + N * c.e);  // layers follow each other
        CHECK(a.act == act.data());                            // one act for all layers, first (Acts::act)
        CHECK(a.layers[0].x == a.act + N * c.inner());
    }
}

// FLASH.md §4 by hand for the small config (d 256, e 512, s 128, L 8, C 128, V 4096): projections 851,968 a layer,
// local 2·C·(s+e) = 163,840, global 4·s·e = 262,144, logits 2,097,152. Causal, blocks of 32 rows (kLocalRowBlock)
// cover 32·(32 + 64 + 96 + 128) of the 128² square, so 3/8 of the local part is skipped; at T = 512 the global
// products take 3 of 4 chunks a side, so a quarter of the global part is.
TEST_CASE("FLOPs per token: the model's count, and the part the causal code performs") {
    REQUIRE(kLocalRowBlock == 32);  // the shares below are for blocks of 32 rows
    FlashConfig c = config_preset("small");
    const double full = 8 * (851968.0 + 163840 + 262144) + 2097152;
    CHECK(forward_flops_per_token(c) == full);
    CHECK(forward_flops_done_per_token(c, 512) == full - 8 * (163840.0 * 3 / 8 + 262144.0 / 4));
    CHECK(forward_flops_done_per_token(c, 128) == full - 8 * (163840.0 * 3 / 8 + 262144));  // one chunk: no global
    CHECK(forward_flops_done_per_token(c, 65536) == full - 8 * (163840.0 * 3 / 8 + 262144.0 / 512));
    c.causal = false;  // every row sees every column, every chunk feeds every chunk
    CHECK(forward_flops_done_per_token(c, 512) == full);
}

// Every tensor starts on a multiple of 16 elements (flash.cpp, walk_params: aligned operands for cuBLAS), in order and
// without overlap; the gaps stay zero through initialisation and training steps, and files hold the tensors alone.
TEST_CASE("parameter layout: aligned tensors in order, zero gaps that training never touches") {
    for (bool causal : {true, false}) {
        FlashConfig c = config_preset("tiny");
        c.causal = causal;
        const std::vector<TensorSpec> specs = param_specs(c);
        size_t end = 0;
        std::vector<bool> in_tensor(param_count(c), false);
        for (const TensorSpec& t : specs) {
            CAPTURE(t.name);
            CHECK(t.offset % 16 == 0);
            CHECK(t.offset >= end);
            CHECK(t.offset - end < 16);  // no more padding than the alignment needs
            end = t.offset + t.count;
            for (size_t i = t.offset; i < end; i++) in_tensor[i] = true;
        }
        CHECK(end == param_count(c));
        CHECK(tensor_element_count(specs) < param_count(c));  // the tiny config has gaps (after norm.g, say)

        FlashModel<float> m(c);
        m.init_weights(3, true);
        const Batch batch = random_batch(c, 2, c.seq_len, 5);
        AdamWConfig opt;
        for (int step = 1; step <= 3; step++) {
            m.forward(batch.tokens.data(), batch.targets.data(), 2, batch.T);
            m.zero_grad();
            m.backward();
            m.adamw_update(1e-2, opt, step);
        }
        size_t gaps = 0;
        for (size_t i = 0; i < in_tensor.size(); i++)
            if (!in_tensor[i]) {
                gaps++;
                CHECK(m.params[i] == 0.0f);
                CHECK(m.grads[i] == 0.0f);
                CHECK(m.adam_m[i] == 0.0f);
                CHECK(m.adam_v[i] == 0.0f);
            }
        CHECK(gaps == param_count(c) - tensor_element_count(specs));
    }
}
