// decode_baselines.cpp: cached decoding of Transformer++, Performer and the Combiner. Read decode_baselines.h first.
//
// A step runs transformer.cpp's ops on one token row (N = 1), so it computes the same function as the full forward;
// only the attention of one query against the cache is written here (softmax, FAVOR+), or taken from combiner.h.
#include "decode_baselines.h"

#include "formats/config.h"     // transformer_shape_mismatch
#include "formats/json_file.h"  // clip_text

#include <cblas.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>

BaselineAttention baseline_attention(const TransformerConfig& c) {
    if (c.arch == "transformer++") return {BaselineAttention::softmax, 0};
    if (c.arch == "performer") return {BaselineAttention::favor, 0};
    if (c.arch == "combiner") return {BaselineAttention::combiner, c.block};
    FLASH_FAIL("no cached decoder for the architecture '" << clip_text(c.arch) << "'",
               "this decoder knows transformer++ and performer (and the Combiner through BaselineAttention)");
}

template <typename Real>
size_t BaselineDecodeState<Real>::cache_bytes() const {
    size_t n = 0;
    for (const BaselineLayerCache<Real>& lc : layers) {
        n += (lc.k.size() + lc.v.size() + lc.key_max.size()) * sizeof(Real) + lc.sums.size() * sizeof(double);
        for (const CombinerCache<Real>& cc : lc.combiner)
            n += (cc.q.size() + cc.k.size() + cc.v.size() + cc.k_hat.size() + cc.v_hat.size()) * sizeof(Real);
    }
    return n;
}

template <typename Real>
void decode_init(BaselineDecodeState<Real>& state, const TransformerModel<Real>& model, BaselineAttention attention,
                 int64_t max_positions) {
    const TransformerConfig& c = model.cfg;
    FLASH_CHECK(c.causal, "cached decoding needs a causal model, and this " << c.arch << " is non-causal",
                "a non-causal (masked-LM) model attends to later tokens, so it cannot generate left to right; run "
                "TransformerModel::forward on whole sequences instead");
    FLASH_CHECK(attention.kind != BaselineAttention::favor || c.performer(),
                "the FAVOR+ decoder needs a Performer model (its Omega), and this one is " << c.arch, "");
    FLASH_CHECK(attention.kind != BaselineAttention::combiner || !c.performer(),
                "the Combiner decoder takes Transformer++ weights, and this model is a Performer", "");
    FLASH_CHECK(attention.kind != BaselineAttention::combiner || attention.block >= 1,
                "the Combiner's span length block must be >= 1, got " << attention.block, "use the model's block");
    FLASH_CHECK(max_positions >= 0, "max_positions must be >= 0 (0: no limit of our own), got " << max_positions, "");
    const int64_t limit = attention.kind == BaselineAttention::softmax ? INT_MAX : std::numeric_limits<int64_t>::max();
    const int d = c.d, H = c.n_heads, hd = c.head_dim(), m = c.features, f = c.ffn;
    state.cfg = c;
    state.attention = attention;
    state.pos = 0;
    state.max_positions = max_positions == 0 ? limit : std::min(max_positions, limit);
    state.layers.assign(c.n_layers, BaselineLayerCache<Real>{});
    for (BaselineLayerCache<Real>& lc : state.layers) {
        if (attention.kind == BaselineAttention::favor) {
            lc.sums.assign((size_t)H * m * (hd + 1), 0.0);
            lc.key_max.assign(H, -std::numeric_limits<Real>::infinity());
        }
        if (attention.kind == BaselineAttention::combiner) lc.combiner.emplace_back(H, hd, attention.block);
    }
    state.rope_cos.assign(hd / 2, 0.0);
    state.rope_sin.assign(hd / 2, 0.0);
    for (std::vector<Real>* row : {&state.x, &state.x_mid, &state.xn, &state.o}) row->assign(d, Real(0));
    state.qkv.assign(3 * (size_t)d, Real(0));
    state.gu.assign(2 * (size_t)f, Real(0));
    state.sg.assign(f, Real(0));
    state.z.assign(f, Real(0));
    state.scores.clear();
    if (attention.kind == BaselineAttention::favor) {
        state.phq.assign((size_t)H * m, Real(0));
        state.uk.assign((size_t)H * m, Real(0));
        state.num.assign(hd + 1, 0.0);
    }
}

template <typename Real>
void decode_init(BaselineDecodeState<Real>& state, const TransformerModel<Real>& model, int64_t max_positions) {
    decode_init(state, model, baseline_attention(model.cfg), max_positions);
}

// The state must have been made by decode_init for a model of this shape (cheap: called once per token).
template <typename Real>
static void check_state(const TransformerModel<Real>& model, const BaselineDecodeState<Real>& state) {
    const std::string diff = state.layers.empty() ? "" : transformer_shape_mismatch(state.cfg, model.cfg);
    FLASH_CHECK(!state.layers.empty() && diff.empty() && state.cfg.arch == model.cfg.arch,
                "the decode state does not belong to this model"
                    << (state.layers.empty() ? " (it was never initialised)" : " (" + diff + ")"),
                "call decode_init(state, model) first");
}

// Tokens [0, n) may be fed: each id in [0, V), and the state has room for them. Nothing changes when they fail.
template <typename Real>
static void check_tokens(const BaselineDecodeState<Real>& state, const int* tokens, int64_t n) {
    FLASH_CHECK(n >= 0, "negative token count " << n, "");
    FLASH_CHECK(n <= state.max_positions - state.pos,
                n << " more token(s) at position " << state.pos << " exceed the decoder's " << state.max_positions
                  << " positions",
                "start a new sequence, or give decode_init a larger max_positions (a Transformer++ KV cache grows by "
                "2·d values per layer and token)");
    const int V = state.cfg.vocab_size;
    for (int64_t i = 0; i < n; i++)
        FLASH_CHECK(tokens[i] >= 0 && tokens[i] < V, "token id " << tokens[i] << " at position " << state.pos + i
                                                                 << " is out of range for vocab_size " << V,
                    "the tokenizer and the model disagree; use the tokenizer the model was trained with");
}

// Softmax attention of one query row against every cached key (BASELINES.md §1), as softmax_attention_forward
// computes its row: scores by BLAS, the max in Real, the sum in double, P = exp(S − lse), o = P · V.
// o (d); q (d) rotated; k, v (n, d) token rows; scores (n) scratch
template <typename Real>
static void softmax_attention_one_query(Real* o, Real* scores, const Real* q, const Real* k, const Real* v, int n, int H,
                                        int hd) {
    const int d = H * hd;
    const Real scale = Real(1) / std::sqrt((Real)hd);
    for (int head = 0; head < H; head++) {
        const size_t col = (size_t)head * hd;
        gemm(false, true, 1, n, hd, scale, q + col, hd, k + col, d, Real(0), scores, n);  // scores = q · K_headᵀ / √h
        Real mx = scores[0];
        for (int b = 1; b < n; b++) mx = std::max(mx, scores[b]);
        double sum = 0;
        for (int b = 0; b < n; b++) sum += std::exp((double)(scores[b] - mx));
        const Real lse = (Real)(mx + std::log(sum));
        for (int b = 0; b < n; b++) scores[b] = std::exp(scores[b] - lse);
        gemm(false, false, 1, hd, n, Real(1), scores, n, v + col, d, Real(0), o + col, hd);  // o = P · V_head
    }
}

// FAVOR+ for one token (BASELINES.md §2), every head: the key joins the running sums, then the query reads them.
//   u = the key's exponents; c_new = max_j u_j; if c_new > key_max: sums *= exp(key_max − c_new), key_max = c_new;
//   sums += φ(k)ᵀ [v | 1] with φ(k) = exp(u − key_max)/sqrt(m);   [num | den] = φ(q) · sums;   o = num/den
// o (d); q, k, v (d) rotated q and k; omega (m, h)
template <typename Real>
static void favor_attention_one_token(Real* o, BaselineLayerCache<Real>& cache, BaselineDecodeState<Real>& st,
                                      const Real* q, const Real* k, const Real* v, const Real* omega, int H, int hd,
                                      int m) {
    const int w = hd + 1;
    favor_features_forward(st.phq.data(), q, omega, H, 1, hd, m, /*stabilise=*/true);
    favor_exponents_forward(st.uk.data(), k, omega, H, hd, m);
    for (int head = 0; head < H; head++) {
        Real* u = st.uk.data() + (size_t)head * m;
        double* sums = cache.sums.data() + (size_t)head * m * w;
        const Real c_new = *std::max_element(u, u + m);
        Real& key_max = cache.key_max[head];
        if (c_new > key_max) {
            // The first key only sets it (the sums are still zero); a later one rescales what the sums hold.
            if (std::isfinite((double)key_max)) {
                const double factor = std::exp((double)key_max - (double)c_new);
                for (size_t i = 0; i < (size_t)m * w; i++) sums[i] *= factor;
                cache.rescales++;
            }
            key_max = c_new;
        }
        favor_exp(u, key_max, (size_t)m, m);  // u now holds φ(k)
        const Real* vh = v + (size_t)head * hd;
        for (int j = 0; j < m; j++) {
            double* row = sums + (size_t)j * w;
            const double phi = u[j];
            for (int i = 0; i < hd; i++) row[i] += phi * vh[i];
            row[hd] += phi;
        }
        const Real* fq = st.phq.data() + (size_t)head * m;
        std::fill(st.num.begin(), st.num.end(), 0.0);
        for (int j = 0; j < m; j++) {
            const double* row = sums + (size_t)j * w;
            const double phi = fq[j];
            for (int i = 0; i < w; i++) st.num[i] += phi * row[i];
        }
        for (int i = 0; i < hd; i++) o[(size_t)head * hd + i] = (Real)(st.num[i] / st.num[hd]);
    }
}

template <typename Real>
void decode_step(const TransformerModel<Real>& model, BaselineDecodeState<Real>& state, int token, Real* logits_out) {
    check_state(model, state);
    check_tokens(state, &token, 1);
    SingleThreaded one_thread;
    const TransformerConfig& c = model.cfg;
    const int d = c.d, H = c.n_heads, hd = c.head_dim(), f = c.ffn, V = c.vocab_size, half = hd / 2;

    // RoPE angles of this position, as rope_tables computes them, for any position.
    const double t = (double)state.pos;
    for (int i = 0; i < half; i++) {
        const double theta = t * rope_frequency(i, hd, c.rope_base);
        state.rope_cos[i] = std::cos(theta);
        state.rope_sin[i] = std::sin(theta);
    }

    Real *x = state.x.data(), *x_mid = state.x_mid.data(), *xn = state.xn.data(), *o = state.o.data();
    Real *q = state.qkv.data(), *k = q + d, *v = q + 2 * d;  // each H rows of h: the heads of this token
    std::memcpy(x, model.p.wte + (size_t)token * d, sizeof(Real) * d);
    for (int l = 0; l < c.n_layers; l++) {
        const BlockParams<Real>& lp = model.p.layers[l];
        BaselineLayerCache<Real>& cache = state.layers[l];
        // x_mid = x + attention(rmsnorm_a(x))
        rmsnorm_forward(xn, &state.rstd, x, lp.attn_norm_g, 1, d, c.eps);
        matmul_forward(state.qkv.data(), xn, lp.w_qkv, (const Real*)nullptr, 1, d, 3 * d);
        rope_forward(q, state.rope_cos.data(), state.rope_sin.data(), H, 1, hd);
        rope_forward(k, state.rope_cos.data(), state.rope_sin.data(), H, 1, hd);
        switch (state.attention.kind) {
            case BaselineAttention::softmax: {
                // This token joins the cache first: it attends to itself.
                cache.k.insert(cache.k.end(), k, k + d);
                cache.v.insert(cache.v.end(), v, v + d);
                const int n = (int)(cache.k.size() / d);
                state.scores.resize(n);
                softmax_attention_one_query(o, state.scores.data(), q, cache.k.data(), cache.v.data(), n, H, hd);
                break;
            }
            case BaselineAttention::favor:
                favor_attention_one_token(o, cache, state, q, k, v, lp.omega, H, hd, c.features);
                break;
            case BaselineAttention::combiner:
                cache.combiner[0].step(o, q, k, v);
                break;
        }
        matmul_forward(x_mid, o, lp.w_o, (const Real*)nullptr, 1, d, d);
        residual_forward(x_mid, x, (size_t)d);
        // x = x_mid + ffn(rmsnorm_f(x_mid))
        rmsnorm_forward(xn, &state.rstd, x_mid, lp.ffn_norm_g, 1, d, c.eps);
        matmul_forward(state.gu.data(), xn, lp.w_13, (const Real*)nullptr, 1, d, 2 * f);
        swiglu_forward(state.z.data(), state.sg.data(), state.gu.data(), 1, f);
        matmul_forward(x, state.z.data(), lp.w_2, (const Real*)nullptr, 1, f, d);
        residual_forward(x, x_mid, (size_t)d);
    }
    if (logits_out) {
        rmsnorm_forward(xn, &state.rstd, x, model.p.norm_f_g, 1, d, c.eps);
        logits_forward(logits_out, xn, model.p.wte, 1, d, V);
    }
    state.pos++;
}

// The caches after a forward over a whole prompt of T tokens from position 0 (B = 1), from its saved rotated k and v.
template <typename Real>
static void fill_caches_from_forward(const TransformerModel<Real>& model, BaselineDecodeState<Real>& state, int T) {
    const TransformerConfig& c = model.cfg;
    const int d = c.d, H = c.n_heads, hd = c.head_dim(), m = c.features, w = hd + 1;
    for (int l = 0; l < c.n_layers; l++) {
        const BlockActs<Real>& la = model.acts.layers[l];
        BaselineLayerCache<Real>& cache = state.layers[l];
        if (state.attention.kind == BaselineAttention::softmax) {
            // (H, T, h) heads -> (T, d) token rows
            cache.k.resize((size_t)T * d);
            cache.v.resize((size_t)T * d);
            merge_heads_forward(cache.k.data(), la.k, 1, T, H, hd);
            merge_heads_forward(cache.v.data(), la.v, 1, T, H, hd);
        } else {
            // The key maximum over the prompt is the running maximum after it: the forward's own stabiliser.
            std::vector<Real> phk((size_t)H * T * m), v1((size_t)T * w), s((size_t)m * w);
            favor_exponents_forward(phk.data(), la.k, model.p.layers[l].omega, H * T, hd, m);
            for (int head = 0; head < H; head++) {
                Real* u = phk.data() + (size_t)head * T * m;
                cache.key_max[head] = *std::max_element(u, u + (size_t)T * m);
                favor_exp(u, cache.key_max[head], (size_t)T * m, m);
                for (int r = 0; r < T; r++) {
                    std::memcpy(v1.data() + (size_t)r * w, la.v + ((size_t)head * T + r) * hd, sizeof(Real) * hd);
                    v1[(size_t)r * w + hd] = Real(1);
                }
                gemm(true, false, m, w, T, Real(1), u, m, v1.data(), w, Real(0), s.data(), w);  // φ(K)ᵀ [V | 1]
                std::copy(s.begin(), s.end(), cache.sums.begin() + (size_t)head * m * w);
            }
        }
    }
}

template <typename Real>
void decode_prefill(TransformerModel<Real>& model, BaselineDecodeState<Real>& state, const int* tokens, int64_t n,
                    Real* logits_out) {
    check_state(model, state);
    check_tokens(state, tokens, n);
    const bool own_forward = state.attention.kind == baseline_attention(model.cfg).kind &&
                             state.attention.kind != BaselineAttention::combiner;
    if (state.pos == 0 && n > 0 && own_forward) {
        FLASH_CHECK(n <= INT_MAX, "prompt of " << n << " tokens is too long for one forward pass",
                    "prefill it in pieces: the first through decode_prefill, the rest through decode_prefill too "
                    "(they then go token by token)");
        const int T = (int)n;
        model.forward(tokens, nullptr, 1, T);
        fill_caches_from_forward(model, state, T);
        state.pos = n;
        const int V = model.cfg.vocab_size;
        if (logits_out) std::copy(model.acts.logits + (size_t)(T - 1) * V, model.acts.logits + (size_t)T * V, logits_out);
        return;
    }
    for (int64_t i = 0; i < n; i++) decode_step(model, state, tokens[i], i == n - 1 ? logits_out : nullptr);
}

// =================================================================================================================
// Explicit instantiations

#define DECODE_BASELINES_INSTANTIATE(Real)                                                                             \
    template struct BaselineDecodeState<Real>;                                                                         \
    template void decode_init(BaselineDecodeState<Real>&, const TransformerModel<Real>&, BaselineAttention, int64_t);  \
    template void decode_init(BaselineDecodeState<Real>&, const TransformerModel<Real>&, int64_t);                     \
    template void decode_prefill(TransformerModel<Real>&, BaselineDecodeState<Real>&, const int*, int64_t, Real*);     \
    template void decode_step(const TransformerModel<Real>&, BaselineDecodeState<Real>&, int, Real*);
DECODE_BASELINES_INSTANTIATE(float)
DECODE_BASELINES_INSTANTIATE(double)
