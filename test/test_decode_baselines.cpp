// test_decode_baselines.cpp: cached decoding of Transformer++, Performer and the Combiner (decode_baselines.h)
// against the full forward, token by token: a prefill of every length, then cached steps, must give the full
// forward's logits at every position. Both initialisations (init_weights(seed, strong)), float and double.
//
// The Combiner has no arch of its own in TransformerModel yet, so its full forward is written here from the ops
// (transformer.h's block with combiner_attention_forward in place of the softmax), and checked itself: with c = 1
// and c = T the Combiner is §1's softmax attention, i.e. TransformerModel's Transformer++ (BASELINES.md §3).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include <omp.h>

#include "decode_baselines.h"
#include "testutil.h"

namespace {

// Tiny models: threads have nothing to share, and the ops' results do not depend on the thread count.
const int kOneThread = (omp_set_num_threads(1), 1);

const int kT = 16;  // the tiny preset's seq_len; Combiner spans of 4 make 4 spans

TransformerConfig tiny(const std::string& arch) { return transformer_preset("tiny", arch); }

// Double: the decoder and the forward differ only in the order of their sums (BLAS blocking, Performer's chunked
// prefix sums against one row at a time and its running key maximum against the sequence's), so ~1e-15 is seen.
// Float: the same differences at float's 6e-8 per operation, through a few dozen operations per block and 2 blocks
// whose strong-init logits reach ~10; 2e-5 relative to the largest logit is ~300 float roundings of headroom over
// the ~1e-6 the tests measure (printed by every case).
template <typename Real> double tolerance();
template <> double tolerance<float>() { return 2e-5; }
template <> double tolerance<double>() { return 1e-12; }

template <typename Real>
std::string label(const std::string& what, bool strong) {
    return what + (sizeof(Real) == 4 ? ", float" : ", double") + (strong ? ", strong init" : ", paper init");
}

// The full forward of the Combiner model (BASELINES.md §3): TransformerModel's Transformer++ block with the
// Combiner-Fixed attention. Logits (T, V) of one sequence; T a multiple of c.
template <typename Real>
std::vector<Real> combiner_forward(const TransformerModel<Real>& model, const std::vector<int>& tokens, int c) {
    const TransformerConfig& cfg = model.cfg;
    const int T = (int)tokens.size(), d = cfg.d, H = cfg.n_heads, hd = cfg.head_dim(), f = cfg.ffn;
    const int V = cfg.vocab_size;
    std::vector<double> cos_t, sin_t;
    rope_tables(cos_t, sin_t, 0, T, hd, cfg.rope_base);
    std::vector<Real> x((size_t)T * d), x_mid(x.size()), xn(x.size()), qkv((size_t)T * 3 * d), heads(x.size()),
        q(x.size()), k(x.size()), v(x.size()), o(x.size()), gu((size_t)T * 2 * f), sg((size_t)T * f), z(sg.size()), rstd(T),
        saved(combiner_saved_count(1, T, H, hd, c)), logits((size_t)T * V);
    const CombinerSaved<Real> sv = view_combiner_saved(saved.data(), 1, T, H, hd, c);
    encoder_forward(x.data(), tokens.data(), model.p.wte, T, d);
    for (int l = 0; l < cfg.n_layers; l++) {
        const BlockParams<Real>& lp = model.p.layers[l];
        rmsnorm_forward(xn.data(), rstd.data(), x.data(), lp.attn_norm_g, T, d, cfg.eps);
        matmul_forward(qkv.data(), xn.data(), lp.w_qkv, (const Real*)nullptr, T, d, 3 * d);
        // q and k rotated (through the head layout rope_forward takes), back in (T, d) token rows for the Combiner
        // ops, and v beside them (the ops take one row stride for all three)
        for (int part = 0; part < 3; part++) {
            split_heads_forward(heads.data(), qkv.data() + part * d, 3 * d, 1, T, H, hd);
            if (part < 2) rope_forward(heads.data(), cos_t.data(), sin_t.data(), H * T, T, hd);
            merge_heads_forward((part == 0 ? q : part == 1 ? k : v).data(), heads.data(), 1, T, H, hd);
        }
        combiner_attention_forward(o.data(), sv, q.data(), k.data(), v.data(), d, 1, T, H, hd, c, true);
        matmul_forward(x_mid.data(), o.data(), lp.w_o, (const Real*)nullptr, T, d, d);
        residual_forward(x_mid.data(), x.data(), x.size());
        rmsnorm_forward(xn.data(), rstd.data(), x_mid.data(), lp.ffn_norm_g, T, d, cfg.eps);
        matmul_forward(gu.data(), xn.data(), lp.w_13, (const Real*)nullptr, T, d, 2 * f);
        swiglu_forward(z.data(), sg.data(), gu.data(), T, f);
        matmul_forward(x.data(), z.data(), lp.w_2, (const Real*)nullptr, T, f, d);
        residual_forward(x.data(), x_mid.data(), x.size());
    }
    rmsnorm_forward(xn.data(), rstd.data(), x.data(), model.p.norm_f_g, T, d, cfg.eps);
    logits_forward(logits.data(), xn.data(), model.p.wte, T, d, V);
    return logits;
}

// The reference logits (T, V) of the model decoded with `attention`.
template <typename Real>
std::vector<Real> full_forward(TransformerModel<Real>& model, BaselineAttention attention,
                               const std::vector<int>& tokens) {
    if (attention.kind == BaselineAttention::combiner) return combiner_forward(model, tokens, attention.block);
    const int T = (int)tokens.size(), V = model.cfg.vocab_size;
    model.forward(tokens.data(), nullptr, 1, T);
    return std::vector<Real>(model.acts.logits, model.acts.logits + (size_t)T * V);
}

// Prefill of every length p = 0..T, then cached steps to T: the logits after every token equal want's. Returns the
// largest relative error.
template <typename Real>
double check_every_prefill(TransformerModel<Real>& model, BaselineAttention attention, const std::vector<int>& tokens,
                           const std::vector<Real>& want) {
    const int T = (int)tokens.size(), V = model.cfg.vocab_size;
    std::vector<Real> got(V);
    double worst = 0;
    for (int p = 0; p <= T; p++) {
        BaselineDecodeState<Real> st;
        decode_init(st, model, attention);
        decode_prefill(model, st, tokens.data(), p, got.data());
        if (p > 0) worst = std::max(worst, rel_err(got.data(), want.data() + (size_t)(p - 1) * V, V));
        for (int t = p; t < T; t++) {
            decode_step(model, st, tokens[t], got.data());
            worst = std::max(worst, rel_err(got.data(), want.data() + (size_t)t * V, V));
        }
        CHECK(st.pos == T);
    }
    return worst;
}

template <typename Real>
void check_arch(const std::string& arch, BaselineAttention attention, const std::string& what) {
    for (bool strong : {false, true}) {
        TransformerModel<Real> model(tiny(arch));
        model.init_weights(7, strong);
        const std::vector<int> tokens = random_tokens(model.cfg.vocab_size, kT, 3);
        const std::vector<Real> want = full_forward(model, attention, tokens);
        const double worst = check_every_prefill(model, attention, tokens, want);
        CHECK(worst < tolerance<Real>());
        MESSAGE(label<Real>(what, strong) << ", every prefill length 0.." << kT << " then cached steps: max rel error "
                                          << worst);
    }
}

BaselineAttention softmax_attention() { return {BaselineAttention::softmax, 0}; }
BaselineAttention favor_attention() { return {BaselineAttention::favor, 0}; }
BaselineAttention combiner_attention(int c) { return {BaselineAttention::combiner, c}; }

}  // namespace

TEST_CASE("Transformer++: prefill + cached steps equal the full forward at every position") {
    check_arch<double>("transformer++", softmax_attention(), "transformer++");
    check_arch<float>("transformer++", softmax_attention(), "transformer++");
}

TEST_CASE("Performer: prefill + cached steps equal the full forward at every position") {
    check_arch<double>("performer", favor_attention(), "performer");
    check_arch<float>("performer", favor_attention(), "performer");
}

TEST_CASE("Combiner: prefill + cached steps equal the full forward at every position (c = 4, 8)") {
    for (int c : {4, 8}) {
        check_arch<double>("transformer++", combiner_attention(c), "combiner c=" + std::to_string(c));
        check_arch<float>("transformer++", combiner_attention(c), "combiner c=" + std::to_string(c));
    }
}

TEST_CASE("Combiner with c = 1 and c = T decodes Transformer++ (the test's Combiner forward checked too)") {
    // BASELINES.md §3: c = T and c = 1 both give §1's softmax attention; so the Combiner decoder and this file's
    // Combiner forward must both equal TransformerModel's own Transformer++ forward.
    for (bool strong : {false, true}) {
        TransformerModel<double> model(tiny("transformer++"));
        model.init_weights(5, strong);
        const std::vector<int> tokens = random_tokens(model.cfg.vocab_size, kT, 9);
        const std::vector<double> want = full_forward(model, softmax_attention(), tokens);
        for (int c : {1, kT}) {
            const double forward_err = rel_err(combiner_forward(model, tokens, c).data(), want.data(), want.size());
            const double decode_err = check_every_prefill(model, combiner_attention(c), tokens, want);
            CHECK(forward_err < 1e-12);
            CHECK(decode_err < 1e-12);
            MESSAGE(label<double>("combiner c=" + std::to_string(c), strong)
                    << " vs Transformer++: forward " << forward_err << ", decoder " << decode_err);
        }
    }
}

TEST_CASE("Performer: a key that raises the running maximum mid-sequence rescales the sums, exactly") {
    // Random tokens raise some head's key maximum now and then; here the positions where it happens are found, and
    // the decoder must have rescaled at a position > 0 of every layer, while staying equal to the forward (whose
    // stabiliser is the maximum over the whole sequence, so the cached sums agree only if the rescale is right).
    for (bool strong : {false, true}) {
        TransformerModel<double> model(tiny("performer"));
        model.init_weights(13, strong);
        const std::vector<int> tokens = random_tokens(model.cfg.vocab_size, kT, 21);
        const std::vector<double> want = full_forward(model, favor_attention(), tokens);
        BaselineDecodeState<double> st;
        decode_init(st, model);
        std::vector<double> got(model.cfg.vocab_size);
        std::vector<int64_t> last(model.cfg.n_layers, 0);
        std::vector<int> rescaled_at(model.cfg.n_layers, -1);  // the first position > 0 whose key rescaled
        double worst = 0;
        for (int t = 0; t < kT; t++) {
            decode_step(model, st, tokens[t], got.data());
            worst = std::max(worst, rel_err(got.data(), want.data() + (size_t)t * got.size(), got.size()));
            for (int l = 0; l < model.cfg.n_layers; l++) {
                if (st.layers[l].rescales > last[l] && rescaled_at[l] < 0) rescaled_at[l] = t;
                last[l] = st.layers[l].rescales;
            }
        }
        for (int l = 0; l < model.cfg.n_layers; l++) {
            CHECK(rescaled_at[l] > 0);
            MESSAGE(label<double>("performer", strong) << ", layer " << l << ": " << st.layers[l].rescales
                                                       << " rescales, first at position " << rescaled_at[l]);
        }
        CHECK(worst < 1e-12);
    }
}

TEST_CASE("Performer: a large jump of the key maximum after a prefill is rescaled exactly") {
    // The prefill (through the forward) sets the running maximum from one token repeated; the other tokens that
    // follow have other keys, some with larger exponents. Key weights scaled by 2.5 spread the exponents, so the
    // maximum rises by more than 1: the sums are multiplied by exp(c_old − c_new) < 1/e, far from a rounding.
    TransformerModel<double> model(tiny("performer"));
    model.init_weights(17, /*strong=*/true);
    const int d = model.cfg.d, V = model.cfg.vocab_size;
    for (int l = 0; l < model.cfg.n_layers; l++)  // larger keys: exponents spread wider, so the maximum jumps more
        for (int r = 0; r < d; r++)
            for (int j = d; j < 2 * d; j++) model.p.layers[l].w_qkv[(size_t)r * 3 * d + j] *= 2.5;
    std::vector<int> tokens(kT, 0);
    Rng rng(4);
    for (int t = kT / 2; t < kT; t++) tokens[t] = 1 + rng.below(V - 1);  // the same token first, then others
    const std::vector<double> want = full_forward(model, favor_attention(), tokens);
    BaselineDecodeState<double> st;
    decode_init(st, model);
    std::vector<double> got(V);
    decode_prefill(model, st, tokens.data(), kT / 2, got.data());
    double worst = rel_err(got.data(), want.data() + (size_t)(kT / 2 - 1) * V, V);
    std::vector<double> max_before;
    for (const BaselineLayerCache<double>& lc : st.layers)
        max_before.insert(max_before.end(), lc.key_max.begin(), lc.key_max.end());
    int64_t rescales = 0;
    for (int t = kT / 2; t < kT; t++) {
        decode_step(model, st, tokens[t], got.data());
        worst = std::max(worst, rel_err(got.data(), want.data() + (size_t)t * V, V));
    }
    double largest_jump = 0;
    size_t i = 0;
    for (const BaselineLayerCache<double>& lc : st.layers) {
        rescales += lc.rescales;
        for (double c : lc.key_max) largest_jump = std::max(largest_jump, c - max_before[i++]);
    }
    CHECK(rescales > 0);
    CHECK(largest_jump > 1.0);  // the sums were multiplied by at most exp(−1): a real rescale, not a rounding
    CHECK(worst < 1e-12);
    MESSAGE("performer after a prefill of one repeated token: " << rescales << " rescales, largest rise of the key "
                                                                << "maximum " << largest_jump << ", max rel error "
                                                                << worst);
}

TEST_CASE("bad tokens, too many tokens, a non-causal model and a foreign state are clear errors that change nothing") {
    TransformerModel<double> model(tiny("transformer++"));
    model.init_weights(1);
    const int V = model.cfg.vocab_size;
    const std::vector<int> tokens = random_tokens(V, 8, 2);
    const std::vector<double> want = full_forward(model, softmax_attention(), tokens);
    std::vector<double> got(V);

    BaselineDecodeState<double> st;
    CHECK_THROWS_WITH_AS(decode_step(model, st, 0, got.data()), doctest::Contains("never initialised"), flash_error);
    decode_init(st, model, /*max_positions=*/8);
    decode_prefill(model, st, tokens.data(), 4, got.data());
    for (int bad : {-1, V}) {
        CHECK_THROWS_WITH_AS(decode_step(model, st, bad, got.data()), doctest::Contains("out of range for vocab_size"),
                             flash_error);
        std::vector<int> with_bad = {tokens[4], bad};
        CHECK_THROWS_WITH_AS(decode_prefill(model, st, with_bad.data(), 2, got.data()),
                             doctest::Contains("out of range"), flash_error);
    }
    CHECK(st.pos == 4);
    CHECK(st.layers[0].k.size() == (size_t)4 * model.cfg.d);  // the refused tokens left nothing in the cache
    // Too many: 8 positions, 4 used; 5 more are refused whole, then the 4 that fit still decode exactly.
    CHECK_THROWS_WITH_AS(decode_prefill(model, st, tokens.data(), 5, got.data()),
                         doctest::Contains("exceed the decoder's 8 positions"), flash_error);
    CHECK(st.pos == 4);
    decode_prefill(model, st, tokens.data() + 4, 4, got.data());
    CHECK(rel_err(got.data(), want.data() + (size_t)7 * V, V) < 1e-12);
    CHECK_THROWS_WITH_AS(decode_step(model, st, tokens[0], got.data()), doctest::Contains("8 positions"),
                         flash_error);
    CHECK(st.pos == 8);

    TransformerConfig other = tiny("transformer++");
    other.d = 32;
    TransformerModel<double> wider(other);
    CHECK_THROWS_WITH_AS(decode_step(wider, st, 0, (double*)nullptr), doctest::Contains("does not belong to this model"),
                         flash_error);

    for (const char* arch : {"transformer++", "performer"}) {
        TransformerConfig c = tiny(arch);
        c.causal = false;
        TransformerModel<double> masked_lm(c);
        BaselineDecodeState<double> s2;
        CHECK_THROWS_WITH_AS(decode_init(s2, masked_lm), doctest::Contains("non-causal"), flash_error);
    }
    TransformerModel<double> performer(tiny("performer"));
    BaselineDecodeState<double> s3;
    CHECK_THROWS_WITH_AS(decode_init(s3, performer, combiner_attention(4)), doctest::Contains("Transformer++ weights"),
                         flash_error);
    CHECK_THROWS_WITH_AS(decode_init(s3, model, combiner_attention(0)), doctest::Contains("block"), flash_error);
}

// The Combiner arch (BASELINES.md §3): the model's own forward equals the test's Combiner forward built from the ops,
// and its decoder, picked by the arch, equals that forward after every prefill length.
TEST_CASE("Combiner arch: the model's forward against its decoder") {
    for (bool strong : {false, true}) {
        TransformerModel<double> model(tiny("combiner"));
        REQUIRE(kT % model.cfg.block == 0);
        model.init_weights(7, strong);
        const std::vector<int> tokens = random_tokens(model.cfg.vocab_size, kT, 3);
        const BaselineAttention attention = baseline_attention(model.cfg);
        CHECK(attention.kind == BaselineAttention::combiner);
        CHECK(attention.block == model.cfg.block);
        const int V = model.cfg.vocab_size;
        model.forward(tokens.data(), nullptr, 1, kT);
        const std::vector<double> own(model.acts.logits, model.acts.logits + (size_t)kT * V);
        const std::vector<double> ref = combiner_forward(model, tokens, model.cfg.block);
        CHECK(rel_err(own.data(), ref.data(), own.size()) < 1e-12);
        const double worst = check_every_prefill(model, attention, tokens, own);
        MESSAGE("combiner arch, " << (strong ? "strong" : "paper") << " init: max rel error " << worst);
        CHECK(worst < 1e-12);
    }
}
