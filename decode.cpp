// decode.cpp: cached FLASH decoding (FLASH.md §3) and sampling. Read decode.h first.
//
// A decode step runs the ops of flash.cpp on one row (N = 1), so it computes the same function as the full
// forward; only the two attention parts are written here, for one query against the cache.
#include "decode.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <numeric>
#include <optional>
#include <string>

#include "formats/config.h"

template <typename Real>
size_t DecodeState<Real>::cache_bytes() const {
    size_t n = 0;
    for (const DecodeLayerCache<Real>& c : layers) n += c.m.size() + c.kq.size() + c.v.size() + c.kl.size();
    return n * sizeof(Real);
}

template <typename Real>
void decode_init(DecodeState<Real>& state, const FlashModel<Real>& model) {
    const FlashConfig& c = model.cfg;
    FLASH_CHECK(c.causal, "cached decoding needs a causal model, and this one is non-causal",
                "a non-causal (masked-LM) model's global sum includes future chunks, so it cannot generate left to "
                "right; run FlashModel::forward on whole sequences instead");
    const size_t e = c.e, s = c.s, C = c.chunk;
    state.cfg = c;
    state.pos = 0;
    state.layers.assign(c.n_layers, DecodeLayerCache<Real>{});
    for (DecodeLayerCache<Real>& lc : state.layers) {
        lc.m.assign(s * e, Real(0));
        lc.kq.assign(C * s, Real(0));
        lc.v.assign(C * e, Real(0));
        lc.kl.assign(C * s, Real(0));
    }
    // rope_tables' frequencies, so that the angles are bit-identical to the full forward's.
    state.inv_freq.resize(s / 2);
    for (int i = 0; i < (int)s / 2; i++) state.inv_freq[i] = rope_frequency(i, (int)s, c.rope_base);
    state.rope_cos.assign(s / 2, 0.0);
    state.rope_sin.assign(s / 2, 0.0);
    for (std::vector<Real>* row : {&state.qq, &state.kq, &state.ql, &state.kl}) row->assign(s, Real(0));
    state.rows.size_for(c, 1);
}

template <typename Real>
void DecodeRows<Real>::size_for(const FlashConfig& c, int n) {
    const size_t rows = (size_t)n, I = c.inner();
    if (rstd.size() == rows && x.size() == rows * c.d && h.size() == rows * I && o.size() == rows * c.e) return;
    for (std::vector<Real>* v : {&x, &x_next, &xn}) v->assign(rows * c.d, Real(0));
    rstd.assign(rows, Real(0));
    for (std::vector<Real>* v : {&h, &act}) v->assign(rows * I, Real(0));
    for (std::vector<Real>* v : {&o, &gated}) v->assign(rows * c.e, Real(0));
}

template <typename Real>
void decode_batch_init(DecodeBatch<Real>& batch, const FlashModel<Real>& model, int n) {
    FLASH_CHECK(n >= 1, "a decode batch needs at least one sequence, got " << n, "");
    batch.seqs.assign(n, DecodeState<Real>{});
    for (DecodeState<Real>& st : batch.seqs) decode_init(st, model);
    batch.rows.size_for(model.cfg, n);
}

// The state must have been made by decode_init for a model of this shape (cheap: called once per token).
template <typename Real>
static void check_state(const FlashModel<Real>& model, const DecodeState<Real>& state) {
    const FlashConfig &a = model.cfg, &b = state.cfg;
    FLASH_CHECK(!state.layers.empty() && a.vocab_size == b.vocab_size && a.d == b.d && a.e == b.e && a.s == b.s &&
                    a.n_layers == b.n_layers && a.chunk == b.chunk && a.causal == b.causal && a.eps == b.eps &&
                    a.rope_base == b.rope_base,
                "the decode state does not belong to this model"
                    << (state.layers.empty() ? " (it was never initialised)"
                                             : " (" + config_shape_mismatch(b, a) + ")"),
                "call decode_init(state, model) first");
}

// M += kl_chunkᵀ · v_chunk / C: the finished chunk's P joins the running sum (FLASH.md §1, §3).
// P is one product in double (dgemm on double copies of the chunk's rows), whatever Real is, so that M does not drift
// over many chunks. (A loop of scalar double multiply-adds took ~8 ms per layer here, once every C tokens: most of a
// decoded token's time, and nearly all of a batched step's.)
// m (s,e); kl (C,s); v (C,e) with row stride ldv
template <typename Real>
static void add_chunk_to_m(Real* m, const Real* kl, const Real* v, int ldv, int C, int s, int e) {
    std::vector<double> kl_d((size_t)C * s), v_d((size_t)C * e), p((size_t)s * e);
    std::copy(kl, kl + (size_t)C * s, kl_d.begin());
    for (int c = 0; c < C; c++) std::copy(v + (size_t)c * ldv, v + (size_t)c * ldv + e, v_d.begin() + (size_t)c * e);
    gemm(true, false, s, e, C, 1.0 / C, kl_d.data(), s, v_d.data(), e, 0.0, p.data(), e);
    for (size_t i = 0; i < p.size(); i++) m[i] += (Real)p[i];
}

// Local attention of one query (row a of its chunk) over the chunk's cached rows 0..a (causal, diagonal included):
//   S[b] = (qq·kq[b]) / C + w[a−b];   quad = Σ_{b≤a} relu(S[b])² · v[b]
// quad (e); qq (s); kq_rows (C,s); v_rows (C,e); rel_bias (C)
template <typename Real>
static void local_attention_one_query(Real* quad, const Real* qq, const Real* kq_rows, const Real* v_rows,
                                      const Real* rel_bias, int a, int C, int s, int e) {
    std::fill(quad, quad + e, Real(0));
    for (int b = 0; b <= a; b++) {
        const Real* k = kq_rows + (size_t)b * s;
        double dot = 0;  // in double whatever Real is, in vector lanes (the sum's order is the compiler's)
#pragma omp simd reduction(+ : dot)
        for (int j = 0; j < s; j++) dot += (double)qq[j] * k[j];
        const Real r = std::max(Real(0), (Real)(dot / C) + rel_bias[rel_bias_index(a, b, C, /*causal=*/true)]);
        const Real weight = r * r;
        if (weight == Real(0)) continue;
        const Real* vr = v_rows + (size_t)b * e;
        for (int j = 0; j < e; j++) quad[j] += weight * vr[j];
    }
}

// One step of n sequences (n = 1: decode_step; n > 1: decode_batch_step). The products and the elementwise ops run
// on the n rows together; the attention runs per sequence, against its own cache, at its own position.
// Threads: one token's work is too small to share (decode.h: SingleThreaded), but n sequences' own work (each reads
// its own cache, ~3 MB a step for the small config) is shared among the threads when there are at least as many
// sequences as threads; the products of n rows are then split by gemm as in training.
template <typename Real>
static void decode_rows(const FlashModel<Real>& model, DecodeState<Real>* const* seqs, int n, const int* tokens,
                        Real* logits_out, DecodeRows<Real>& rows) {
    const bool share = n > 1 && omp_get_max_threads() > 1 && n >= omp_get_max_threads();
    std::optional<SingleThreaded> one_thread;
    if (!share) one_thread.emplace();
    const FlashConfig& c = model.cfg;
    const int d = c.d, e = c.e, s = c.s, I = c.inner(), C = c.chunk, V = c.vocab_size, half = c.s / 2;
    rows.size_for(c, n);
    for (int i = 0; i < n; i++) {
        DecodeState<Real>& st = *seqs[i];
        check_state(model, st);
        FLASH_CHECK(tokens[i] >= 0 && tokens[i] < V,
                    "token id " << tokens[i] << " at position " << st.pos
                                << (n > 1 ? " of sequence " + std::to_string(i) : std::string())
                                << " is out of range for vocab_size " << V,
                    "the tokenizer and the model disagree; use the tokenizer the model was trained with");
        // RoPE angles of this position, in double (FLASH.md §1), for any position: no table, no length limit.
        const double t = (double)st.pos;
        for (int k = 0; k < half; k++) {
            const double theta = t * st.inv_freq[k];
            st.rope_cos[k] = std::cos(theta);
            st.rope_sin[k] = std::sin(theta);
        }
        std::memcpy(rows.x.data() + (size_t)i * d, model.p.wte + (size_t)tokens[i] * d, sizeof(Real) * d);
    }

    Real *x = rows.x.data(), *x_next = rows.x_next.data();
    for (int l = 0; l < c.n_layers; l++) {
        const LayerParams<Real>& lp = model.p.layers[l];
        scalenorm_forward(rows.xn.data(), rows.rstd.data(), x, lp.norm_g, n, d, c.eps);
        matmul_forward(rows.h.data(), rows.xn.data(), lp.w_in, lp.b_in, n, d, I);
        silu_forward(rows.act.data(), rows.h.data(), (size_t)n * I);
        // Each sequence against its own cache: in parallel when the step shares its threads (then on one BLAS thread
        // each: for_each_chunk), else one after the other on this one.
        for_each_chunk(n, [&](int i) {
            DecodeState<Real>& st = *seqs[i];
            DecodeLayerCache<Real>& cache = st.layers[l];
            const int a = (int)(st.pos % C);  // row of this token inside its chunk
            const Real *v = rows.act.data() + (size_t)i * I + e, *z = rows.act.data() + (size_t)i * I + 2 * e;
            Real* o = rows.o.data() + (size_t)i * e;
            offset_scale_forward(st.qq.data(), st.kq.data(), st.ql.data(), st.kl.data(), z, I, lp.gamma, lp.beta,
                                 1, s);
            for (Real* head : {st.qq.data(), st.kq.data(), st.ql.data(), st.kl.data()})
                rope_forward(head, st.rope_cos.data(), st.rope_sin.data(), 1, 1, s);
            // This token joins the chunk cache before attending: the local part includes the diagonal.
            std::memcpy(cache.kq.data() + (size_t)a * s, st.kq.data(), sizeof(Real) * s);
            std::memcpy(cache.v.data() + (size_t)a * e, v, sizeof(Real) * e);
            std::memcpy(cache.kl.data() + (size_t)a * s, st.kl.data(), sizeof(Real) * s);
            // o = quad + lin, lin = ql · M (M covers the finished chunks only: the exclusive sum); a one-row
            // gemm is a matrix-vector product (ops.cpp), which reads M once
            local_attention_one_query(o, st.qq.data(), cache.kq.data(), cache.v.data(), lp.rel_bias, a, C, s, e);
            gemm(false, false, 1, e, s, Real(1), st.ql.data(), s, cache.m.data(), e, Real(1), o, e);
        });
        gate_forward(rows.gated.data(), rows.act.data(), I, rows.o.data(), n, e);
        matmul_forward(x_next, rows.gated.data(), lp.w_out, lp.b_out, n, e, d);
        residual_forward(x_next, x, (size_t)n * d);
        std::swap(x, x_next);
        // A chunk that is complete: its P joins M, and its rows are overwritten from the next token on.
        for (int i = 0; i < n; i++) {
            DecodeLayerCache<Real>& cache = seqs[i]->layers[l];
            if (seqs[i]->pos % C == C - 1) add_chunk_to_m(cache.m.data(), cache.kl.data(), cache.v.data(), e, C, s, e);
        }
    }
    if (logits_out) {
        scalenorm_forward(rows.xn.data(), rows.rstd.data(), x, model.p.norm_f_g, n, d, c.eps);
        logits_forward(logits_out, rows.xn.data(), model.p.wte, n, d, V);
    }
    for (int i = 0; i < n; i++) seqs[i]->pos++;
}

template <typename Real>
void decode_step(const FlashModel<Real>& model, DecodeState<Real>& state, int token, Real* logits_out) {
    DecodeState<Real>* one = &state;
    decode_rows(model, &one, 1, &token, logits_out, state.rows);
}

template <typename Real>
void decode_batch_step(const FlashModel<Real>& model, DecodeBatch<Real>& batch, const int* tokens, Real* logits_out) {
    FLASH_CHECK(!batch.seqs.empty(), "the decode batch is empty", "call decode_batch_init(batch, model, n) first");
    std::vector<DecodeState<Real>*> seqs;  // n pointers: the only allocation of a batched step
    seqs.reserve(batch.seqs.size());
    for (DecodeState<Real>& st : batch.seqs) seqs.push_back(&st);
    decode_rows(model, seqs.data(), (int)seqs.size(), tokens, logits_out, batch.rows);
}

template <typename Real>
void decode_prefill(FlashModel<Real>& model, DecodeState<Real>& state, const int* tokens, int64_t n, Real* logits_out) {
    check_state(model, state);
    FLASH_CHECK(n >= 0, "decode_prefill: negative token count " << n, "");
    const FlashConfig& c = model.cfg;
    const int C = c.chunk, s = c.s, e = c.e, V = c.vocab_size;
    int64_t done = 0;
    if (state.pos == 0 && n >= C) {
        const int64_t n_full = n / C * C;  // the largest multiple-of-C prefix
        FLASH_CHECK(n_full <= INT_MAX, "prompt of " << n << " tokens is too long for one forward pass",
                    "prefill it in pieces: the first piece through decode_prefill, the rest also through "
                    "decode_prefill (they then go token by token)");
        model.forward(tokens, nullptr, 1, (int)n_full);  // checks every token id
        const int G = (int)(n_full / C);
        const size_t last_row = (size_t)(G - 1) * C, se = (size_t)s * e;
        std::vector<Real> v_last((size_t)C * e);  // v = silu(h_v) of the last chunk (the forward keeps h only)
        for (int l = 0; l < c.n_layers; l++) {
            const LayerActs<Real>& la = model.acts.layers[l];
            DecodeLayerCache<Real>& cache = state.layers[l];
            const Real* h_vz = vz_plane(la.h, (int)n_full, e);  // rows [v | z] (flash.h)
            for (int r = 0; r < C; r++)
                silu_forward(v_last.data() + (size_t)r * e, h_vz + (last_row + r) * (e + s), (size_t)e);
            // M after the last chunk = M[G−1] (the exclusive sum before it) + that chunk's P.
            std::copy(la.m + (size_t)(G - 1) * se, la.m + (size_t)G * se, cache.m.begin());
            add_chunk_to_m(cache.m.data(), la.kl + last_row * s, v_last.data(), e, C, s, e);
        }
        state.pos = n_full;
        done = n_full;
        if (done == n && logits_out)
            std::copy(model.acts.logits + (size_t)(n_full - 1) * V, model.acts.logits + (size_t)n_full * V, logits_out);
    }
    // The rest (or everything, when not starting at position 0) token by token; only the last one needs logits.
    for (int64_t i = done; i < n; i++) decode_step(model, state, tokens[i], i == n - 1 ? logits_out : nullptr);
}

// =================================================================================================================
// Sampling

template <typename Real>
std::vector<double> sampling_distribution(const Real* logits, int V, double temperature, int top_k, double top_p) {
    FLASH_CHECK(V > 0, "sampling needs at least one logit, got V=" << V, "");
    FLASH_CHECK(std::isfinite(temperature) && temperature >= 0, "temperature must be >= 0, got " << temperature,
                "use 0 for greedy decoding, 1 for the model's own distribution");
    FLASH_CHECK(top_k >= 0, "top-k must be >= 0, got " << top_k, "use 0 to switch it off");
    FLASH_CHECK(top_p > 0 && top_p <= 1, "top-p must be in (0, 1], got " << top_p, "use 1 to switch it off");
    int best = 0;
    for (int k = 0; k < V; k++) {
        FLASH_CHECK(std::isfinite((double)logits[k]), "logit " << k << " is " << (double)logits[k],
                    "the model produced non-finite values; check the checkpoint");
        if (logits[k] > logits[best]) best = k;  // strict: the lowest id wins a tie
    }
    std::vector<double> p(V, 0.0);
    if (temperature == 0) {
        p[best] = 1.0;
        return p;
    }
    const double mx = logits[best];
    double sum = 0;
    for (int k = 0; k < V; k++) sum += p[k] = std::exp(((double)logits[k] - mx) / temperature);
    for (double& q : p) q /= sum;
    const int keep_k = (top_k > 0 && top_k < V) ? top_k : V;
    if (keep_k == V && top_p >= 1) return p;
    // Rank the tokens, most probable first, ties to the lower id; only the first keep_k ranks are needed.
    std::vector<int> order(V);
    std::iota(order.begin(), order.end(), 0);
    auto more_probable = [&](int i, int j) { return p[i] > p[j] || (p[i] == p[j] && i < j); };
    std::partial_sort(order.begin(), order.begin() + keep_k, order.end(), more_probable);
    int keep = keep_k;
    if (top_p < 1) {
        double kept_mass = 0;  // top-p applies to the distribution renormalised after top-k
        for (int r = 0; r < keep_k; r++) kept_mass += p[order[r]];
        double cumulative = 0;
        for (int r = 0; r < keep_k; r++) {
            cumulative += p[order[r]];
            if (cumulative >= top_p * kept_mass) {
                keep = r + 1;
                break;
            }
        }
    }
    std::vector<double> filtered(V, 0.0);
    double kept = 0;
    for (int r = 0; r < keep; r++) kept += p[order[r]];
    for (int r = 0; r < keep; r++) filtered[order[r]] = p[order[r]] / kept;
    return filtered;
}

template <typename Real>
int sample_token(const Real* logits, int V, double temperature, int top_k, double top_p, Rng& rng) {
    std::vector<double> p = sampling_distribution(logits, V, temperature, top_k, top_p);
    if (temperature == 0) return (int)(std::max_element(p.begin(), p.end()) - p.begin());
    const double u = rng.uniform();  // [0, 1)
    double cumulative = 0;
    int last_possible = 0;
    for (int k = 0; k < V; k++) {
        if (p[k] == 0) continue;
        cumulative += p[k];
        last_possible = k;
        if (u < cumulative) return k;
    }
    return last_possible;  // u landed in the rounding gap above the last cumulative sum
}

// =================================================================================================================
// Explicit instantiations

#define INSTANTIATE(fn)                       \
    template decltype(fn<float>) fn<float>;   \
    template decltype(fn<double>) fn<double>;
INSTANTIATE(decode_init)
INSTANTIATE(decode_prefill)
INSTANTIATE(decode_step)
INSTANTIATE(decode_batch_init)
INSTANTIATE(decode_batch_step)
INSTANTIATE(sampling_distribution)
INSTANTIATE(sample_token)
template struct DecodeState<float>;
template struct DecodeState<double>;
template struct DecodeRows<float>;
template struct DecodeRows<double>;
