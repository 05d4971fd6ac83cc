// test_transformer.cpp: the baselines Transformer++ and Performer (BASELINES.md §1, BASELINES.md §2, BASELINES.md §6).
//   - every new op's backward against central finite differences in double, EVERY entry of every input, causal and
//     non-causal (error measure: gradcheck() in testutil.h, the max-norm relative error per tensor, bound 1e-6);
//   - oracles written directly from the equations: softmax attention, and the chunked linear attention against
//     token-by-token prefix sums for several chunk sizes (1e-12 in double);
//   - the model: gradient samples of every tensor (both archs, paper and strong init), the loss independent of
//     the chunk size, the FAVOR+ stabilisers cancelling, causality, Ω (orthonormal, never trained, in checkpoints),
//     the parameter count of the small preset.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cblas.h>
#include <omp.h>

#include <cstdio>
#include <cstring>
#include <set>

#include "testutil.h"
#include "debug_state.h"
#include "formats/checkpoint.h"
#include "formats/config.h"
#include "transformer.h"

namespace {

const double kTol = 1e-6;
// op sizes: B=2 sequences of T=10, H=2 heads of h=4 (d=8), m=6 features
const int B = 2, T = 10, H = 2, hd = 4, d = H * hd, N = B * T, BH = B * H, m = 6;

// Checks one finite-difference comparison against the bound, and reports the figure.
void check_fd(const std::string& input, double err) {
    MESSAGE("d" << input << ": max-norm relative error " << err);
    CHECK(err < kTol);
}

std::vector<double> uniform(size_t n, Rng& rng, double lo, double hi) {
    std::vector<double> x(n);
    for (double& v : x) v = lo + (hi - lo) * rng.uniform();
    return x;
}

// ---------------------------------------------------------------------------------------------------
// Ops against finite differences

TEST_CASE("rmsnorm (vector gain) backward matches finite differences") {
    Rng rng(1);
    auto x = randn((size_t)N * d, rng), g = randn(d, rng, 0.5, 1.0), W = randn((size_t)N * d, rng);
    std::vector<double> y((size_t)N * d), rstd(N), dx(x.size(), 0.0), dg(d, 0.0);
    const double eps = 1e-6;
    auto loss = [&]() { rmsnorm_forward(y.data(), rstd.data(), x.data(), g.data(), N, d, eps); return dot(y, W); };
    loss();
    rmsnorm_backward(dx.data(), dg.data(), W.data(), x.data(), rstd.data(), g.data(), N, d);
    check_fd("x", gradcheck(x, dx, loss));
    check_fd("g", gradcheck(g, dg, loss));
    // forward value against the definition, row 3
    loss();
    double ms = 0;
    for (int j = 0; j < d; j++) ms += x[3 * d + j] * x[3 * d + j] / d;
    for (int j = 0; j < d; j++)
        CHECK(y[3 * d + j] == doctest::Approx(g[j] * x[3 * d + j] / std::sqrt(ms + eps)).epsilon(1e-14));
}

TEST_CASE("split and merge heads: backward matches finite differences, and merge undoes split") {
    Rng rng(2);
    const int ldx = 3 * d;  // a column block of qkv
    auto x = randn((size_t)N * ldx, rng), W = randn((size_t)N * d, rng);
    std::vector<double> y((size_t)N * d), dx(x.size(), 0.0);
    auto loss = [&]() { split_heads_forward(y.data(), x.data() + d, ldx, B, T, H, hd); return dot(y, W); };
    split_heads_backward(dx.data() + d, ldx, W.data(), B, T, H, hd);
    check_fd("x", gradcheck(x, dx, loss));
    loss();
    // head i = 1 of sequence b = 1 at t = 3 is columns h..2h−1 of the k block of token row 1·T + 3
    CHECK(y[((size_t)(1 * H + 1) * T + 3) * hd + 2] == x[(size_t)(1 * T + 3) * ldx + d + 1 * hd + 2]);
    std::vector<double> merged((size_t)N * d), dy(y.size(), 0.0);
    merge_heads_forward(merged.data(), y.data(), B, T, H, hd);
    for (int n = 0; n < N; n++)
        for (int j = 0; j < d; j++) CHECK(merged[(size_t)n * d + j] == x[(size_t)n * ldx + d + j]);
    auto loss_merge = [&]() { merge_heads_forward(merged.data(), y.data(), B, T, H, hd); return dot(merged, W); };
    merge_heads_backward(dy.data(), W.data(), B, T, H, hd);
    check_fd("y", gradcheck(y, dy, loss_merge));
}

void check_softmax_attention(bool causal) {
    Rng rng(causal ? 3 : 4);
    auto q = randn((size_t)BH * T * hd, rng), k = randn((size_t)BH * T * hd, rng), v = randn((size_t)BH * T * hd, rng);
    auto W = randn((size_t)BH * T * hd, rng);
    std::vector<double> o(q.size()), lse((size_t)BH * T);
    auto loss = [&]() {
        softmax_attention_forward(o.data(), lse.data(), q.data(), k.data(), v.data(), BH, T, hd, causal);
        return dot(o, W);
    };
    loss();
    std::vector<double> dq(q.size(), 0.0), dk(k.size(), 0.0), dv(v.size(), 0.0);
    softmax_attention_backward(dq.data(), dk.data(), dv.data(), W.data(), lse.data(), q.data(), k.data(), v.data(), BH,
                               T, hd, causal);
    check_fd("q", gradcheck(q, dq, loss));
    check_fd("k", gradcheck(k, dk, loss));
    check_fd("v", gradcheck(v, dv, loss));

    // Oracle: softmax attention written from the equations of BASELINES.md §1, every query of every head.
    loss();
    double max_err = 0;
    for (int bh = 0; bh < BH; bh++)
        for (int a = 0; a < T; a++) {
            const int n_keys = causal ? a + 1 : T;
            std::vector<double> s(n_keys);
            double mx = -1e300, z = 0;
            for (int b = 0; b < n_keys; b++) {
                s[b] = 0;
                for (int j = 0; j < hd; j++)
                    s[b] += q[((size_t)bh * T + a) * hd + j] * k[((size_t)bh * T + b) * hd + j];
                s[b] /= std::sqrt((double)hd);
                mx = std::max(mx, s[b]);
            }
            for (int b = 0; b < n_keys; b++) z += std::exp(s[b] - mx);
            for (int j = 0; j < hd; j++) {
                double want = 0;
                for (int b = 0; b < n_keys; b++) want += std::exp(s[b] - mx) / z * v[((size_t)bh * T + b) * hd + j];
                max_err = std::max(max_err, std::fabs(o[((size_t)bh * T + a) * hd + j] - want));
            }
        }
    MESSAGE("softmax attention vs naive, causal=" << causal << ": max error " << max_err);
    CHECK(max_err < 1e-12);
    CHECK(max_abs(o) > 0.1);
}
TEST_CASE("softmax attention: backward matches finite differences and forward equals the naive form, causal") {
    check_softmax_attention(true);
}
TEST_CASE("softmax attention: backward matches finite differences and forward equals the naive form, non-causal") {
    check_softmax_attention(false);
}

TEST_CASE("swiglu backward matches finite differences") {
    Rng rng(5);
    const int f = 7;
    auto gu = randn((size_t)N * 2 * f, rng, 2.0), W = randn((size_t)N * f, rng);
    std::vector<double> z((size_t)N * f), sg((size_t)N * f), dgu(gu.size(), 0.0);
    auto loss = [&]() { swiglu_forward(z.data(), sg.data(), gu.data(), N, f); return dot(z, W); };
    loss();
    swiglu_backward(dgu.data(), W.data(), gu.data(), sg.data(), N, f);
    check_fd("gu", gradcheck(gu, dgu, loss));
    const double g0 = gu[2 * f + 3], u0 = gu[2 * f + f + 3];  // row 1, column 3
    CHECK(z[f + 3] == doctest::Approx(g0 / (1 + std::exp(-g0)) * u0).epsilon(1e-14));
}

TEST_CASE("FAVOR+ features: backward matches finite differences (c = 0), forward is the equation of BASELINES.md §2") {
    Rng rng(6);
    std::vector<double> omega((size_t)m * hd);
    draw_omega(omega.data(), m, hd, rng);
    const int rows = BH * T;
    auto x = randn((size_t)rows * hd, rng), W = randn((size_t)rows * m, rng);
    std::vector<double> phi((size_t)rows * m), dx(x.size(), 0.0);
    // The backward treats c as a constant (BASELINES.md §2), which is exact where c is constant: here, switched off.
    auto loss = [&]() {
        favor_features_forward(phi.data(), x.data(), omega.data(), rows, T, hd, m, false);
        return dot(phi, W);
    };
    loss();
    favor_features_backward(dx.data(), W.data(), phi.data(), x.data(), omega.data(), rows, hd, m);
    check_fd("x", gradcheck(x, dx, loss));

    // forward against the equation, with both stabilisers: queries (one c per row), keys (one c per T rows)
    for (int rows_per_max : {1, T}) {
        favor_features_forward(phi.data(), x.data(), omega.data(), rows, rows_per_max, hd, m, true);
        std::vector<double> u((size_t)rows * m);
        const double scale = std::pow((double)hd, -0.25);
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < m; j++) {
                double wx = 0, sq = 0;
                for (int i = 0; i < hd; i++) {
                    const double xt = x[(size_t)r * hd + i] * scale;
                    wx += omega[(size_t)j * hd + i] * xt;
                    sq += xt * xt;
                }
                u[(size_t)r * m + j] = wx - sq / 2;
            }
        double max_err = 0, max_phi = 0;
        for (int grp = 0; grp < rows / rows_per_max; grp++) {
            double c = -1e300;
            for (size_t i = (size_t)grp * rows_per_max * m; i < (size_t)(grp + 1) * rows_per_max * m; i++)
                c = std::max(c, u[i]);
            for (size_t i = (size_t)grp * rows_per_max * m; i < (size_t)(grp + 1) * rows_per_max * m; i++) {
                max_err = std::max(max_err, std::fabs(phi[i] - std::exp(u[i] - c) / std::sqrt((double)m)));
                max_phi = std::max(max_phi, phi[i]);
            }
        }
        CHECK(max_err < 1e-14);
        CHECK(max_phi == doctest::Approx(1 / std::sqrt((double)m)).epsilon(1e-15));  // the largest feature is 1/√m
    }
}

void check_linear_attention(bool causal, int chunk) {
    Rng rng(7 + chunk + (causal ? 100 : 0));
    auto phq = uniform((size_t)BH * T * m, rng, 0.05, 1.0), phk = uniform((size_t)BH * T * m, rng, 0.05, 1.0);
    auto v = randn((size_t)BH * T * hd, rng), W = randn((size_t)BH * T * hd, rng);
    std::vector<double> o(v.size()), den((size_t)BH * T);
    auto loss = [&]() {
        linear_attention_forward(o.data(), den.data(), phq.data(), phk.data(), v.data(), BH, T, hd, m, chunk, causal);
        return dot(o, W);
    };
    loss();
    std::vector<double> dphq(phq.size(), 0.0), dphk(phk.size(), 0.0), dv(v.size(), 0.0);
    linear_attention_backward(dphq.data(), dphk.data(), dv.data(), W.data(), o.data(), den.data(), phq.data(),
                              phk.data(), v.data(), BH, T, hd, m, chunk, causal);
    INFO("causal " << causal << ", chunk " << chunk);
    check_fd("phq", gradcheck(phq, dphq, loss));
    check_fd("phk", gradcheck(phk, dphk, loss));
    check_fd("v", gradcheck(v, dv, loss));

    // Oracle: the token-by-token prefix sums S_a = Σ_{b≤a} φk[b]ᵀ v[b], z_a = Σ_{b≤a} φk[b] (non-causal: the totals);
    // o[a] = φq[a]·S_a / φq[a]·z_a.
    loss();
    double max_err = 0;
    for (int bh = 0; bh < BH; bh++) {
        std::vector<double> S((size_t)m * hd, 0.0), z(m, 0.0);
        auto add_key = [&](int b) {
            for (int i = 0; i < m; i++) {
                const double fk = phk[((size_t)bh * T + b) * m + i];
                z[i] += fk;
                for (int j = 0; j < hd; j++) S[(size_t)i * hd + j] += fk * v[((size_t)bh * T + b) * hd + j];
            }
        };
        if (!causal)
            for (int b = 0; b < T; b++) add_key(b);
        for (int a = 0; a < T; a++) {
            if (causal) add_key(a);
            const double* fq = &phq[((size_t)bh * T + a) * m];
            double dn = 0;
            for (int i = 0; i < m; i++) dn += fq[i] * z[i];
            for (int j = 0; j < hd; j++) {
                double num = 0;
                for (int i = 0; i < m; i++) num += fq[i] * S[(size_t)i * hd + j];
                max_err = std::max(max_err, std::fabs(o[((size_t)bh * T + a) * hd + j] - num / dn));
            }
        }
    }
    MESSAGE("linear attention vs token-by-token prefix sums, causal=" << causal << " chunk=" << chunk
                                                                        << ": max error " << max_err);
    CHECK(max_err < 1e-12);
    CHECK(max_abs(o) > 0.1);
}
TEST_CASE("linear attention, causal: backward matches finite differences, forward equals prefix sums, any chunk") {
    for (int chunk : {1, 3, 4, 5, T, T + 3}) check_linear_attention(true, chunk);  // 3 and 4 do not divide T = 10
}
TEST_CASE("linear attention, non-causal: backward matches finite differences, forward equals the full sums") {
    check_linear_attention(false, 4);
}

// The whole FAVOR+ attention of BASELINES.md §2, with both stabilisers on: features of q (one c per row) and of k (one
// c per sequence and head), then linear attention. c depends on q and k, but it cancels, so the gradient that treats it
// as a constant is the exact gradient of the attention output.
void check_favor_attention(bool causal) {
    Rng rng(causal ? 20 : 21);
    std::vector<double> omega((size_t)m * hd);
    draw_omega(omega.data(), m, hd, rng);
    const int rows = BH * T, chunk = 3;
    auto q = randn((size_t)rows * hd, rng), k = randn((size_t)rows * hd, rng), v = randn((size_t)rows * hd, rng);
    auto W = randn((size_t)rows * hd, rng);
    std::vector<double> phq((size_t)rows * m), phk((size_t)rows * m), o(v.size()), den(rows);
    auto loss = [&]() {
        favor_features_forward(phq.data(), q.data(), omega.data(), rows, 1, hd, m, true);
        favor_features_forward(phk.data(), k.data(), omega.data(), rows, T, hd, m, true);
        linear_attention_forward(o.data(), den.data(), phq.data(), phk.data(), v.data(), BH, T, hd, m, chunk, causal);
        return dot(o, W);
    };
    loss();
    std::vector<double> dphq(phq.size(), 0.0), dphk(phk.size(), 0.0), dq(q.size(), 0.0), dk(k.size(), 0.0),
        dv(v.size(), 0.0);
    linear_attention_backward(dphq.data(), dphk.data(), dv.data(), W.data(), o.data(), den.data(), phq.data(),
                              phk.data(), v.data(), BH, T, hd, m, chunk, causal);
    favor_features_backward(dq.data(), dphq.data(), phq.data(), q.data(), omega.data(), rows, hd, m);
    favor_features_backward(dk.data(), dphk.data(), phk.data(), k.data(), omega.data(), rows, hd, m);
    check_fd("q", gradcheck(q, dq, loss));
    check_fd("k", gradcheck(k, dk, loss));
    check_fd("v", gradcheck(v, dv, loss));
}
TEST_CASE("FAVOR+ attention (features, both stabilisers, linear attention) matches finite differences, causal") {
    check_favor_attention(true);
}
TEST_CASE("FAVOR+ attention matches finite differences, non-causal") { check_favor_attention(false); }

TEST_CASE("Omega: orthonormal row directions in each block, norms of Gaussian vectors, the last block cut") {
    const int mm = 20, h = 8;  // blocks of rows 0-7, 8-15, 16-19
    Rng rng(30);
    std::vector<double> omega((size_t)mm * h);
    draw_omega(omega.data(), mm, h, rng);
    double max_err = 0, min_norm = 1e300, max_norm = 0;
    for (int r = 0; r < mm; r++) {
        double nr = 0;
        for (int j = 0; j < h; j++) nr += omega[(size_t)r * h + j] * omega[(size_t)r * h + j];
        nr = std::sqrt(nr);
        min_norm = std::min(min_norm, nr);
        max_norm = std::max(max_norm, nr);
        for (int s = (r / h) * h; s <= r; s++) {  // same block
            double ns = 0, dt = 0;
            for (int j = 0; j < h; j++) {
                ns += omega[(size_t)s * h + j] * omega[(size_t)s * h + j];
                dt += omega[(size_t)r * h + j] * omega[(size_t)s * h + j];
            }
            const double cosine = dt / (nr * std::sqrt(ns));
            max_err = std::max(max_err, std::fabs(cosine - (s == r ? 1.0 : 0.0)));
        }
    }
    MESSAGE("Omega: max |cos - delta| " << max_err << ", row norms in [" << min_norm << ", " << max_norm << "]");
    CHECK(max_err < 1e-14);
    CHECK(min_norm > 0.5);          // χ_8 norms: mean ≈ 2.74; far from the unit rows Gram–Schmidt leaves
    CHECK(max_norm - min_norm > 0.1);
    // rows of different blocks are not orthogonal (independent blocks)
    double dt = 0;
    for (int j = 0; j < h; j++) dt += omega[j] * omega[(size_t)h * h + j];
    CHECK(std::fabs(dt) > 1e-6);
    // same seed, same Ω
    Rng rng2(30);
    std::vector<double> again((size_t)mm * h);
    draw_omega(again.data(), mm, h, rng2);
    CHECK(again == omega);
}

// ---------------------------------------------------------------------------------------------------
// The model

TransformerConfig tiny(const std::string& arch, bool causal = true) {
    TransformerConfig c = transformer_preset("tiny", arch);
    c.causal = causal;
    return c;
}

struct Batch {
    int B, T;
    std::vector<int> tokens, targets;
};
Batch random_batch(const TransformerConfig& c, int B, int T, uint64_t seed) {
    Rng rng(seed);
    Batch b{B, T, std::vector<int>((size_t)B * T), std::vector<int>((size_t)B * T)};
    for (int& t : b.tokens) t = rng.below(c.vocab_size);
    for (int& t : b.targets) t = rng.below(c.vocab_size);
    return b;
}

// ---------------------------------------------------------------------------------------------------
// The whole model against BASELINES.md §1 and §2 written out one token at a time (no heads layout, no BLAS, no chunks,
// no stabiliser): every logit of every position.

std::vector<double> naive_logits(const TransformerModel<double>& model, const std::vector<int>& tokens, int Bn,
                                 int Tn) {
    const TransformerConfig& c = model.cfg;
    const int D = c.d, F = c.ffn, Hn = c.n_heads, h = c.head_dim(), V = c.vocab_size, M = c.features;
    using Vec = std::vector<double>;
    auto rmsnorm = [&](const Vec& x, const double* g) {
        double ms = 0;
        for (double xi : x) ms += xi * xi / D;
        Vec y(D);
        for (int j = 0; j < D; j++) y[j] = g[j] * x[j] / std::sqrt(ms + c.eps);
        return y;
    };
    auto times = [](const Vec& x, const double* w, int cols) {  // x · W, W (x.size(), cols)
        Vec y(cols, 0.0);
        for (size_t i = 0; i < x.size(); i++)
            for (int j = 0; j < cols; j++) y[j] += x[i] * w[i * cols + j];
        return y;
    };
    auto rope = [&](const double* x, int t) {  // one head's h dims at position t, rotate-half
        Vec y(h);
        for (int i = 0; i < h / 2; i++) {
            const double th = t * std::pow(c.rope_base, -2.0 * i / h);
            y[i] = x[i] * std::cos(th) - x[i + h / 2] * std::sin(th);
            y[i + h / 2] = x[i + h / 2] * std::cos(th) + x[i] * std::sin(th);
        }
        return y;
    };
    std::vector<double> logits((size_t)Bn * Tn * V);
    for (int b = 0; b < Bn; b++) {
        std::vector<Vec> x(Tn, Vec(D));
        for (int t = 0; t < Tn; t++)
            for (int j = 0; j < D; j++) x[t][j] = model.p.wte[(size_t)tokens[b * Tn + t] * D + j];
        for (const BlockParams<double>& lp : model.p.layers) {
            std::vector<Vec> qkv(Tn);
            for (int t = 0; t < Tn; t++) qkv[t] = times(rmsnorm(x[t], lp.attn_norm_g), lp.w_qkv, 3 * D);
            std::vector<Vec> att(Tn, Vec(D, 0.0));
            for (int i = 0; i < Hn; i++) {
                std::vector<Vec> q(Tn), k(Tn), phq(Tn), phk(Tn);
                for (int t = 0; t < Tn; t++) {
                    q[t] = rope(&qkv[t][i * h], t);
                    k[t] = rope(&qkv[t][D + i * h], t);
                }
                auto phi = [&](const Vec& xv) {  // φ(x) = exp(Ω x̃ − |x̃|²/2)/√m, x̃ = x/h^(1/4)
                    Vec f(M);
                    double sq = 0;
                    for (int j = 0; j < h; j++) sq += xv[j] * xv[j] / std::sqrt((double)h);
                    for (int r = 0; r < M; r++) {
                        double wx = 0;
                        for (int j = 0; j < h; j++) wx += lp.omega[(size_t)r * h + j] * xv[j] / std::pow(h, 0.25);
                        f[r] = std::exp(wx - sq / 2) / std::sqrt((double)M);
                    }
                    return f;
                };
                if (c.performer())
                    for (int t = 0; t < Tn; t++) phq[t] = phi(q[t]), phk[t] = phi(k[t]);
                for (int a = 0; a < Tn; a++) {
                    const int n_keys = c.causal ? a + 1 : Tn;
                    Vec wgt(n_keys);  // unnormalised attention weights of query a
                    double mx = -1e300;
                    for (int kb = 0; kb < n_keys; kb++) {
                        double s = 0;
                        if (c.performer()) {
                            for (int r = 0; r < M; r++) s += phq[a][r] * phk[kb][r];
                        } else {
                            for (int j = 0; j < h; j++) s += q[a][j] * k[kb][j];
                            s /= std::sqrt((double)h);
                            mx = std::max(mx, s);
                        }
                        wgt[kb] = s;
                    }
                    if (!c.performer())
                        for (double& w : wgt) w = std::exp(w - mx);
                    double z = 0;
                    for (double w : wgt) z += w;
                    for (int kb = 0; kb < n_keys; kb++)
                        for (int j = 0; j < h; j++) att[a][i * h + j] += wgt[kb] / z * qkv[kb][2 * D + i * h + j];
                }
            }
            for (int t = 0; t < Tn; t++) {
                Vec y = times(att[t], lp.w_o, D);
                for (int j = 0; j < D; j++) x[t][j] += y[j];
                Vec gu = times(rmsnorm(x[t], lp.ffn_norm_g), lp.w_13, 2 * F), zz(F);
                for (int j = 0; j < F; j++) zz[j] = gu[j] / (1 + std::exp(-gu[j])) * gu[F + j];
                y = times(zz, lp.w_2, D);
                for (int j = 0; j < D; j++) x[t][j] += y[j];
            }
        }
        for (int t = 0; t < Tn; t++) {
            Vec xn = rmsnorm(x[t], model.p.norm_f_g);
            for (int v = 0; v < V; v++) {
                double l = 0;
                for (int j = 0; j < D; j++) l += xn[j] * model.p.wte[(size_t)v * D + j];
                logits[((size_t)b * Tn + t) * V + v] = l;
            }
        }
    }
    return logits;
}

TEST_CASE("the whole model equals BASELINES.md §1/BASELINES.md §2 written out one token at a time, both archs") {
    for (const char* arch : {"transformer++", "performer"})
        for (bool causal : {true, false})
            for (bool strong : {false, true}) {
                TransformerModel<double> model(tiny(arch, causal));
                model.performer_chunk = 5;
                model.init_weights(23, strong);
                Batch batch = random_batch(model.cfg, 2, model.cfg.seq_len, 24);
                model.forward(batch.tokens.data(), nullptr, batch.B, batch.T);
                const std::vector<double> want = naive_logits(model, batch.tokens, batch.B, batch.T);
                const double err = max_abs_diff(model.acts.logits, want.data(), want.size());
                const std::string label = std::string(arch) + (causal ? " causal" : " non-causal") +
                                          (strong ? " strong" : " paper") + " init";
                MESSAGE(label << ": max |logit - naive| " << err << " (largest logit " << max_abs(want) << ")");
                CHECK(err < 1e-12 * std::max(1.0, max_abs(want)));
                CHECK(max_abs(want) > 1e-3);
            }
}

TEST_CASE("the small preset: 852,480 trained parameters per block, as two FLASH small layers (BASELINES.md §1)") {
    for (const char* arch : {"transformer++", "performer", "combiner"}) {
        TransformerConfig c = transformer_preset("small", arch);
        CHECK(c.n_layers == 4);
        CHECK(c.n_heads == 4);
        CHECK(c.head_dim() == 64);
        CHECK(c.ffn == 768);
        TransformerConfig one = c;
        one.n_layers = 1;
        const size_t per_block = transformer_param_count(one) - transformer_param_count([&] {
                                     TransformerConfig z = one;
                                     z.n_layers = 0;
                                     return z;
                                 }());
        CHECK(per_block == 852480);
        CHECK(transformer_param_count(c) == (size_t)c.vocab_size * c.d + 4 * 852480 + (size_t)c.d);
        CHECK(transformer_fixed_count(c) == (c.performer() ? (size_t)4 * 256 * 64 : 0));
    }
}

// Model gradient against finite differences for a sample of every trained tensor (as test_model.cpp): error per
// tensor is max |analytic − numeric| over the sampled entries divided by the largest |numeric| (strong init), or by
// the largest gradient of the whole model (paper init, where some tensors' gradients are below what central
// differences resolve).
void check_model_gradient(const std::string& arch, bool causal, bool strong) {
    TransformerModel<double> model(tiny(arch, causal));
    model.performer_chunk = 3;  // does not divide T = 16
    model.init_weights(42, strong);
    Batch batch = random_batch(model.cfg, 2, model.cfg.seq_len, 7);
    model.forward(batch.tokens.data(), batch.targets.data(), batch.B, batch.T);
    model.zero_grad();
    model.backward();
    std::vector<double> analytic = model.grads;
    const double scale = max_abs(analytic);
    auto loss = [&]() { return model.forward(batch.tokens.data(), batch.targets.data(), batch.B, batch.T); };
    Rng pick(3);
    int checked = 0;
    double worst = 0;
    for (const TensorSpec& spec : model.specs) {
        if (!spec.trained) continue;
        std::vector<size_t> entries;
        for (int k = 0; k < 8; k++) entries.push_back(spec.offset + (size_t)pick.below((int)spec.count));
        if (spec.name == "wte")
            for (int k = 0; k < 4; k++) entries.push_back((size_t)batch.tokens[k] * model.cfg.d + (size_t)k);
        double max_num = 0;
        for (size_t i : entries) max_num = std::max(max_num, std::fabs(analytic[i]));
        const double rel = gradcheck(model.params, analytic, loss, entries);
        const double err = strong ? rel : rel * max_num / scale;
        INFO((arch + " " + spec.name + (causal ? " causal" : " non-causal") + (strong ? " strong" : " paper"))
             << " init: error " << err);
        CHECK(err < 1e-6);
        if (strong) CHECK(max_num > 1e-4);  // not a comparison between near-zeros
        checked++;
        worst = std::max(worst, err);
    }
    const std::string label = arch + (causal ? " causal" : " non-causal") + (strong ? " strong" : " paper");
    MESSAGE(label << " init: worst error over the sampled tensors " << worst);
    CHECK(checked == (int)(2 + 6 * model.cfg.n_layers));
}
TEST_CASE("model gradient, transformer++: causal, paper init") { check_model_gradient("transformer++", true, false); }
TEST_CASE("model gradient, transformer++: causal, strong init") { check_model_gradient("transformer++", true, true); }
TEST_CASE("model gradient, transformer++: non-causal, strong init") {
    check_model_gradient("transformer++", false, true);
}
TEST_CASE("model gradient, performer: causal, paper init") { check_model_gradient("performer", true, false); }
TEST_CASE("model gradient, performer: causal, strong init") { check_model_gradient("performer", true, true); }
TEST_CASE("model gradient, performer: non-causal, strong init") { check_model_gradient("performer", false, true); }
// Combiner (BASELINES.md §3): the tiny preset's block 4 makes 4 spans of T = 16, so every part of its attention
// (direct keys, summaries, the max pooling) is in the loss.
TEST_CASE("model gradient, combiner: causal, paper init") { check_model_gradient("combiner", true, false); }
TEST_CASE("model gradient, combiner: causal, strong init") { check_model_gradient("combiner", true, true); }
TEST_CASE("model gradient, combiner: non-causal, strong init") { check_model_gradient("combiner", false, true); }

TEST_CASE("Combiner with block = T is Transformer++: the same logits (double, 1e-12)") {
    for (bool causal : {true, false}) {
        TransformerConfig ct = tiny("transformer++", causal), cc = tiny("combiner", causal);
        cc.block = cc.seq_len;  // one span: every query sees its own span's keys, and no summary
        TransformerModel<double> tpp(ct), comb(cc);
        tpp.init_weights(31, true);
        comb.init_weights(31, true);
        REQUIRE(tpp.params == comb.params);  // the same tensors, drawn in the same order
        Batch batch = random_batch(ct, 2, ct.seq_len, 32);
        const double lt = tpp.forward(batch.tokens.data(), batch.targets.data(), batch.B, batch.T);
        const double lc = comb.forward(batch.tokens.data(), batch.targets.data(), batch.B, batch.T);
        const size_t n = (size_t)batch.B * batch.T * ct.vocab_size;
        const double err = max_abs_diff(tpp.acts.logits, comb.acts.logits, n);
        MESSAGE(std::string(causal ? "causal" : "non-causal") << ": max |logit difference| " << err << ", losses "
                                                               << lt << " " << lc);
        CHECK(err < 1e-12);
        CHECK(max_abs(std::vector<double>(tpp.acts.logits, tpp.acts.logits + n)) > 0.1);
        // and with block < T they differ: the test can fail
        TransformerConfig c4 = tiny("combiner", causal);
        TransformerModel<double> comb4(c4);
        comb4.init_weights(31, true);
        comb4.forward(batch.tokens.data(), batch.targets.data(), batch.B, batch.T);
        CHECK(max_abs_diff(tpp.acts.logits, comb4.acts.logits, n) > 1e-6);
    }
}

TEST_CASE("Combiner: T not a multiple of block is refused, naming both") {
    TransformerModel<double> model(tiny("combiner"));
    model.init_weights(1, false);
    std::vector<int> tokens(14, 1);
    CHECK_THROWS_WITH_AS(model.forward(tokens.data(), nullptr, 1, 14),
                         doctest::Contains("T=14 is not a multiple of Combiner's block c=4"), flash_error);
    TransformerConfig c = tiny("combiner");
    c.seq_len = 18;
    CHECK_THROWS_WITH_AS(transformer_config_validate(c),
                         doctest::Contains("'seq_len' (18) is not a multiple of 'block'"), flash_error);
}

TEST_CASE("performer: the loss and the gradients do not depend on the chunk size") {
    TransformerModel<double> model(tiny("performer"));
    model.init_weights(5, true);
    Batch batch = random_batch(model.cfg, 2, model.cfg.seq_len, 9);
    std::vector<double> ref_grads;
    double ref = 0, max_loss_diff = 0, max_grad_diff = 0;
    for (int chunk : {16, 1, 3, 5, 8, 64}) {  // 16 = T: one chunk; 3 and 5 do not divide T; 64 > T
        model.performer_chunk = chunk;
        const double loss = model.forward(batch.tokens.data(), batch.targets.data(), batch.B, batch.T);
        model.zero_grad();
        model.backward();
        if (ref_grads.empty()) {
            ref = loss;
            ref_grads = model.grads;
            continue;
        }
        max_loss_diff = std::max(max_loss_diff, std::fabs(loss - ref));
        max_grad_diff = std::max(max_grad_diff, max_abs_diff(model.grads.data(), ref_grads.data(), ref_grads.size()));
    }
    MESSAGE("chunk sizes 1..64: loss " << ref << ", max loss difference " << max_loss_diff
                                       << ", max gradient difference " << max_grad_diff << " (largest gradient "
                                       << max_abs(ref_grads) << ")");
    CHECK(max_loss_diff < 1e-12);
    CHECK(max_grad_diff < 1e-12 * std::max(1.0, max_abs(ref_grads)));
}

TEST_CASE("performer: the FAVOR+ stabilisers cancel (both set to 0 give the same logits)") {
    for (bool causal : {true, false}) {
        TransformerModel<double> model(tiny("performer", causal));
        model.init_weights(6, true);
        Batch batch = random_batch(model.cfg, 2, model.cfg.seq_len, 10);
        const size_t n = (size_t)batch.B * batch.T * model.cfg.vocab_size;
        model.forward(batch.tokens.data(), nullptr, batch.B, batch.T);
        std::vector<double> with(model.acts.logits, model.acts.logits + n);
        // the stabilisers are in use: the largest key exponent is far from 0
        double max_phk = 0;
        for (size_t i = 0; i < (size_t)batch.B * model.cfg.n_heads * batch.T * model.cfg.features; i++)
            max_phk = std::max(max_phk, model.acts.layers[0].phk[i]);
        CHECK(max_phk == doctest::Approx(1 / std::sqrt((double)model.cfg.features)).epsilon(1e-14));
        model.favor_stabilise = false;
        model.forward(batch.tokens.data(), nullptr, batch.B, batch.T);
        const double diff = max_abs_diff(with.data(), model.acts.logits, n);
        MESSAGE("causal=" << causal << ": logits with and without stabilisers differ by " << diff << " (largest logit "
                          << max_abs(with) << ")");
        CHECK(diff < 1e-12);
        CHECK(max_abs(with) > 1.0);
    }
}

void check_causality(const std::string& arch, bool strong) {
    TransformerModel<double> model(tiny(arch));
    model.performer_chunk = 5;
    model.init_weights(11, strong);
    Batch batch = random_batch(model.cfg, 1, model.cfg.seq_len, 12);
    const int V = model.cfg.vocab_size, Tn = batch.T;
    model.forward(batch.tokens.data(), nullptr, 1, Tn);
    std::vector<double> before(model.acts.logits, model.acts.logits + (size_t)Tn * V);
    for (int t : {0, 6, Tn - 1}) {
        std::vector<int> changed = batch.tokens;
        changed[t] = (changed[t] + 1) % V;
        model.forward(changed.data(), nullptr, 1, Tn);
        const double earlier = max_abs_diff(before.data(), model.acts.logits, (size_t)t * V);
        const double at_t = max_abs_diff(before.data() + (size_t)t * V, model.acts.logits + (size_t)t * V, V);
        MESSAGE((arch + (strong ? " strong" : " paper")) << " init, token " << t << ": earlier logits moved by "
                                                         << earlier << ", logits at t by " << at_t);
        // Transformer++: exactly 0. Performer: the key stabiliser c moves with a later key, which changes the
        // earlier outputs by rounding only (BASELINES.md §2).
        CHECK(earlier <= 1e-13 * max_abs(before));
        CHECK(at_t > 1e-6);
    }
}
TEST_CASE("causality: a token changes no earlier logits, transformer++") {
    check_causality("transformer++", false);
    check_causality("transformer++", true);
}
TEST_CASE("causality: a token changes no earlier logits (to rounding), performer") {
    check_causality("performer", false);
    check_causality("performer", true);
}

TEST_CASE("non-causal: a later token changes earlier logits, both archs") {
    for (const char* arch : {"transformer++", "performer"}) {
        TransformerModel<double> model(tiny(arch, false));
        model.init_weights(13, true);
        Batch batch = random_batch(model.cfg, 1, model.cfg.seq_len, 14);
        const int V = model.cfg.vocab_size;
        model.forward(batch.tokens.data(), nullptr, 1, batch.T);
        std::vector<double> before(model.acts.logits, model.acts.logits + V);
        batch.tokens[batch.T - 1] = (batch.tokens[batch.T - 1] + 1) % V;
        model.forward(batch.tokens.data(), nullptr, 1, batch.T);
        CHECK(max_abs_diff(before.data(), model.acts.logits, V) > 1e-6);
    }
}

// Every Ω of the model, in spec order.
std::vector<double> omega_values(const TransformerModel<double>& model, const std::vector<double>& buf) {
    std::vector<double> out;
    for (const TensorSpec& s : model.specs)
        if (!s.trained) out.insert(out.end(), buf.begin() + s.offset, buf.begin() + s.offset + s.count);
    return out;
}

TEST_CASE("omega is not trained: no gradient, no moments, no decay; AdamW leaves it alone") {
    TransformerModel<double> model(tiny("performer"));
    model.init_weights(15, false);
    const TransformerConfig& c = model.cfg;
    int n_omega = 0;
    for (const TensorSpec& s : model.specs) {
        if (s.name.find("omega") == std::string::npos) {
            CHECK(s.trained);
            continue;
        }
        n_omega++;
        CHECK_FALSE(s.trained);
        CHECK_FALSE(s.decay);
        CHECK(s.shape == std::vector<int64_t>{c.features, c.head_dim()});
    }
    CHECK(n_omega == c.n_layers);
    // one flat buffer holds every tensor, Ω included; Ω's grads and moments stay zero
    CHECK(model.params.size() == model.param_count());
    CHECK(trained_param_count(model.specs) + (size_t)c.n_layers * c.features * c.head_dim() == model.param_count());
    CHECK(transformer_fixed_count(c) == (size_t)c.n_layers * c.features * c.head_dim());
    for (int l = 0; l < c.n_layers; l++) {
        CHECK(model.dp.layers[l].omega == nullptr);
        CHECK(model.p.layers[l].omega == model.params.data() + model.specs[1 + 7 * l + 6].offset);
    }
    // a few AdamW steps with weight decay change every trained tensor and not Ω
    const std::vector<double> omega = omega_values(model, model.params), params = model.params;
    Batch batch = random_batch(c, 2, c.seq_len, 16);
    AdamWConfig opt;
    for (int step = 1; step <= 3; step++) {
        model.forward(batch.tokens.data(), batch.targets.data(), batch.B, batch.T);
        model.zero_grad();
        model.backward();
        model.adamw_update(1e-2, opt, step);
    }
    CHECK(omega_values(model, model.params) == omega);
    for (const std::vector<double>* zero : {&model.grads, &model.adam_m, &model.adam_v})
        CHECK(max_abs(omega_values(model, *zero)) == 0.0);
    CHECK(max_abs_diff(model.params.data(), params.data(), params.size()) > 1e-3);
    // the Ω of different layers differ (one per layer)
    const size_t per = (size_t)c.features * c.head_dim();
    CHECK(max_abs_diff(omega.data(), omega.data() + per, per) > 0.1);
}

TEST_CASE("Transformer++ and Performer of one seed start from the same trained weights") {
    TransformerModel<double> a(tiny("transformer++")), b(tiny("performer"));
    a.init_weights(17, false);
    b.init_weights(17, false);
    // every trained tensor of one (Ω aside, b has a's tensors in a's order) holds the same values in the other
    size_t compared = 0;
    for (const TensorSpec& sa : a.specs)
        for (const TensorSpec& sb : b.specs)
            if (sb.name == sa.name) {
                CHECK(std::equal(a.params.begin() + sa.offset, a.params.begin() + sa.offset + sa.count,
                                 b.params.begin() + sb.offset));
                compared += sa.count;
            }
    CHECK(compared == a.params.size());
    // spec init: matrices N(0, 0.02), gains 1
    CHECK(a.p.layers[1].attn_norm_g[3] == 1.0);
    double ss = 0;
    const size_t n = (size_t)a.cfg.d * 3 * a.cfg.d;
    for (size_t i = 0; i < n; i++) ss += a.p.layers[0].w_qkv[i] * a.p.layers[0].w_qkv[i];
    CHECK(std::sqrt(ss / n) == doctest::Approx(0.02).epsilon(0.1));
}

TEST_CASE("checkpoints keep omega; one without it is refused and changes nothing") {
    TransformerModel<double> model(tiny("performer"));
    model.init_weights(18, true);
    const std::string path = "build/test_transformer_ckpt.safetensors";
    save_weights(path, model);
    TransformerModel<double> loaded(tiny("performer"));
    load_weights(path, loaded);
    // F32 in the file
    const std::vector<double> omega = omega_values(model, model.params), omega_loaded = omega_values(loaded, loaded.params);
    for (size_t i = 0; i < omega.size(); i++) CHECK(omega_loaded[i] == (double)(float)omega[i]);
    for (size_t i = 0; i < model.params.size(); i += 37) CHECK(loaded.params[i] == (double)(float)model.params[i]);
    SafeTensorsFile f = safetensors_read(path);
    CHECK(f.find("layers.1.omega") != nullptr);
    CHECK(f.find("grad.layers.1.omega") == nullptr);
    CHECK(checkpoint_model_config(f, path)["arch"] == "performer");

    // the same file without layers.1.omega
    std::vector<SafeTensor> kept;
    for (const SafeTensor& t : f.tensors)
        if (t.name != "layers.1.omega") kept.push_back(t);
    safetensors_write(path, kept, f.metadata);
    TransformerModel<double> fresh(tiny("performer"));
    fresh.init_weights(19, false);
    const std::vector<double> params = fresh.params;
    std::string message;
    try {
        load_weights(path, fresh);
    } catch (const flash_error& e) {
        message = e.what();
    }
    CHECK(message.find("no tensor 'layers.1.omega'") != std::string::npos);
    CHECK(message.find("cannot be redrawn") != std::string::npos);
    CHECK(fresh.params == params);

    // a Transformer++ checkpoint does not load into a Performer
    TransformerModel<double> tpp(tiny("transformer++"));
    tpp.init_weights(20, false);
    save_weights(path, tpp);
    message.clear();
    try {
        load_weights(path, fresh);
    } catch (const flash_error& e) {
        message = e.what();
    }
    CHECK(message.find("arch: transformer++ vs performer") != std::string::npos);
    std::remove(path.c_str());
}

TEST_CASE("a baseline's weights holding NaN or Inf are refused, and the model is left as it was") {
    TransformerModel<float> model(tiny("performer"));
    model.init_weights(21, false);
    const std::string path = "build/test_transformer_nan.safetensors";
    for (const char* name : {"layers.0.w_qkv", "layers.1.omega"}) {
        save_weights(path, model);
        SafeTensorsFile f = safetensors_read(path);
        for (SafeTensor& t : f.tensors)
            if (t.name == name) ((float*)t.data.data())[7] = std::string(name) == "layers.1.omega" ? INFINITY : NAN;
        safetensors_write(path, f.tensors, f.metadata);
        TransformerModel<float> fresh(tiny("performer"));
        fresh.init_weights(22, false);
        const std::vector<float> params = fresh.params;  // omega included: it lives in the parameter buffer
        std::string message;
        try {
            load_weights(path, fresh);
        } catch (const flash_error& e) {
            message = e.what();
        }
        CHECK(message.find(std::string("tensor '") + name + "' holds value") != std::string::npos);
        CHECK(message.find("at index 7 (must be finite)") != std::string::npos);
        CHECK(fresh.params == params);
    }
    std::remove(path.c_str());
}

TEST_CASE("config JSON: round trip, defaults from d, and keys of another arch refused by name") {
    for (const char* arch : {"transformer++", "performer", "combiner"}) {
        TransformerConfig c = tiny(arch, false);
        TransformerConfig back = transformer_config_from_json(transformer_config_to_json(c));
        CHECK(transformer_shape_mismatch(c, back) == "");
        CHECK(back.seq_len == c.seq_len);
        if (c.combiner()) CHECK(back.block == c.block);
        // written: the arch and exactly its keys (BASELINES.md §6)
        std::set<std::string> keys, want = {"arch", "vocab_size", "d", "n_layers", "n_heads", "ffn", "seq_len",
                                            "causal", "eps", "rope_base"};
        if (c.performer()) want.insert("features");
        if (c.combiner()) want.insert("block");
        const nlohmann::json written = transformer_config_to_json(c);
        for (auto& kv : written.items()) keys.insert(kv.key());
        INFO(arch);
        CHECK(keys == want);
        CHECK(transformer_config_to_json(c)["arch"] == arch);
        // the preset names and a file's normalized config give the same
        CHECK(load_model_config_json(std::string(arch) + "-tiny") == transformer_config_to_json(tiny(arch)));
        CHECK(normalized_model_config({{"arch", arch}, {"d", 128}}).at("n_heads") == 2);
    }
    CHECK(transformer_config_from_json({{"arch", "combiner"}}).block == 128);  // BASELINES.md §6's default
    TransformerConfig c = transformer_config_from_json({{"arch", "performer"}, {"d", 128}});
    CHECK(c.n_heads == 2);
    CHECK(c.ffn == 384);
    CHECK(c.features == 256);
    auto error_of = [](const nlohmann::json& j) {
        try {
            transformer_config_from_json(j);
        } catch (const flash_error& e) {
            return std::string(e.what());
        }
        return std::string();
    };
    CHECK(error_of({{"arch", "transformer++"}, {"features", 64}})
              .find("'features' does not belong to arch transformer++") != std::string::npos);
    CHECK(error_of({{"arch", "performer"}, {"chunk", 64}}).find("'chunk' does not belong") != std::string::npos);
    CHECK(error_of({{"arch", "performer"}, {"block", 128}}).find("'block' does not belong") != std::string::npos);
    CHECK(error_of({{"arch", "combiner"}, {"features", 64}}).find("'features' does not belong to arch combiner") !=
          std::string::npos);
    CHECK(error_of({{"arch", "transformer++"}, {"block", 64}}).find("'block' does not belong to arch transformer++") !=
          std::string::npos);
    CHECK(error_of({{"arch", "combiner"}, {"e", 64}}).find("'e' does not belong to arch combiner") != std::string::npos);
    CHECK_THROWS_WITH_AS(normalized_model_config({{"arch", "flash"}, {"block", 4}}),
                         doctest::Contains("'block'"), flash_error);
    CHECK_THROWS_WITH_AS(normalized_model_config({{"arch", "lstm"}}), doctest::Contains("'lstm'"), flash_error);
    CHECK(error_of({{"arch", "flash"}}).find("'arch' is 'flash'") != std::string::npos);
    CHECK(error_of({{"arch", "transformer++"}, {"d", 96}, {"n_heads", 5}}).find("n_heads") != std::string::npos);
}

TEST_CASE("float and double agree on the tiny models") {
    for (const char* arch : {"transformer++", "performer"}) {
        TransformerModel<double> md(tiny(arch));
        TransformerModel<float> mf(tiny(arch));
        md.init_weights(21, true);
        mf.init_weights(21, true);
        Batch batch = random_batch(md.cfg, 2, md.cfg.seq_len, 22);
        const double ld = md.forward(batch.tokens.data(), batch.targets.data(), batch.B, batch.T);
        const double lf = mf.forward(batch.tokens.data(), batch.targets.data(), batch.B, batch.T);
        INFO(std::string(arch) << ": double " << ld << ", float " << lf);
        CHECK(std::isfinite(lf));
        CHECK(std::fabs(ld - lf) < 1e-4 * std::fabs(ld));
    }
}

// One float training step's loss and gradients, with `omp_threads` OpenMP and `blas_threads` OpenBLAS threads.
std::pair<double, std::vector<float>> step_result(const TransformerConfig& c, const Batch& batch, int omp_threads,
                                                  int blas_threads) {
    const int saved_omp = omp_get_max_threads(), saved_blas = openblas_get_num_threads();
    omp_set_num_threads(omp_threads);
    openblas_set_num_threads(blas_threads);
    TransformerModel<float> model(c);
    model.performer_chunk = 8;
    model.init_weights(25, true);
    const double loss = model.forward(batch.tokens.data(), batch.targets.data(), batch.B, batch.T);
    model.zero_grad();
    model.backward();
    omp_set_num_threads(saved_omp);
    openblas_set_num_threads(saved_blas);
    return {loss, model.grads};
}

// Our own work split (OpenMP over rows, heads' rows, column blocks) orders every reduction: with BLAS held at one
// thread, 1 and 2 OpenMP threads give the same bits (as test_model.cpp; OpenBLAS's own split is not ours to promise).
TEST_CASE("forward and backward are deterministic, and bit-identical with 1 and 2 OpenMP threads, both archs") {
    for (const char* arch : {"transformer++", "performer"}) {
        TransformerConfig c = transformer_preset("tiny", arch);
        c.d = 64; c.n_heads = 4; c.ffn = 96; c.features = 24; c.seq_len = 64;
        Batch batch = random_batch(c, 3, c.seq_len, 26);
        auto a = step_result(c, batch, 1, 1), b = step_result(c, batch, 1, 1), two = step_result(c, batch, 2, 1);
        INFO(arch);
        CHECK(a.first == b.first);
        CHECK(a.second == b.second);
        CHECK(a.first == two.first);
        CHECK(a.second == two.second);
        CHECK(max_abs(std::vector<double>(a.second.begin(), a.second.end())) > 0);
    }
}

TEST_CASE("AdamW: one step by hand, weight decay on matrices only") {
    TransformerModel<double> model(tiny("performer"));
    model.init_weights(28, false);
    const std::vector<double> before = model.params;
    std::fill(model.grads.begin(), model.grads.end(), 0.5);
    AdamWConfig opt;
    model.adamw_update(0.01, opt, 1);
    // first step: m̂ = g, v̂ = g², so the update is lr·(g/(|g|+eps) + wd·w)
    int decayed = 0;
    for (const TensorSpec& spec : model.specs) {
        if (!spec.trained) continue;
        const size_t i = spec.offset + spec.count - 1;
        const double wd = spec.decay ? 0.1 : 0.0;
        decayed += spec.decay;
        INFO(spec.name);
        const double want = before[i] - 0.01 * (0.5 / (0.5 + 1e-8) + wd * before[i]);
        CHECK(model.params[i] == doctest::Approx(want).epsilon(1e-14));
    }
    CHECK(decayed == 1 + 4 * model.cfg.n_layers);  // wte, and w_qkv, w_o, w_13, w_2 of each block
}

TEST_CASE("a denominator that underflows to 0 gives a non-finite output, never a silent number") {
    // φ(q) of one query is all zeros (as when exp underflows in float): 0/0, so the loss downstream is not finite
    // and the trainer stops with its message.
    Rng rng(27);
    auto phq = uniform((size_t)BH * T * m, rng, 0.05, 1.0), phk = uniform((size_t)BH * T * m, rng, 0.05, 1.0);
    auto v = randn((size_t)BH * T * hd, rng);
    for (int i = 0; i < m; i++) phq[(size_t)3 * m + i] = 0;
    std::vector<double> o(v.size()), den((size_t)BH * T);
    linear_attention_forward(o.data(), den.data(), phq.data(), phk.data(), v.data(), BH, T, hd, m, 4, true);
    CHECK(den[3] == 0.0);
    CHECK_FALSE(std::isfinite(o[(size_t)3 * hd]));
    CHECK(std::isfinite(o[(size_t)4 * hd]));
}

TEST_CASE("bad batches are refused with a clear message") {
    TransformerModel<double> model(tiny("transformer++"));
    model.init_weights(1, false);
    std::vector<int> tokens(16, 1), targets(16, 1);
    tokens[5] = 64;
    CHECK_THROWS_WITH_AS(model.forward(tokens.data(), targets.data(), 1, 16), doctest::Contains("out of range"),
                         flash_error);
    CHECK_THROWS_WITH_AS(model.backward(), doctest::Contains("needs a forward"), flash_error);
}

// ---------------------------------------------------------------------------------------------------
// The Model interface (model.h): make_model, the debug state

TEST_CASE("make_model builds every baseline; the interface gives the class's own loss and gradients") {
    for (const char* arch : {"transformer++", "performer", "combiner"}) {
        INFO(arch);
        const TransformerConfig c = tiny(arch);
        std::unique_ptr<Model<double>> m = make_model<double>(transformer_config_to_json(c));
        CHECK(m->arch() == arch);
        CHECK(m->shape_mismatch(transformer_config_to_json(c)) == "");
        CHECK(m->forward_flops_per_token() == transformer_forward_flops_per_token(c));
        TransformerModel<double> direct(c);
        CHECK(m->param_count() == direct.params.size());
        CHECK(trained_param_count(m->tensor_specs()) == transformer_param_count(c));
        direct.init_weights(40, true);
        m->init_weights(40, true);
        Batch batch = random_batch(c, 2, c.seq_len, 41);
        const double lm = m->forward(batch.tokens.data(), batch.targets.data(), 2, c.seq_len);
        CHECK(lm == direct.forward(batch.tokens.data(), batch.targets.data(), 2, c.seq_len));
        CHECK(lm > 0);
        m->zero_grad();
        m->backward();
        direct.zero_grad();
        direct.backward();
        std::vector<double> grads(m->param_count()), params(m->param_count());
        m->copy_to_host(ModelBuffer::grads, grads.data());
        CHECK(grads == direct.grads);
        CHECK(m->grad_norm() == direct.grad_norm());
        CHECK(m->grad_norm() > 0);
        // an AdamW step through the interface, and a copy round trip
        AdamWConfig opt;
        m->adamw_update(1e-3, opt, 1);
        direct.adamw_update(1e-3, opt, 1);
        m->copy_to_host(ModelBuffer::params, params.data());
        CHECK(params == direct.params);
        // no CUDA model for the baselines: a clear error
        CHECK_THROWS_WITH_AS(make_model<float>(transformer_config_to_json(c), Device::cuda),
                             doctest::Contains("has no CUDA model"), flash_error);
    }
}

TEST_CASE("a debug state of each baseline, float and double, both initialisations") {
    for (const char* arch : {"transformer++", "performer", "combiner"})
        for (bool dbl : {false, true})
            for (bool strong : {false, true}) {
                const std::string path = "build/test_transformer_debug.safetensors";
                std::vector<const char*> argv = {"train", "--debug-state", path.c_str(), "--model", nullptr,
                                                 "--seed", "5"};
                const std::string preset = std::string(arch) + "-tiny";
                argv[4] = preset.c_str();
                if (dbl) argv.push_back("--double");
                if (strong) argv.push_back("--strong-init");
                INFO(arch << (dbl ? " double" : " float") << (strong ? " strong" : " paper"));
                CHECK(debug_state_main((int)argv.size(), (char**)argv.data()) == 0);
                SafeTensorsFile f = safetensors_read(path);
                TransformerModel<double> model(tiny(arch));
                size_t trained = 0;
                for (const TensorSpec& s : model.specs) trained += s.trained;
                CHECK(f.tensors.size() == 3 + model.specs.size() + trained);  // batch, loss; weights; gradients
                CHECK(f.find("loss")->dtype == (dbl ? "F64" : "F32"));
                CHECK(checkpoint_model_config(f, path)["arch"] == arch);
                CHECK((f.find("layers.1.omega") != nullptr) == model.cfg.performer());
                CHECK(f.find("grad.layers.1.omega") == nullptr);
                // the file's weights give the file's loss and gradients
                load_weights(path, model);
                std::vector<int> tokens(32), targets(32);
                REQUIRE(f.find("batch.tokens")->data.size() == 4 * 32);  // I32, little-endian as this machine
                std::memcpy(tokens.data(), f.find("batch.tokens")->data.data(), 4 * 32);
                std::memcpy(targets.data(), f.find("batch.targets")->data.data(), 4 * 32);
                std::vector<double> loss(1);
                read_tensor(*f.find("loss"), {1}, loss.data(), path);
                const double again = model.forward(tokens.data(), targets.data(), 2, 16);
                CHECK(again == doctest::Approx(loss[0]).epsilon(dbl ? 1e-12 : 1e-5));
                model.zero_grad();
                model.backward();
                std::vector<double> grads(model.param_count());
                load_param_tensors(model, grads, f, "grad.", path, true);
                const double scale = max_abs(model.grads);
                CHECK(scale > 0);
                CHECK(max_abs_diff(grads.data(), model.grads.data(), grads.size()) < (dbl ? 1e-12 : 1e-4) * scale);
                std::remove(path.c_str());
            }
}

}  // namespace
