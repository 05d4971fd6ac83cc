// transformer.cpp: the CPU reference of the baselines Transformer++, Performer and Combiner (BASELINES.md §1-§3).
// Plain loops and BLAS calls, read top to bottom: configuration, layout, the new ops (each forward next to its
// backward), the model. The shared ops (ops.h) are called for everything the models share with FLASH; Combiner's
// attention is combiner.h's.
//
// Heads: q, k, v, φ and the per-head outputs are (B, H, T, ·), head-major; head bh = b*H + i is the (T, ·) matrix
// at row bh*T. Every attention product is one BLAS call per head (and per chunk for Performer). Heads run in
// parallel, or one after the other with products split among the threads (for_each_chunk, ops.h); every sum over
// rows is ordered, so results are the same from run to run.
#include "transformer.h"

#include "combiner.h"
#include "formats/config.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "formats/json_file.h"
#include "resource_check.h"
#include "value_check.h"

using json = nlohmann::json;

// ====================================================================================================
// Configuration

TransformerConfig transformer_preset(const std::string& name, const std::string& arch) {
    TransformerConfig c;  // defaults are the small config: 4 blocks of 852,480 trained parameters at d = 256
    c.arch = arch;
    if (name == "tiny") {
        // m = 12 is not a multiple of h = 8, so the last Ω block keeps only some of its rows; block 4 gives 4 spans.
        c.vocab_size = 64; c.d = 16; c.n_layers = 2; c.n_heads = 2; c.ffn = 48; c.features = 12; c.block = 4;
        c.seq_len = 16;
    } else if (name != "small") {
        FLASH_FAIL("unknown config preset '" << clip_text(name) << "' for " << clip_text(arch), "use tiny or small, or a JSON file");
    }
    transformer_config_validate(c);
    return c;
}

void transformer_config_validate(const TransformerConfig& c) {
    FLASH_CHECK(is_transformer_arch(c.arch),
                "config field 'arch' is '" << clip_text(c.arch) << "', this model is transformer++, performer or combiner",
                "use \"arch\": \"transformer++\", \"performer\" or \"combiner\"");
    auto positive = [](const char* field, long long v, long long max) {
        FLASH_CHECK(v > 0 && v <= max, "config field '" << field << "' is " << v << ", must be in 1.." << max,
                    "fix '" << field << "' in the config");
    };
    positive("vocab_size", c.vocab_size, 1 << 30);
    positive("d", c.d, 1 << 16);
    positive("n_layers", c.n_layers, 1024);
    positive("n_heads", c.n_heads, 1 << 16);
    positive("ffn", c.ffn, 1 << 20);
    positive("seq_len", c.seq_len, 1 << 24);
    if (c.performer()) positive("features", c.features, 1 << 20);
    if (c.combiner()) {
        positive("block", c.block, 1 << 24);
        FLASH_CHECK(c.seq_len % c.block == 0, "config field 'seq_len' (" << c.seq_len << ") is not a multiple of 'block' ("
                                                  << c.block << "): Combiner trains on whole spans",
                    "choose seq_len = n·block, e.g. " << c.block * std::max(1, c.seq_len / c.block));
    }
    FLASH_CHECK(c.d % c.n_heads == 0 && c.head_dim() % 2 == 0,
                "config fields 'd' (" << c.d << ") and 'n_heads' (" << c.n_heads << ") give heads of width "
                                      << (double)c.d / c.n_heads << ", must be a whole even number",
                "choose n_heads dividing d with d/n_heads even (RoPE rotates pairs), e.g. d/64");
    FLASH_CHECK(std::isfinite(c.eps) && c.eps > 0, "config field 'eps' is " << c.eps << ", must be > 0", "use 1e-6");
    FLASH_CHECK(std::isfinite(c.rope_base) && c.rope_base > 1,
                "config field 'rope_base' is " << c.rope_base << ", must be > 1", "use 10000");
}

double transformer_forward_flops_per_token(const TransformerConfig& c) {
    const double d = c.d, f = c.ffn, T = c.seq_len, m = c.features;
    const double projections = 2 * (d * 3 * d + d * d + d * 2 * f + f * d);  // w_qkv, w_o, w_13, w_2
    double attention = 4 * d * T;  // softmax: Q·Kᵀ and P·V, the causal mask's half counted in full (FLASH.md §4)
    // Performer: φ(q), φ(k) (2·2·h·m per head) and the state products φ(k)ᵀv, φ(q)·S (2·2·m·h per head).
    if (c.performer()) attention = 8 * d * m;
    if (c.combiner()) attention = combiner_attention_flops_per_token(c.d, c.seq_len, c.block);
    return c.n_layers * (projections + attention) + 2 * d * c.vocab_size;  // + the tied logits
}

// ====================================================================================================
// Parameter layout (BASELINES.md §6)

std::vector<TensorSpec> transformer_param_specs(const TransformerConfig& c) {
    std::vector<TensorSpec> specs;
    size_t offset = 0;
    auto add = [&](std::string name, std::vector<int64_t> shape, bool decay, bool trained = true) {
        TensorSpec t;
        t.name = std::move(name);
        t.shape = std::move(shape);
        t.count = 1;
        for (int64_t n : t.shape) t.count *= (size_t)n;
        t.offset = offset;
        offset += t.count;
        t.decay = decay;
        t.trained = trained;
        specs.push_back(std::move(t));
    };
    const int64_t V = c.vocab_size, d = c.d, f = c.ffn;
    add("wte", {V, d}, true);
    for (int l = 0; l < c.n_layers; l++) {
        const std::string p = "layers." + std::to_string(l) + ".";
        add(p + "attn_norm.g", {d}, false);
        add(p + "ffn_norm.g", {d}, false);
        add(p + "w_qkv", {d, 3 * d}, true);
        add(p + "w_o", {d, d}, true);
        add(p + "w_13", {d, 2 * f}, true);
        add(p + "w_2", {f, d}, true);
        if (c.performer()) add(p + "omega", {c.features, c.head_dim()}, false, false);
    }
    add("norm_f.g", {d}, false);
    return specs;
}

static size_t spec_total(const TransformerConfig& c, bool trained) {
    size_t n = 0;
    for (const TensorSpec& t : transformer_param_specs(c))
        if (t.trained == trained) n += t.count;
    return n;
}
size_t transformer_param_count(const TransformerConfig& c) { return spec_total(c, true); }
size_t transformer_fixed_count(const TransformerConfig& c) { return spec_total(c, false); }

template <typename Real>
TransformerParamView<Real> view_transformer_params(Real* base, const TransformerConfig& c, bool with_fixed) {
    const auto specs = transformer_param_specs(c);
    auto at = [&](size_t i) -> Real* {
        const TensorSpec& t = specs[i];
        return (t.trained || with_fixed) ? base + t.offset : nullptr;
    };
    const size_t per_block = c.performer() ? 7 : 6;  // the order of transformer_param_specs
    TransformerParamView<Real> v;
    v.wte = at(0);
    v.layers.resize(c.n_layers);
    for (int l = 0; l < c.n_layers; l++) {
        const size_t i = 1 + per_block * l;
        BlockParams<Real>& bp = v.layers[l];
        bp.attn_norm_g = at(i);
        bp.ffn_norm_g = at(i + 1);
        bp.w_qkv = at(i + 2);
        bp.w_o = at(i + 3);
        bp.w_13 = at(i + 4);
        bp.w_2 = at(i + 5);
        bp.omega = c.performer() ? at(i + 6) : nullptr;
    }
    v.norm_f_g = at(specs.size() - 1);
    return v;
}

template <typename Real>
void view_transformer_activations(TransformerActs<Real>& acts, TransformerGradActs<Real>& g, Real* act_base,
                                  Real* grad_base, const TransformerConfig& c, int B, int T, size_t* n_act,
                                  size_t* n_grad) {
    const size_t N = (size_t)B * T, d = c.d, f = c.ffn, V = c.vocab_size, H = c.n_heads;
    const size_t m = c.performer() ? c.features : 0;
    const bool perf = c.performer();
    Real* base = act_base;
    size_t used = 0;
    // take(n): the next n elements (null when only counting, or when n = 0: the other arch's tensors).
    auto take = [&](size_t n) {
        Real* r = (base && n) ? base + used : nullptr;
        used += n;
        return r;
    };
    acts.layers.resize(c.n_layers);
    for (auto& la : acts.layers) {
        la.x = take(N * d);
        la.rstd_a = take(N);
        la.xn_a = take(N * d);
        la.qkv = take(N * 3 * d);
        la.q = take(N * d);
        la.k = take(N * d);
        la.v = take(N * d);
        la.lse = take(perf ? 0 : N * H);
        la.phq = take(N * H * m);
        la.phk = take(N * H * m);
        la.den = take(perf ? N * H : 0);
        la.comb = take(c.combiner() ? combiner_saved_count(B * H, T, 1, c.head_dim(), c.block) : 0);
        la.oh = take(N * d);
        la.o = take(N * d);
        la.x_mid = take(N * d);
        la.rstd_f = take(N);
        la.xn_f = take(N * d);
        la.gu = take(N * 2 * f);
        la.sg = take(N * f);
        la.z = take(N * f);
    }
    acts.x_final = take(N * d);
    acts.rstd_f = take(N);
    acts.xn_f = take(N * d);
    acts.logits = take(N * V);
    acts.probs = take(N * V);
    acts.losses = take(N);
    *n_act = used;

    base = grad_base;
    used = 0;
    g.dres = take(N * d);
    g.dxn = take(N * d);  // dxn .. dz are contiguous: backward zeroes them in one fill per block
    g.dqkv = take(N * 3 * d);
    g.dq = take(N * d);
    g.dk = take(N * d);
    g.dv = take(N * d);
    g.dphq = take(N * H * m);
    g.dphk = take(N * H * m);
    g.doh = take(N * d);
    g.d_o = take(N * d);
    g.dgu = take(N * 2 * f);
    g.dz = take(N * f);
    g.dlogits = take(N * V);
    *n_grad = used;
}

// gemm, for_each_chunk (heads take the place of chunks) and kColBlock come from ops.h.

// ====================================================================================================
// The ops

// RMSNorm with a vector gain (BASELINES.md §1): y = g ⊙ x · rstd, rstd = 1/sqrt(mean(x²) + eps) saved.
// y (N,d), rstd (N), x (N,d), g (d)
template <typename Real>
void rmsnorm_forward(Real* y, Real* rstd, const Real* x, const Real* g, int N, int d, double eps) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const Real* xr = x + (size_t)n * d;
        double ss = 0;
        for (int j = 0; j < d; j++) ss += (double)xr[j] * xr[j];
        const Real r = (Real)(1.0 / std::sqrt(ss / d + eps));
        rstd[n] = r;
        for (int j = 0; j < d; j++) y[(size_t)n * d + j] = g[j] * xr[j] * r;
    }
}
// Backward of: y = g ⊙ x · rstd.   With r = 1/rstd (BASELINES.md §1):
//   dg += Σ_rows dy ⊙ x / r;   dx += (g ⊙ dy)/r − x·(Σ_j g_j dy_j x_j)/(d·r³)
template <typename Real>
void rmsnorm_backward(Real* dx, Real* dg, const Real* dy, const Real* x, const Real* rstd, const Real* g, int N,
                      int d) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const Real* xr = x + (size_t)n * d;
        const Real* dr = dy + (size_t)n * d;
        double dot = 0;
        for (int j = 0; j < d; j++) dot += (double)g[j] * dr[j] * xr[j];
        const double rs = rstd[n];
        const double c = dot * rs * rs * rs / d;
        for (int j = 0; j < d; j++) dx[(size_t)n * d + j] += (Real)(g[j] * dr[j] * rs - xr[j] * c);
    }
#pragma omp parallel for
    for (int j0 = 0; j0 < d; j0 += kColBlock) {
        const int j1 = std::min(d, j0 + kColBlock);
        double sum[kColBlock] = {};
        for (int n = 0; n < N; n++)
            for (int j = j0; j < j1; j++) sum[j - j0] += (double)dy[(size_t)n * d + j] * x[(size_t)n * d + j] * rstd[n];
        for (int j = j0; j < j1; j++) dg[j] += (Real)sum[j - j0];
    }
}

// Heads out of a token row: y[b,i,t,:] = x[b·T+t, i·h .. i·h+h−1]
// y (B,H,T,h); x (B·T, H·h) with row stride ldx (a column block of qkv: ldx = 3d)
template <typename Real>
void split_heads_forward(Real* y, const Real* x, int ldx, int B, int T, int H, int hd) {
#pragma omp parallel for
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, i = bh % H;
        for (int t = 0; t < T; t++)
            std::memcpy(y + ((size_t)bh * T + t) * hd, x + ((size_t)b * T + t) * ldx + (size_t)i * hd,
                        sizeof(Real) * hd);
    }
}
// Backward of: y[b,i,t,:] = x[b·T+t, i·h ..]   =>   dx[b·T+t, i·h ..] += dy[b,i,t,:]
template <typename Real>
void split_heads_backward(Real* dx, int lddx, const Real* dy, int B, int T, int H, int hd) {
#pragma omp parallel for
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, i = bh % H;
        for (int t = 0; t < T; t++) {
            Real* dst = dx + ((size_t)b * T + t) * lddx + (size_t)i * hd;
            const Real* src = dy + ((size_t)bh * T + t) * hd;
            for (int j = 0; j < hd; j++) dst[j] += src[j];
        }
    }
}

// Heads back into token rows (concatenated): y[b·T+t, i·h + j] = x[b,i,t,j]
// y (B·T, H·h), x (B,H,T,h)
template <typename Real>
void merge_heads_forward(Real* y, const Real* x, int B, int T, int H, int hd) {
#pragma omp parallel for
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, i = bh % H;
        for (int t = 0; t < T; t++)
            std::memcpy(y + ((size_t)b * T + t) * H * hd + (size_t)i * hd, x + ((size_t)bh * T + t) * hd,
                        sizeof(Real) * hd);
    }
}
// Backward of: y[b·T+t, i·h + j] = x[b,i,t,j]   =>   dx[b,i,t,j] += dy[b·T+t, i·h + j]
template <typename Real>
void merge_heads_backward(Real* dx, const Real* dy, int B, int T, int H, int hd) {
#pragma omp parallel for
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, i = bh % H;
        for (int t = 0; t < T; t++) {
            Real* dst = dx + ((size_t)bh * T + t) * hd;
            const Real* src = dy + ((size_t)b * T + t) * H * hd + (size_t)i * hd;
            for (int j = 0; j < hd; j++) dst[j] += src[j];
        }
    }
}

// Softmax attention per head (BASELINES.md §1), on rotated q and k:
//   S[a,b] = q[a]·k[b]/√h, masked to −∞ for b > a (causal);  P = softmax_b(S);  o = P·v;
//   lse[a] = log Σ_b exp S[a,b] is saved instead of P, so backward recomputes P = exp(S − lse) in O(T) memory.
// o (BH,T,h), lse (BH,T), q, k, v (BH,T,h). Two BLAS products per head; one (T,T) scratch.
template <typename Real>
void softmax_attention_forward(Real* o, Real* lse, const Real* q, const Real* k, const Real* v, int BH, int T, int hd,
                               bool causal) {
    const Real scale = Real(1) / std::sqrt((Real)hd);
    struct Scratch {  // one thread's buffers, reused chunk after chunk
        std::vector<Real> P;
    };
    auto scratch = [&] { return Scratch{std::vector<Real>((size_t)T * T)}; };
    for_each_chunk(BH, scratch, [&](int bh, Scratch& sc) {
        auto& [P] = sc;
        const size_t r0 = (size_t)bh * T;
        gemm(false, true, T, T, hd, scale, q + r0 * hd, hd, k + r0 * hd, hd, Real(0), P.data(), T);
#pragma omp parallel for
        for (int a = 0; a < T; a++) {
            Real* row = P.data() + (size_t)a * T;
            const int n_keys = causal ? a + 1 : T;
            Real mx = row[0];
            for (int b = 1; b < n_keys; b++) mx = std::max(mx, row[b]);
            double sum = 0;
            for (int b = 0; b < n_keys; b++) sum += std::exp((double)(row[b] - mx));
            const Real l = (Real)(mx + std::log(sum));
            lse[r0 + a] = l;
            for (int b = 0; b < n_keys; b++) row[b] = std::exp(row[b] - l);
            for (int b = n_keys; b < T; b++) row[b] = Real(0);
        }
        gemm(false, false, T, hd, T, Real(1), P.data(), T, v + r0 * hd, hd, Real(0), o + r0 * hd, hd);
    });
}
// Backward of: P = softmax_b(q·kᵀ/√h, masked); o = P·v   (BASELINES.md §1):
//   dP = do·vᵀ;  dv += Pᵀ·do;  dS = P ⊙ (dP − Σ_b dP ⊙ P);  dq += dS·k/√h;  dk += dSᵀ·q/√h
template <typename Real>
void softmax_attention_backward(Real* dq, Real* dk, Real* dv, const Real* d_o, const Real* lse, const Real* q,
                                const Real* k, const Real* v, int BH, int T, int hd, bool causal) {
    const Real scale = Real(1) / std::sqrt((Real)hd);
    struct Scratch {  // one thread's buffers, reused chunk after chunk
        std::vector<Real> P, dS;
    };
    auto scratch = [&] { return Scratch{std::vector<Real>((size_t)T * T), std::vector<Real>((size_t)T * T)}; };
    for_each_chunk(BH, scratch, [&](int bh, Scratch& sc) {
        auto& [P, dS] = sc;
        const size_t r0 = (size_t)bh * T;
        gemm(false, true, T, T, hd, scale, q + r0 * hd, hd, k + r0 * hd, hd, Real(0), P.data(), T);
        gemm(false, true, T, T, hd, Real(1), d_o + r0 * hd, hd, v + r0 * hd, hd, Real(0), dS.data(), T);  // dP
#pragma omp parallel for
        for (int a = 0; a < T; a++) {
            Real* p = P.data() + (size_t)a * T;
            Real* ds = dS.data() + (size_t)a * T;
            const int n_keys = causal ? a + 1 : T;
            double D = 0;
            for (int b = 0; b < n_keys; b++) {
                p[b] = std::exp(p[b] - lse[r0 + a]);
                D += (double)ds[b] * p[b];
            }
            for (int b = 0; b < n_keys; b++) ds[b] = p[b] * (ds[b] - (Real)D);
            for (int b = n_keys; b < T; b++) p[b] = ds[b] = Real(0);
        }
        gemm(true, false, T, hd, T, Real(1), P.data(), T, d_o + r0 * hd, hd, Real(1), dv + r0 * hd, hd);
        gemm(false, false, T, hd, T, scale, dS.data(), T, k + r0 * hd, hd, Real(1), dq + r0 * hd, hd);
        gemm(true, false, T, hd, T, scale, dS.data(), T, q + r0 * hd, hd, Real(1), dk + r0 * hd, hd);
    });
}

// SwiGLU (BASELINES.md §1): z = silu(gate) ⊙ up, with gu = [gate | up]; sg = silu(gate) is saved.
// z (N,f), sg (N,f), gu (N,2f). silu is FLASH's silu_forward, one row at a time (a nested OpenMP region: serial).
template <typename Real>
void swiglu_forward(Real* z, Real* sg, const Real* gu, int N, int f) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const Real* gate = gu + (size_t)n * 2 * f;
        const Real* up = gate + f;
        Real* s = sg + (size_t)n * f;
        silu_forward(s, gate, (size_t)f);
        for (int j = 0; j < f; j++) z[(size_t)n * f + j] = s[j] * up[j];
    }
}
// Backward of: z = silu(gate) ⊙ up   =>   dgate += silu'(gate) ⊙ (dz ⊙ up);  dup += dz ⊙ silu(gate)
template <typename Real>
void swiglu_backward(Real* dgu, const Real* dz, const Real* gu, const Real* sg, int N, int f) {
#pragma omp parallel
    {
        std::vector<Real> dsg(f);
#pragma omp for
        for (int n = 0; n < N; n++) {
            const Real* gate = gu + (size_t)n * 2 * f;
            const Real* up = gate + f;
            const Real* dzr = dz + (size_t)n * f;
            Real* dgate = dgu + (size_t)n * 2 * f;
            Real* dup = dgate + f;
            for (int j = 0; j < f; j++) {
                dsg[j] = dzr[j] * up[j];
                dup[j] += dzr[j] * sg[(size_t)n * f + j];
            }
            silu_backward(dgate, dsg.data(), gate, (size_t)f);
        }
    }
}

// Ω for FAVOR+ (BASELINES.md §2), in double: ⌈m/h⌉ blocks of h rows. Per block, from rng in this order: a Gaussian
// (h, h) matrix (row-major), whose rows are orthonormalised in order by Gram–Schmidt; then h independent N(0, I_h)
// vectors, row r scaled to the norm of the r-th. The last block keeps its first m − h·⌊m/h⌋ rows (it draws the
// whole block, so the stream does not depend on m mod h).
// omega (m, h)
void draw_omega(double* omega, int m, int hd, Rng& rng) {
    std::vector<double> Q((size_t)hd * hd);
    for (int r0 = 0; r0 < m; r0 += hd) {
        for (double& x : Q) x = rng.normal();
        for (int r = 0; r < hd; r++) {
            double* row = &Q[(size_t)r * hd];
            // modified Gram–Schmidt: remove the earlier (already unit) rows one at a time
            for (int p = 0; p < r; p++) {
                const double* prev = &Q[(size_t)p * hd];
                double dot = 0;
                for (int j = 0; j < hd; j++) dot += row[j] * prev[j];
                for (int j = 0; j < hd; j++) row[j] -= dot * prev[j];
            }
            double norm = 0;
            for (int j = 0; j < hd; j++) norm += row[j] * row[j];
            norm = std::sqrt(norm);
            FLASH_CHECK(norm > 1e-12, "Gram-Schmidt met a dependent row drawing Omega", "use another seed");
            for (int j = 0; j < hd; j++) row[j] /= norm;
        }
        for (int r = 0; r < hd; r++) {
            double len = 0;
            for (int j = 0; j < hd; j++) {
                const double x = rng.normal();
                len += x * x;
            }
            if (r0 + r < m)
                for (int j = 0; j < hd; j++) omega[(size_t)(r0 + r) * hd + j] = Q[(size_t)r * hd + j] * std::sqrt(len);
        }
    }
}

// The FAVOR+ exponents (BASELINES.md §2), per row x of q or k (after RoPE):   x̃ = x / h^(1/4);   u = Ω x̃ − |x̃|²/2
// u (n_rows, m), x (n_rows, h), omega (m, h). One BLAS product for all rows (Ω is shared by the heads).
template <typename Real>
void favor_exponents_forward(Real* u, const Real* x, const Real* omega, int n_rows, int hd, int m) {
    const double quarter = std::pow((double)hd, -0.25);  // x̃ = x · quarter; |x̃|² = |x|²/√h
    gemm(false, true, n_rows, m, hd, (Real)quarter, x, hd, omega, hd, Real(0), u, m);  // Ω x̃ for every row
#pragma omp parallel for
    for (int r = 0; r < n_rows; r++) {
        double sq = 0;
        for (int j = 0; j < hd; j++) sq += (double)x[(size_t)r * hd + j] * x[(size_t)r * hd + j];
        const Real half_sq = (Real)(sq * quarter * quarter / 2);
        for (int j = 0; j < m; j++) u[(size_t)r * m + j] -= half_sq;
    }
}
// φ = exp(u − c) / sqrt(m), in place over n values of rows of m features, one stabiliser c for them all.
template <typename Real>
void favor_exp(Real* phi, Real c, size_t n, int m) {
    const Real inv_sqrt_m = Real(1) / std::sqrt((Real)m);
    for (size_t i = 0; i < n; i++) phi[i] = std::exp(phi[i] - c) * inv_sqrt_m;
}

// FAVOR+ positive random features (BASELINES.md §2), per row x of q or k (after RoPE):
//   u = favor_exponents_forward(x);   φ(x) = exp(u − c) / sqrt(m)
// c, the stabiliser, is the maximum of u over a group of rows_per_max consecutive rows and all m features (1 for
// queries; T for keys: one c per sequence and head), or 0 when !stabilise. It takes no gradient (BASELINES.md §2).
// phi (n_rows, m), x (n_rows, h), omega (m, h).
template <typename Real>
void favor_features_forward(Real* phi, const Real* x, const Real* omega, int n_rows, int rows_per_max, int hd, int m,
                            bool stabilise) {
    FLASH_CHECK(rows_per_max >= 1 && n_rows % rows_per_max == 0,
                "FAVOR+ stabiliser groups of " << rows_per_max << " rows do not divide " << n_rows << " rows",
                "this is a bug in the caller: use 1 (queries) or T (keys)");
    favor_exponents_forward(phi, x, omega, n_rows, hd, m);
    const int n_groups = n_rows / rows_per_max;
    const size_t group_size = (size_t)rows_per_max * m;
#pragma omp parallel for
    for (int grp = 0; grp < n_groups; grp++) {
        Real* u = phi + grp * group_size;
        Real c = -std::numeric_limits<Real>::infinity();
        for (size_t i = 0; i < group_size; i++) c = std::max(c, u[i]);
        favor_exp(u, stabilise ? c : Real(0), group_size, m);
    }
}
// Backward of: φ = exp(Ω x̃ − |x̃|²/2 − c)/sqrt(m), x̃ = x/h^(1/4), c a constant:
//   du = dφ ⊙ φ;   dx += (du·Ω − x̃·Σ_j du_j) / h^(1/4) = du·Ω/h^(1/4) − x·(Σ_j du_j)/√h.   Ω takes no gradient.
// (Exact for anything c cancels from, such as the attention output; on φ alone it is the derivative at fixed c.)
template <typename Real>
void favor_features_backward(Real* dx, const Real* dphi, const Real* phi, const Real* x, const Real* omega, int n_rows,
                             int hd, int m) {
    const double quarter = std::pow((double)hd, -0.25);
    std::vector<Real> du((size_t)n_rows * m);
    std::vector<double> du_sum(n_rows);
#pragma omp parallel for
    for (int r = 0; r < n_rows; r++) {
        double s = 0;
        for (int j = 0; j < m; j++) {
            const size_t i = (size_t)r * m + j;
            du[i] = dphi[i] * phi[i];
            s += du[i];
        }
        du_sum[r] = s;
    }
    gemm(false, false, n_rows, hd, m, (Real)quarter, du.data(), m, omega, hd, Real(1), dx, hd);
#pragma omp parallel for
    for (int r = 0; r < n_rows; r++)
        for (int j = 0; j < hd; j++)
            dx[(size_t)r * hd + j] -= (Real)(x[(size_t)r * hd + j] * du_sum[r] * quarter * quarter);
}

// [v | 1]: one head's values with a column of ones, so that one product gives the numerator and the denominator.
// v1 (T, h+1), v (T, h)
template <typename Real>
static void append_ones(Real* v1, const Real* v, int T, int hd) {
    for (int t = 0; t < T; t++) {
        std::memcpy(v1 + (size_t)t * (hd + 1), v + (size_t)t * hd, sizeof(Real) * hd);
        v1[(size_t)t * (hd + 1) + hd] = Real(1);
    }
}
// Zeroes the strict upper triangle of an (n, n) block: the causal mask b > a inside a chunk.
template <typename Real>
static void mask_upper(Real* A, int n) {
    for (int a = 0; a < n; a++)
        for (int b = a + 1; b < n; b++) A[(size_t)a * n + b] = Real(0);
}

// Linear attention (BASELINES.md §2) on the features φq = φ(q), φk = φ(k):
//   causal:     [num | den][a] = Σ_{b≤a} (φq[a]·φk[b]) [v[b] | 1];   non-causal: the same over every b;   o = num/den
// computed chunk by chunk (chunks of Cp rows; the last may be shorter): inside a chunk the masked product
// (φQ φKᵀ ⊙ mask)·[V | 1], across chunks φQ·S with S the exclusive prefix sum of φKᵀ[V | 1] ((m, h+1)).
// Non-causal: [num | den] = φQ · (φKᵀ [V | 1]). o = num/den (never den²); a den that underflows to 0 gives a
// non-finite o, and so a non-finite loss.
// o (BH,T,h), den (BH,T) saved; phq, phk (BH,T,m); v (BH,T,h)
template <typename Real>
void linear_attention_forward(Real* o, Real* den, const Real* phq, const Real* phk, const Real* v, int BH, int T,
                              int hd, int m, int chunk, bool causal) {
    FLASH_CHECK(chunk >= 1, "linear attention chunk size is " << chunk << ", must be >= 1", "use e.g. 64");
    chunk = std::min(chunk, T);  // a chunk longer than the sequence is the whole sequence
    const int w = hd + 1;
    struct Scratch {  // one thread's buffers, reused chunk after chunk
        std::vector<Real> v1, S, out, A;
    };
    auto scratch = [&] {
        using V = std::vector<Real>;
        return Scratch{V((size_t)T * w), V((size_t)m * w), V((size_t)T * w), V((size_t)chunk * chunk)};
    };
    for_each_chunk(BH, scratch, [&](int bh, Scratch& sc) {
        auto& [v1, S, out, A] = sc;
        const size_t r0 = (size_t)bh * T;
        const Real *fq = phq + r0 * m, *fk = phk + r0 * m;
        append_ones(v1.data(), v + r0 * hd, T, hd);
        if (!causal) {
            gemm(true, false, m, w, T, Real(1), fk, m, v1.data(), w, Real(0), S.data(), w);
            gemm(false, false, T, w, m, Real(1), fq, m, S.data(), w, Real(0), out.data(), w);
        } else {
            std::fill(S.begin(), S.end(), Real(0));
            for (int c0 = 0; c0 < T; c0 += chunk) {
                const int n = std::min(chunk, T - c0);
                const Real *cq = fq + (size_t)c0 * m, *ck = fk + (size_t)c0 * m, *cv = v1.data() + (size_t)c0 * w;
                Real* co = out.data() + (size_t)c0 * w;
                gemm(false, true, n, n, m, Real(1), cq, m, ck, m, Real(0), A.data(), n);
                mask_upper(A.data(), n);
                gemm(false, false, n, w, n, Real(1), A.data(), n, cv, w, Real(0), co, w);
                gemm(false, false, n, w, m, Real(1), cq, m, S.data(), w, Real(1), co, w);  // earlier chunks
                gemm(true, false, m, w, n, Real(1), ck, m, cv, w, Real(1), S.data(), w);   // then add this one
            }
        }
        for (int t = 0; t < T; t++) {
            const Real dn = out[(size_t)t * w + hd];
            den[r0 + t] = dn;
            for (int j = 0; j < hd; j++) o[(r0 + t) * hd + j] = out[(size_t)t * w + j] / dn;
        }
    });
}
// Backward of: [num | den] = Σ_b A[a,b] [v[b] | 1] with A[a,b] = φq[a]·φk[b] (masked);  o = num/den:
//   G = [do/den | −(do·o)/den]  (the gradient of [num | den]; no den²);
//   inside a chunk: dA = (G·[V|1]ᵀ) ⊙ mask;  dφQ += dA·φK;  dφK += dAᵀ·φQ;  d[V|1] += Aᵀ·G;
//   across chunks (forward term φQ·S, S exclusive prefix sum of φKᵀ[V|1]):
//     dφQ += G·Sᵀ;  R = Σ_{later chunks} φQᵀ·G (a reverse exclusive prefix sum);  dφK += [V|1]·Rᵀ;  d[V|1] += φK·R
//   non-causal: S = φKᵀ[V|1], R = φQᵀ·G, no mask. dv is d[V|1] without its ones column.
template <typename Real>
void linear_attention_backward(Real* dphq, Real* dphk, Real* dv, const Real* d_o, const Real* o, const Real* den,
                               const Real* phq, const Real* phk, const Real* v, int BH, int T, int hd, int m, int chunk,
                               bool causal) {
    FLASH_CHECK(chunk >= 1, "linear attention chunk size is " << chunk << ", must be >= 1", "use e.g. 64");
    chunk = std::min(chunk, T);  // a chunk longer than the sequence is the whole sequence
    const int w = hd + 1;
    struct Scratch {  // one thread's buffers, reused chunk after chunk
        std::vector<Real> v1, G, dv1, S, R, A, dA;
    };
    auto scratch = [&] {
        using V = std::vector<Real>;
        return Scratch{V((size_t)T * w), V((size_t)T * w), V((size_t)T * w), V((size_t)m * w), V((size_t)m * w),
                       V((size_t)chunk * chunk), V((size_t)chunk * chunk)};
    };
    for_each_chunk(BH, scratch, [&](int bh, Scratch& sc) {
        auto& [v1, G, dv1, S, R, A, dA] = sc;
        const size_t r0 = (size_t)bh * T;
        const Real *fq = phq + r0 * m, *fk = phk + r0 * m;
        Real *dfq = dphq + r0 * m, *dfk = dphk + r0 * m;
        append_ones(v1.data(), v + r0 * hd, T, hd);
        for (int t = 0; t < T; t++) {
            const Real* dout = d_o + (r0 + t) * hd;
            const Real* ot = o + (r0 + t) * hd;
            double dd = 0;
            for (int j = 0; j < hd; j++) {
                G[(size_t)t * w + j] = dout[j] / den[r0 + t];
                dd += (double)dout[j] * ot[j];
            }
            G[(size_t)t * w + hd] = (Real)(-dd) / den[r0 + t];
        }
        std::fill(dv1.begin(), dv1.end(), Real(0));
        if (!causal) {
            gemm(true, false, m, w, T, Real(1), fk, m, v1.data(), w, Real(0), S.data(), w);
            gemm(false, true, T, m, w, Real(1), G.data(), w, S.data(), w, Real(1), dfq, m);
            gemm(true, false, m, w, T, Real(1), fq, m, G.data(), w, Real(0), R.data(), w);
            gemm(false, true, T, m, w, Real(1), v1.data(), w, R.data(), w, Real(1), dfk, m);
            gemm(false, false, T, w, m, Real(1), fk, m, R.data(), w, Real(1), dv1.data(), w);
        } else {
            std::fill(S.begin(), S.end(), Real(0));
            for (int c0 = 0; c0 < T; c0 += chunk) {  // forward sweep: S and the terms inside chunks
                const int n = std::min(chunk, T - c0);
                const Real *cq = fq + (size_t)c0 * m, *ck = fk + (size_t)c0 * m, *cv = v1.data() + (size_t)c0 * w;
                const Real* cg = G.data() + (size_t)c0 * w;
                Real *cdq = dfq + (size_t)c0 * m, *cdk = dfk + (size_t)c0 * m, *cdv = dv1.data() + (size_t)c0 * w;
                gemm(false, true, n, m, w, Real(1), cg, w, S.data(), w, Real(1), cdq, m);
                gemm(false, true, n, n, m, Real(1), cq, m, ck, m, Real(0), A.data(), n);
                mask_upper(A.data(), n);
                gemm(false, true, n, n, w, Real(1), cg, w, cv, w, Real(0), dA.data(), n);
                mask_upper(dA.data(), n);
                gemm(false, false, n, m, n, Real(1), dA.data(), n, ck, m, Real(1), cdq, m);
                gemm(true, false, n, m, n, Real(1), dA.data(), n, cq, m, Real(1), cdk, m);
                gemm(true, false, n, w, n, Real(1), A.data(), n, cg, w, Real(1), cdv, w);
                gemm(true, false, m, w, n, Real(1), ck, m, cv, w, Real(1), S.data(), w);
            }
            std::fill(R.begin(), R.end(), Real(0));
            const int last = ((T - 1) / chunk) * chunk;
            for (int c0 = last; c0 >= 0; c0 -= chunk) {  // reverse sweep: R = Σ over later chunks
                const int n = std::min(chunk, T - c0);
                const Real *cq = fq + (size_t)c0 * m, *ck = fk + (size_t)c0 * m, *cv = v1.data() + (size_t)c0 * w;
                const Real* cg = G.data() + (size_t)c0 * w;
                Real *cdk = dfk + (size_t)c0 * m, *cdv = dv1.data() + (size_t)c0 * w;
                gemm(false, true, n, m, w, Real(1), cv, w, R.data(), w, Real(1), cdk, m);
                gemm(false, false, n, w, m, Real(1), ck, m, R.data(), w, Real(1), cdv, w);
                gemm(true, false, m, w, n, Real(1), cq, m, cg, w, Real(1), R.data(), w);
            }
        }
        for (int t = 0; t < T; t++)
            for (int j = 0; j < hd; j++) dv[(r0 + t) * hd + j] += dv1[(size_t)t * w + j];
    });
}

// ====================================================================================================
// The model

void check_transformer_batch(const TransformerConfig& cfg, const int* tokens, const int* targets, int B, int T) {
    FLASH_CHECK(B > 0 && T > 0, "batch shape must be positive, got B=" << B << " T=" << T, "");
    FLASH_CHECK(!cfg.combiner() || T % cfg.block == 0,
                "sequence length T=" << T << " is not a multiple of Combiner's block c=" << cfg.block,
                "use T = n·block (--seq-len), or a config with another block");
    check_token_ids(tokens, targets, B * T, cfg.vocab_size);
}

template <typename Real>
TransformerModel<Real>::TransformerModel(const TransformerConfig& c) : cfg(c) {
    transformer_config_validate(cfg);
    check_model_state_fits((double)transformer_param_count(cfg), sizeof(Real));
    this->allocate(transformer_param_specs(cfg));
    p = view_transformer_params(this->params.data(), cfg, true);
    dp = view_transformer_params(this->grads.data(), cfg, false);
}

template <typename Real>
nlohmann::json TransformerModel<Real>::config_json() const {
    return transformer_config_to_json(cfg);
}

template <typename Real>
std::string TransformerModel<Real>::shape_mismatch(const nlohmann::json& config) const {
    return transformer_shape_mismatch(transformer_config_from_json(config), cfg);
}

template <typename Real>
void TransformerModel<Real>::init_weights(uint64_t seed, bool strong) {
    Rng rng(seed);
    this->zero_moments();
    for (const TensorSpec& t : this->specs) {  // trained tensors, in checkpoint order
        if (!t.trained) continue;
        Real* x = this->params.data() + t.offset;
        const bool gain = t.shape.size() == 1;  // the RMSNorm gains; every other trained tensor is a matrix
        double mean = 0, std = 0.02;
        if (gain) mean = 1, std = strong ? 0.2 : 0.0;
        else if (strong) std = (t.name == "wte") ? 0.3 : 1.0 / std::sqrt((double)t.shape[0]);
        for (size_t i = 0; i < t.count; i++) x[i] = (Real)(std ? mean + std * rng.normal() : mean);
    }
    std::vector<double> omega;
    for (const TensorSpec& t : this->specs) {  // Ω after every trained tensor (see transformer.h)
        if (t.trained) continue;
        omega.resize(t.count);
        draw_omega(omega.data(), (int)t.shape[0], (int)t.shape[1], rng);
        std::copy(omega.begin(), omega.end(), this->params.begin() + t.offset);
    }
}

// (Re)allocates the activations for a batch of B rows of T tokens.
template <typename Real>
static void layout_activations(TransformerModel<Real>& m, int B, int T) {
    size_t n_act, n_grad;
    view_transformer_activations<Real>(m.acts, m.dacts, nullptr, nullptr, m.cfg, B, T, &n_act, &n_grad);
    check_activations_fit((double)n_act, (double)n_grad, B, T, sizeof(Real));  // refused before allocating
    assign_zeros_on_huge_pages(m.act_buf, n_act);
    assign_zeros_on_huge_pages(m.grad_act_buf, n_grad);
    view_transformer_activations(m.acts, m.dacts, m.act_buf.data(), m.grad_act_buf.data(), m.cfg, B, T, &n_act,
                                 &n_grad);
    rope_tables(m.rope_cos, m.rope_sin, 0, T, m.cfg.head_dim(), m.cfg.rope_base);
    m.B = B;
    m.T = T;
}

template <typename Real>
double TransformerModel<Real>::forward(const int* tok, const int* tgt, int B_, int T_) {
    check_token_count(B_, T_);  // before B * T is computed in int
    check_transformer_batch(cfg, tok, tgt, B_, T_);
    const int N = B_ * T_, V = cfg.vocab_size;
    if (B_ != B || T_ != T) layout_activations(*this, B_, T_);
    tokens.assign(tok, tok + N);
    if (tgt) targets.assign(tgt, tgt + N);
    else targets.clear();

    const int d = cfg.d, f = cfg.ffn, H = cfg.n_heads, hd = cfg.head_dim(), BH = B * H, m = cfg.features;
    encoder_forward(acts.layers[0].x, tok, p.wte, N, d);
    for (int l = 0; l < cfg.n_layers; l++) {
        const BlockParams<Real>& lp = p.layers[l];
        BlockActs<Real>& la = acts.layers[l];
        Real* x_next = (l + 1 < cfg.n_layers) ? acts.layers[l + 1].x : acts.x_final;
        // x_mid = x + attention(rmsnorm_a(x))
        rmsnorm_forward(la.xn_a, la.rstd_a, la.x, lp.attn_norm_g, N, d, cfg.eps);
        matmul_forward(la.qkv, la.xn_a, lp.w_qkv, (const Real*)nullptr, N, d, 3 * d);
        split_heads_forward(la.q, la.qkv, 3 * d, B, T, H, hd);
        split_heads_forward(la.k, la.qkv + d, 3 * d, B, T, H, hd);
        split_heads_forward(la.v, la.qkv + 2 * d, 3 * d, B, T, H, hd);
        rope_forward(la.q, rope_cos.data(), rope_sin.data(), BH * T, T, hd);
        rope_forward(la.k, rope_cos.data(), rope_sin.data(), BH * T, T, hd);
        if (cfg.performer()) {
            favor_features_forward(la.phq, la.q, lp.omega, BH * T, 1, hd, m, favor_stabilise);
            favor_features_forward(la.phk, la.k, lp.omega, BH * T, T, hd, m, favor_stabilise);
            linear_attention_forward(la.oh, la.den, la.phq, la.phk, la.v, BH, T, hd, m, performer_chunk, cfg.causal);
        } else if (cfg.combiner()) {
            // Head-major q, k, v are B·H sequences of one head each: Combiner's layout with H = 1, ld = h.
            combiner_attention_forward(la.oh, view_combiner_saved(la.comb, BH, T, 1, hd, cfg.block), la.q, la.k,
                                       la.v, hd, BH, T, 1, hd, cfg.block, cfg.causal);
        } else {
            softmax_attention_forward(la.oh, la.lse, la.q, la.k, la.v, BH, T, hd, cfg.causal);
        }
        merge_heads_forward(la.o, la.oh, B, T, H, hd);
        matmul_forward(la.x_mid, la.o, lp.w_o, (const Real*)nullptr, N, d, d);
        residual_forward(la.x_mid, la.x, (size_t)N * d);
        // x_next = x_mid + ffn(rmsnorm_f(x_mid))
        rmsnorm_forward(la.xn_f, la.rstd_f, la.x_mid, lp.ffn_norm_g, N, d, cfg.eps);
        matmul_forward(la.gu, la.xn_f, lp.w_13, (const Real*)nullptr, N, d, 2 * f);
        swiglu_forward(la.z, la.sg, la.gu, N, f);
        matmul_forward(x_next, la.z, lp.w_2, (const Real*)nullptr, N, f, d);
        residual_forward(x_next, la.x_mid, (size_t)N * d);
    }
    rmsnorm_forward(acts.xn_f, acts.rstd_f, acts.x_final, p.norm_f_g, N, d, cfg.eps);
    logits_forward(acts.logits, acts.xn_f, p.wte, N, d, V);
    loss = tgt ? crossentropy_forward(acts.losses, acts.probs, acts.logits, tgt, N, V)
               : std::numeric_limits<double>::quiet_NaN();
    return loss;
}

template <typename Real>
void TransformerModel<Real>::backward() {
    FLASH_CHECK(B > 0 && (int)targets.size() == B * T, "backward() needs a forward() with targets first", "");
    const int N = B * T, d = cfg.d, f = cfg.ffn, H = cfg.n_heads, hd = cfg.head_dim(), BH = B * H, m = cfg.features;
    const int V = cfg.vocab_size;
    TransformerGradActs<Real>& g = dacts;
    // What the head's backward accumulates into starts at zero (as in FlashModel::backward); the layers' scratch
    // (dxn .. dz) is zeroed layer by layer below.
    zero_fill(g.dlogits, (size_t)N * V);
    zero_fill(g.dxn, (size_t)N * d);
    zero_fill(g.dres, (size_t)N * d);

    crossentropy_backward(g.dlogits, acts.probs, targets.data(), N, V);
    logits_backward(g.dxn, dp.wte, g.dlogits, acts.xn_f, p.wte, N, d, V);
    rmsnorm_backward(g.dres, dp.norm_f_g, g.dxn, acts.x_final, acts.rstd_f, p.norm_f_g, N, d);

    for (int l = cfg.n_layers - 1; l >= 0; l--) {
        const BlockParams<Real>& lp = p.layers[l];
        const BlockParams<Real>& dlp = dp.layers[l];
        const BlockActs<Real>& la = acts.layers[l];
        // g.dres carries d(x_next) in and d(x) out; the scratch gradients dxn .. dz accumulate from zero.
        zero_fill(g.dxn, (size_t)(g.dlogits - g.dxn));
        // ffn: the residual passes dres through; the rmsnorm path adds to it.
        matmul_backward(g.dz, dlp.w_2, (Real*)nullptr, g.dres, la.z, lp.w_2, N, f, d);
        swiglu_backward(g.dgu, g.dz, la.gu, la.sg, N, f);
        matmul_backward(g.dxn, dlp.w_13, (Real*)nullptr, g.dgu, la.xn_f, lp.w_13, N, d, 2 * f);
        rmsnorm_backward(g.dres, dlp.ffn_norm_g, g.dxn, la.x_mid, la.rstd_f, lp.ffn_norm_g, N, d);
        // attention
        zero_fill(g.dxn, (size_t)N * d);
        matmul_backward(g.d_o, dlp.w_o, (Real*)nullptr, g.dres, la.o, lp.w_o, N, d, d);
        merge_heads_backward(g.doh, g.d_o, B, T, H, hd);
        if (cfg.performer()) {
            linear_attention_backward(g.dphq, g.dphk, g.dv, g.doh, la.oh, la.den, la.phq, la.phk, la.v, BH, T, hd, m,
                                      performer_chunk, cfg.causal);
            favor_features_backward(g.dq, g.dphq, la.phq, la.q, lp.omega, BH * T, hd, m);
            favor_features_backward(g.dk, g.dphk, la.phk, la.k, lp.omega, BH * T, hd, m);
        } else if (cfg.combiner()) {
            combiner_attention_backward(g.dq, g.dk, g.dv, hd, g.doh,
                                        view_combiner_saved(la.comb, BH, T, 1, hd, cfg.block), la.q, la.k, la.v, hd,
                                        BH, T, 1, hd, cfg.block, cfg.causal);
        } else {
            softmax_attention_backward(g.dq, g.dk, g.dv, g.doh, la.lse, la.q, la.k, la.v, BH, T, hd, cfg.causal);
        }
        rope_backward(g.dq, rope_cos.data(), rope_sin.data(), BH * T, T, hd);
        rope_backward(g.dk, rope_cos.data(), rope_sin.data(), BH * T, T, hd);
        split_heads_backward(g.dqkv, 3 * d, g.dq, B, T, H, hd);
        split_heads_backward(g.dqkv + d, 3 * d, g.dk, B, T, H, hd);
        split_heads_backward(g.dqkv + 2 * d, 3 * d, g.dv, B, T, H, hd);
        matmul_backward(g.dxn, dlp.w_qkv, (Real*)nullptr, g.dqkv, la.xn_a, lp.w_qkv, N, d, 3 * d);
        rmsnorm_backward(g.dres, dlp.attn_norm_g, g.dxn, la.x, la.rstd_a, lp.attn_norm_g, N, d);
    }
    encoder_backward(dp.wte, g.dres, tokens.data(), N, d);
}

// ====================================================================================================
// Explicit instantiations: float trains, double checks gradients.

// Each line names one template; decltype takes its signature from transformer.h, so none is restated here.
#define INSTANTIATE(fn) template decltype(fn<float>) fn<float>; template decltype(fn<double>) fn<double>;
INSTANTIATE(view_transformer_params)
INSTANTIATE(view_transformer_activations)
INSTANTIATE(rmsnorm_forward)
INSTANTIATE(rmsnorm_backward)
INSTANTIATE(split_heads_forward)
INSTANTIATE(split_heads_backward)
INSTANTIATE(merge_heads_forward)
INSTANTIATE(merge_heads_backward)
INSTANTIATE(softmax_attention_forward)
INSTANTIATE(softmax_attention_backward)
INSTANTIATE(swiglu_forward)
INSTANTIATE(swiglu_backward)
INSTANTIATE(favor_exponents_forward)
INSTANTIATE(favor_exp)
INSTANTIATE(favor_features_forward)
INSTANTIATE(favor_features_backward)
INSTANTIATE(linear_attention_forward)
INSTANTIATE(linear_attention_backward)
template struct TransformerModel<float>;
template struct TransformerModel<double>;
