// test_ops.cpp: every op's backward against central finite differences, in double precision, on the tiny config
// (FLASH.md §6, oracle 1). Each op's output y is reduced to the scalar L = Σ y ⊙ W with a fixed random W, so the
// op's backward gets dy = W; the analytic gradients are compared with (L(x+h) − L(x−h)) / 2h for EVERY entry of
// every input. Error measure: see gradcheck() in testutil.h (max-norm relative error per tensor), bound 1e-6.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <array>
#include <fstream>
#include <sstream>

#include <cblas.h>
#include <omp.h>

#include "testutil.h"

namespace {

const double kTol = 1e-6;
// tiny config: B=2, T=16, C=4 (G=4 chunks), d=16, e=32, s=8, V=64
const int B = 2, T = 16, C = 4, N = B * T, d = 16, e = 32, s = 8, V = 64;

TEST_CASE("encoder backward matches finite differences") {
    Rng rng(1);
    std::vector<int> tokens(N);
    for (int& t : tokens) t = rng.below(V);
    tokens[3] = tokens[7] = tokens[20];  // repeated tokens must accumulate
    auto wte = randn((size_t)V * d, rng), W = randn((size_t)N * d, rng);
    std::vector<double> x((size_t)N * d), dwte(wte.size(), 0.0);
    auto loss = [&]() { encoder_forward(x.data(), tokens.data(), wte.data(), N, d); return dot(x, W); };
    encoder_backward(dwte.data(), W.data(), tokens.data(), N, d);
    CHECK(gradcheck(wte, dwte, loss) < kTol);
}

TEST_CASE("scalenorm backward matches finite differences") {
    Rng rng(2);
    auto x = randn((size_t)N * d, rng), W = randn((size_t)N * d, rng);
    std::vector<double> g = {1.7};
    std::vector<double> xn((size_t)N * d), rstd(N), dx(x.size(), 0.0), dg(1, 0.0);
    const double eps = 1e-6;
    auto loss = [&]() { scalenorm_forward(xn.data(), rstd.data(), x.data(), g.data(), N, d, eps); return dot(xn, W); };
    loss();
    scalenorm_backward(dx.data(), dg.data(), W.data(), x.data(), rstd.data(), g.data(), N, d);
    CHECK(gradcheck(x, dx, loss) < kTol);
    CHECK(gradcheck(g, dg, loss) < kTol);
    // forward value: mean(xn²) = g² · mean(x²) / (mean(x²) + eps)
    loss();
    double ms = 0, msx = 0;
    for (int j = 0; j < d; j++) ms += xn[j] * xn[j], msx += x[j] * x[j];
    CHECK(ms / d == doctest::Approx(1.7 * 1.7 * (msx / d) / (msx / d + eps)).epsilon(1e-14));
}

TEST_CASE("matmul backward matches finite differences") {
    Rng rng(3);
    const int in = d, out = 2 * e + s;
    auto x = randn((size_t)N * in, rng), w = randn((size_t)in * out, rng), b = randn(out, rng);
    auto W = randn((size_t)N * out, rng);
    std::vector<double> y((size_t)N * out), dx(x.size(), 0.0), dw(w.size(), 0.0), db(b.size(), 0.0);
    auto loss = [&]() { matmul_forward(y.data(), x.data(), w.data(), b.data(), N, in, out); return dot(y, W); };
    matmul_backward(dx.data(), dw.data(), db.data(), W.data(), x.data(), w.data(), N, in, out);
    CHECK(gradcheck(x, dx, loss) < kTol);
    CHECK(gradcheck(w, dw, loss) < kTol);
    CHECK(gradcheck(b, db, loss) < kTol);
}

// ldw: a product over a block of columns of a wider w (FLASH's u and [v | z] columns of W_in). The two blocks of
// [0, e) and [e, 2e+s) must give the columns of the whole product, and their backward passes the whole one's
// gradients: dx as the sum of the two, dw and db each in its own columns.
TEST_CASE("matmul over column blocks of w (ldw) equals the whole product, forward and backward") {
    Rng rng(46);
    const int in = d, out = 2 * e + s, split = e;
    auto x = randn((size_t)N * in, rng), w = randn((size_t)in * out, rng), b = randn(out, rng),
         dy = randn((size_t)N * out, rng);
    std::vector<double> y((size_t)N * out), dx(x.size(), 0.0), dw(w.size(), 0.0), db(out, 0.0);
    matmul_forward(y.data(), x.data(), w.data(), b.data(), N, in, out);
    matmul_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), N, in, out);
    const int widths[2] = {split, out - split}, firsts[2] = {0, split};
    std::vector<double> dx_blocks(x.size(), 0.0), dw_blocks(w.size(), 0.0), db_blocks(out, 0.0);
    double err = 0;
    for (int k = 0; k < 2; k++) {
        const int width = widths[k], c0 = firsts[k];
        std::vector<double> yk((size_t)N * width), dyk((size_t)N * width);
        for (int n = 0; n < N; n++)
            for (int j = 0; j < width; j++) dyk[(size_t)n * width + j] = dy[(size_t)n * out + c0 + j];
        matmul_forward(yk.data(), x.data(), w.data() + c0, b.data() + c0, N, in, width, out);
        matmul_backward(dx_blocks.data(), dw_blocks.data() + c0, db_blocks.data() + c0, dyk.data(), x.data(),
                        w.data() + c0, N, in, width, out);
        for (int n = 0; n < N; n++)
            for (int j = 0; j < width; j++)
                err = std::max(err, std::fabs(yk[(size_t)n * width + j] - y[(size_t)n * out + c0 + j]));
    }
    CHECK(err < 1e-12 * max_abs(y));
    CHECK(max_abs_diff(dx_blocks.data(), dx.data(), dx.size()) < 1e-12 * max_abs(dx));
    CHECK(max_abs_diff(dw_blocks.data(), dw.data(), dw.size()) < 1e-12 * max_abs(dw));
    CHECK(max_abs_diff(db_blocks.data(), db.data(), db.size()) < 1e-12 * max_abs(db));
}

TEST_CASE("silu backward matches finite differences") {
    Rng rng(4);
    auto x = randn(200, rng, 3.0), W = randn(200, rng);
    std::vector<double> y(200), dx(200, 0.0);
    auto loss = [&]() { silu_forward(y.data(), x.data(), y.size()); return dot(y, W); };
    silu_backward(dx.data(), W.data(), x.data(), x.size());
    CHECK(gradcheck(x, dx, loss) < kTol);
    double y0;
    double x0 = 1.5;
    silu_forward(&y0, &x0, 1);
    CHECK(y0 == doctest::Approx(1.5 / (1 + std::exp(-1.5))).epsilon(1e-15));
}

TEST_CASE("offset-scale backward matches finite differences (z strided)") {
    Rng rng(5);
    const int ldz = s + 3;  // z lives inside a wider row, as it does inside [u | v | z]
    auto z = randn((size_t)N * ldz, rng), gamma = randn(4 * s, rng, 0.5, 1.0), beta = randn(4 * s, rng);
    auto W = randn((size_t)4 * N * s, rng);
    std::vector<double> heads((size_t)4 * N * s), dz(z.size(), 0.0), dgamma(gamma.size(), 0.0), dbeta(beta.size(), 0.0);
    double* h[4] = {&heads[0], &heads[(size_t)N * s], &heads[(size_t)2 * N * s], &heads[(size_t)3 * N * s]};
    const double* dh[4] = {&W[0], &W[(size_t)N * s], &W[(size_t)2 * N * s], &W[(size_t)3 * N * s]};
    auto loss = [&]() {
        offset_scale_forward(h[0], h[1], h[2], h[3], z.data(), ldz, gamma.data(), beta.data(), N, s);
        return dot(heads, W);
    };
    offset_scale_backward(dz.data(), ldz, dgamma.data(), dbeta.data(), dh[0], dh[1], dh[2], dh[3], z.data(), ldz,
                          gamma.data(), N, s);
    CHECK(gradcheck(z, dz, loss) < kTol);
    CHECK(gradcheck(gamma, dgamma, loss) < kTol);
    CHECK(gradcheck(beta, dbeta, loss) < kTol);
    // the padding columns of z receive nothing
    for (int n = 0; n < N; n++)
        for (int j = s; j < ldz; j++) CHECK(dz[(size_t)n * ldz + j] == 0.0);
}

TEST_CASE("rope backward matches finite differences, and the rotation is the one of FLASH.md") {
    Rng rng(6);
    std::vector<double> cos_t, sin_t;
    rope_tables(cos_t, sin_t, 0, T, s, 10000.0);
    auto x = randn((size_t)N * s, rng), W = randn((size_t)N * s, rng);
    std::vector<double> y;
    auto loss = [&]() { y = x; rope_forward(y.data(), cos_t.data(), sin_t.data(), N, T, s); return dot(y, W); };
    std::vector<double> dx = W;
    rope_backward(dx.data(), cos_t.data(), sin_t.data(), N, T, s);
    CHECK(gradcheck(x, dx, loss) < kTol);
    // Direct check of one entry: row n = T+5 is position 5; dim i = 1 pairs with dim 1 + s/2.
    loss();
    const int n = T + 5, i = 1, pos = 5;
    const double th = pos * std::pow(10000.0, -2.0 * i / s);
    const double* r = &x[(size_t)n * s];
    CHECK(y[(size_t)n * s + i] == doctest::Approx(r[i] * std::cos(th) - r[i + s / 2] * std::sin(th)).epsilon(1e-14));
    CHECK(y[(size_t)n * s + i + s / 2] ==
          doctest::Approx(r[i + s / 2] * std::cos(th) + r[i] * std::sin(th)).epsilon(1e-14));
    // position 0 is the identity
    for (int j = 0; j < s; j++) CHECK(y[j] == x[j]);
}

void check_local_attention(bool causal, int row_block = kLocalRowBlock) {
    Rng rng(causal ? 7 : 8);
    const int ldv = 2 * e + s, G = T / C, nb = rel_bias_count(C, causal);
    auto qq = randn((size_t)N * s, rng), kq = randn((size_t)N * s, rng), v = randn((size_t)N * ldv, rng);
    auto w = randn(nb, rng, 0.5), W = randn((size_t)N * e, rng);
    std::vector<double> o((size_t)N * e), relu_s((size_t)B * G * C * C);
    auto loss = [&]() {
        local_attention_forward(o.data(), relu_s.data(), qq.data(), kq.data(), v.data(), ldv, w.data(), B, T, C, s, e,
                                causal, row_block);
        return dot(o, W);
    };
    loss();
    std::vector<double> dqq(qq.size(), 0.0), dkq(kq.size(), 0.0), dv(v.size(), 0.0), dw(w.size(), 0.0);
    local_attention_backward(dqq.data(), dkq.data(), dv.data(), ldv, dw.data(), W.data(), relu_s.data(), qq.data(),
                             kq.data(), v.data(), ldv, B, T, C, s, e, causal, row_block);
    CHECK(gradcheck(qq, dqq, loss) < kTol);
    CHECK(gradcheck(kq, dkq, loss) < kTol);
    CHECK(gradcheck(v, dv, loss) < kTol);
    CHECK(gradcheck(w, dw, loss) < kTol);
    // Forward against the equation, for one query: quad[a] = Σ_b relu(qq[a]·kq[b]/C + w[a−b])² v[b]
    const int b0 = 1, g0 = 2, a = 2, row = b0 * T + g0 * C + a, j = 5;
    double want = 0;
    for (int bb = 0; bb < C; bb++) {
        if (causal && bb > a) continue;
        const int key = b0 * T + g0 * C + bb;
        double sc = 0;
        for (int k = 0; k < s; k++) sc += qq[(size_t)row * s + k] * kq[(size_t)key * s + k];
        sc = sc / C + w[causal ? a - bb : a - bb + C - 1];
        want += std::max(sc, 0.0) * std::max(sc, 0.0) * v[(size_t)key * ldv + j];
    }
    CHECK(o[(size_t)row * e + j] == doctest::Approx(want).epsilon(1e-13));
}
TEST_CASE("local attention backward matches finite differences, causal") { check_local_attention(true); }
TEST_CASE("local attention backward matches finite differences, non-causal") { check_local_attention(false); }
TEST_CASE("local attention backward matches finite differences, causal, in blocks of 1, 2 and 3 rows (C = 4)") {
    for (int row_block : {1, 2, 3}) {
        INFO("row_block " << row_block);
        check_local_attention(true, row_block);
    }
}

// The causal local attention in blocks of rows (the products skip the masked blocks above the diagonal) against one
// product over the whole chunk, at C = 128: same outputs, saved relu(S) and gradients, to roundoff (double).
TEST_CASE("local attention in blocks of rows equals the whole-chunk products (C = 128, blocks of 32, 64 and 48)") {
    const int Bb = 2, Tb = 256, Cb = 128, sb = 16, eb = 24, Nb = Bb * Tb, ldv = 2 * eb + sb, Gb = Tb / Cb;
    Rng rng(21);
    auto qq = randn((size_t)Nb * sb, rng), kq = randn((size_t)Nb * sb, rng), v = randn((size_t)Nb * ldv, rng);
    auto w = randn(rel_bias_count(Cb, true), rng, 0.5), d_o = randn((size_t)Nb * eb, rng);
    struct Out {
        std::vector<double> o, relu_s, dqq, dkq, dv, dw;
    };
    auto run = [&](int row_block) {
        Out r{std::vector<double>((size_t)Nb * eb), std::vector<double>((size_t)Bb * Gb * Cb * Cb),
              std::vector<double>(qq.size()), std::vector<double>(kq.size()), std::vector<double>(v.size()),
              std::vector<double>(w.size())};
        local_attention_forward(r.o.data(), r.relu_s.data(), qq.data(), kq.data(), v.data(), ldv, w.data(), Bb, Tb, Cb,
                                sb, eb, true, row_block);
        local_attention_backward(r.dqq.data(), r.dkq.data(), r.dv.data(), ldv, r.dw.data(), d_o.data(),
                                 r.relu_s.data(), qq.data(), kq.data(), v.data(), ldv, Bb, Tb, Cb, sb, eb, true,
                                 row_block);
        return r;
    };
    const Out whole = run(Cb);
    for (int row_block : {kLocalRowBlock, 64, 48}) {
        const Out blocks = run(row_block);
        INFO("row_block " << row_block);
        CHECK(rel_err(blocks.o.data(), whole.o.data(), whole.o.size()) < 1e-13);
        CHECK(rel_err(blocks.relu_s.data(), whole.relu_s.data(), whole.relu_s.size()) < 1e-13);
        CHECK(rel_err(blocks.dqq.data(), whole.dqq.data(), whole.dqq.size()) < 1e-13);
        CHECK(rel_err(blocks.dkq.data(), whole.dkq.data(), whole.dkq.size()) < 1e-13);
        CHECK(rel_err(blocks.dv.data(), whole.dv.data(), whole.dv.size()) < 1e-13);
        CHECK(rel_err(blocks.dw.data(), whole.dw.data(), whole.dw.size()) < 1e-13);
    }
}

void check_global_attention(bool causal) {
    Rng rng(causal ? 9 : 10);
    const int ldv = 2 * e + s, G = T / C;
    auto ql = randn((size_t)N * s, rng), kl = randn((size_t)N * s, rng), v = randn((size_t)N * ldv, rng);
    auto W = randn((size_t)N * e, rng);
    std::vector<double> o((size_t)N * e), m((size_t)B * G * s * e);
    auto loss = [&]() {
        std::fill(o.begin(), o.end(), 0.0);
        global_attention_forward(o.data(), m.data(), ql.data(), kl.data(), v.data(), ldv, B, T, C, s, e, causal);
        return dot(o, W);
    };
    loss();
    std::vector<double> dql(ql.size(), 0.0), dkl(kl.size(), 0.0), dv(v.size(), 0.0);
    global_attention_backward(dql.data(), dkl.data(), dv.data(), ldv, W.data(), m.data(), ql.data(), kl.data(),
                              v.data(), ldv, B, T, C, s, e, causal);
    CHECK(gradcheck(ql, dql, loss) < kTol);
    CHECK(gradcheck(kl, dkl, loss) < kTol);
    CHECK(gradcheck(v, dv, loss) < kTol);
}
TEST_CASE("global attention backward matches finite differences, causal") { check_global_attention(true); }
TEST_CASE("global attention backward matches finite differences, non-causal") { check_global_attention(false); }

TEST_CASE("gate backward matches finite differences (u strided)") {
    Rng rng(11);
    const int ldu = 2 * e + s;
    auto u = randn((size_t)N * ldu, rng), o = randn((size_t)N * e, rng), W = randn((size_t)N * e, rng);
    std::vector<double> gated((size_t)N * e), du(u.size(), 0.0), d_o(o.size(), 0.0);
    auto loss = [&]() { gate_forward(gated.data(), u.data(), ldu, o.data(), N, e); return dot(gated, W); };
    gate_backward(du.data(), ldu, d_o.data(), W.data(), u.data(), ldu, o.data(), N, e);
    CHECK(gradcheck(u, du, loss) < kTol);
    CHECK(gradcheck(o, d_o, loss) < kTol);
}

TEST_CASE("silu gate backward matches finite differences") {
    Rng rng(47);
    auto h_u = randn((size_t)N * e, rng, 3.0), o = randn((size_t)N * e, rng), W = randn((size_t)N * e, rng);
    std::vector<double> gated((size_t)N * e), dh_u(h_u.size(), 0.0), d_o(o.size(), 0.0);
    auto loss = [&]() { silu_gate_forward(gated.data(), h_u.data(), o.data(), N, e); return dot(gated, W); };
    silu_gate_backward(dh_u.data(), d_o.data(), W.data(), h_u.data(), o.data(), N, e);
    CHECK(gradcheck(h_u, dh_u, loss) < kTol);
    CHECK(gradcheck(o, d_o, loss) < kTol);
}

// The fused gate against its naive version: silu_forward_naive then gate_forward, and back gate_backward then
// silu_backward_naive (float: exp_approx against std::exp; double: the same arithmetic). The gradients add to
// what their buffers held.
template <typename Real>
static void check_silu_gate(double tol) {
    Rng rng(48);
    auto to = [](const std::vector<double>& v) { return std::vector<Real>(v.begin(), v.end()); };
    const size_t n = (size_t)N * e;
    const auto h_u = to(randn(n, rng, 3.0)), o = to(randn(n, rng)), dgated = to(randn(n, rng)),
               dh0 = to(randn(n, rng)), do0 = to(randn(n, rng));
    std::vector<Real> gated(n), dh_u = dh0, d_o = do0;
    silu_gate_forward(gated.data(), h_u.data(), o.data(), N, e);
    silu_gate_backward(dh_u.data(), d_o.data(), dgated.data(), h_u.data(), o.data(), N, e);
    std::vector<Real> u(n), gated_n(n), du(n, Real(0)), dh_n = dh0, do_n = do0;
    silu_forward_naive(u.data(), h_u.data(), n);
    gate_forward(gated_n.data(), u.data(), e, o.data(), N, e);
    gate_backward(du.data(), e, do_n.data(), dgated.data(), u.data(), e, o.data(), N, e);
    silu_backward_naive(dh_n.data(), du.data(), h_u.data(), n);
    auto rel = [](const std::vector<Real>& a, const std::vector<Real>& b) {  // testutil.h
        return rel_err(a.data(), b.data(), b.size());
    };
    CHECK(rel(gated, gated_n) <= tol);
    CHECK(rel(d_o, do_n) <= tol);
    CHECK(rel(dh_u, dh_n) <= tol);
}
TEST_CASE("silu gate: fused equals silu then the gate (double within 1e-14, float 1e-6)") {
    check_silu_gate<double>(1e-14);
    check_silu_gate<float>(1e-6);
}

TEST_CASE("tied logits backward matches finite differences") {
    Rng rng(12);
    auto xn = randn((size_t)N * d, rng), wte = randn((size_t)V * d, rng), W = randn((size_t)N * V, rng);
    std::vector<double> logits((size_t)N * V), dxn(xn.size(), 0.0), dwte(wte.size(), 0.0);
    auto loss = [&]() { logits_forward(logits.data(), xn.data(), wte.data(), N, d, V); return dot(logits, W); };
    logits_backward(dxn.data(), dwte.data(), W.data(), xn.data(), wte.data(), N, d, V);
    CHECK(gradcheck(xn, dxn, loss) < kTol);
    CHECK(gradcheck(wte, dwte, loss) < kTol);
}

TEST_CASE("cross-entropy backward matches finite differences") {
    Rng rng(13);
    auto logits = randn((size_t)N * V, rng, 2.0);
    std::vector<int> targets(N);
    for (int& t : targets) t = rng.below(V);
    std::vector<double> losses(N), probs((size_t)N * V), dlogits(logits.size(), 0.0);
    auto loss = [&]() { return crossentropy_forward(losses.data(), probs.data(), logits.data(), targets.data(), N, V); };
    const double mean = loss();
    crossentropy_backward(dlogits.data(), probs.data(), targets.data(), N, V);
    CHECK(gradcheck(logits, dlogits, loss) < kTol);
    CHECK(loss() == mean);  // gradcheck restored the logits
    // forward value of row 0 against the definition
    double z = 0;
    for (int k = 0; k < V; k++) z += std::exp(logits[k]);
    CHECK(losses[0] == doctest::Approx(std::log(z) - logits[targets[0]]).epsilon(1e-13));
    double sum = 0;
    for (double l : losses) sum += l;
    CHECK(mean == doctest::Approx(sum / N).epsilon(1e-15));
}

TEST_CASE("cross-entropy skips ignored targets: mean over the scored ones, no gradient into ignored rows") {
    Rng rng(14);
    auto logits = randn((size_t)N * V, rng, 2.0);
    std::vector<int> targets(N);
    for (int& t : targets) t = rng.below(V);
    std::vector<double> losses(N), probs((size_t)N * V);
    const double full = crossentropy_forward(losses.data(), probs.data(), logits.data(), targets.data(), N, V);
    const std::vector<double> full_losses = losses;
    // Ignore every third target: the mean is over the others only.
    double scored_sum = 0;
    int scored = 0;
    for (int n = 0; n < N; n++)
        if (n % 3 == 0) targets[n] = kIgnoreTarget;
        else scored_sum += full_losses[n], scored++;
    REQUIRE(scored == 21);
    CHECK(scored_target_count(targets.data(), N) == 21);
    auto loss = [&]() { return crossentropy_forward(losses.data(), probs.data(), logits.data(), targets.data(), N, V); };
    const double mean = loss();
    CHECK(mean == doctest::Approx(scored_sum / 21).epsilon(1e-14));
    CHECK(mean != doctest::Approx(full).epsilon(1e-3));
    for (int n = 0; n < N; n++) CHECK(losses[n] == (n % 3 == 0 ? 0.0 : full_losses[n]));
    std::vector<double> dlogits(logits.size(), 0.0);
    crossentropy_backward(dlogits.data(), probs.data(), targets.data(), N, V);
    CHECK(gradcheck(logits, dlogits, loss) < kTol);
    for (int k = 0; k < V; k++) CHECK(dlogits[(size_t)3 * V + k] == 0.0);  // row 3 is ignored
    // Nothing scored: loss 0 and no gradient (not 0/0).
    std::fill(targets.begin(), targets.end(), kIgnoreTarget);
    CHECK(loss() == 0.0);
    std::vector<double> dnone(logits.size(), 0.5);
    crossentropy_backward(dnone.data(), probs.data(), targets.data(), N, V);
    CHECK(dnone == std::vector<double>(logits.size(), 0.5));
}

// exp_approx (ops.h) against exp in double, over floats spread through its whole range [-87, 88]: every 61st float
// bit pattern there (about 35 million values), both ends, and the values around 0 where r is small.
TEST_CASE("exp_approx: max relative error against exp below 2e-7 over [-87, 88], clamped outside") {
    auto rel_err = [](float x) {
        const double want = std::exp((double)x);
        return std::fabs((double)exp_approx(x) - want) / want;
    };
    double worst = 0;
    float worst_at = 0;
    for (float lo_hi : {-87.0f, 88.0f}) {  // walk from 0 to each end through the bit patterns
        uint32_t end_bits;
        std::memcpy(&end_bits, &lo_hi, sizeof end_bits);
        const uint32_t sign = end_bits & 0x80000000u;
        for (uint32_t mag = 0; mag <= (end_bits & 0x7fffffffu); mag += 61) {
            const uint32_t bits = sign | mag;
            float x;
            std::memcpy(&x, &bits, sizeof x);
            const double err = rel_err(x);
            if (err > worst) worst = err, worst_at = x;
        }
        worst = std::max(worst, rel_err(lo_hi));
    }
    MESSAGE("exp_approx max relative error " << worst << " at x = " << worst_at);
    CHECK(worst < 2e-7);
    CHECK(exp_approx(0.0f) == 1.0f);
    CHECK(exp_approx(-1000.0f) == exp_approx(-87.0f));  // clamped: a tiny normal float, never a denormal or NaN
    CHECK(exp_approx(-1000.0f) > 0.0f);
    CHECK(exp_approx(1000.0f) == exp_approx(88.0f));    // clamped: large and finite
    CHECK(std::isfinite(exp_approx(1000.0f)));
    CHECK(std::isnan(exp_approx(NAN)));                 // NaN propagates (and no out-of-range conversion on the way)
    CHECK(exp_approx(INFINITY) == exp_approx(88.0f));
    CHECK(exp_approx(-INFINITY) == exp_approx(-87.0f));
}

// The tuned SiLU (vectorised, exp_approx in float) against the naive one (std::exp one value at a time), over
// values from -100 to 100 and the exact ends; in double the two are the same formula and must agree to the bit.
TEST_CASE("silu: tuned equals naive (float: within 4e-7 relative, gradient too; double: within 4e-16)") {
    Rng rng(40);
    const size_t n = 10007;  // not a multiple of any vector width: the loop tails run too
    std::vector<float> x(n), dy(n), y_tuned(n), y_naive(n), dx_tuned(n, 0.25f), dx_naive(n, 0.25f);
    for (size_t i = 0; i < n; i++) x[i] = (float)(30 * rng.normal()), dy[i] = (float)rng.normal();
    x[0] = -100.0f, x[1] = 100.0f, x[2] = 0.0f, x[3] = -88.5f;
    silu_forward(y_tuned.data(), x.data(), n);
    silu_forward_naive(y_naive.data(), x.data(), n);
    silu_backward(dx_tuned.data(), dy.data(), x.data(), n);
    silu_backward_naive(dx_naive.data(), dy.data(), x.data(), n);
    double worst_y = 0, worst_dx = 0;
    for (size_t i = 0; i < n; i++) {
        // relative to the size of the terms (x, dy), so values near 0 (silu(-100) = -4e-42) do not blow it up
        worst_y = std::max(worst_y, std::fabs((double)y_tuned[i] - y_naive[i]) / std::max(1.0, std::fabs((double)x[i])));
        worst_dx = std::max(worst_dx, std::fabs((double)dx_tuned[i] - dx_naive[i]) /
                                          std::max(1.0, std::fabs((double)dy[i] * (1 + std::fabs((double)x[i])))));
    }
    MESSAGE("silu tuned vs naive, float: forward " << worst_y << ", backward " << worst_dx);
    CHECK(worst_y < 4e-7);
    CHECK(worst_dx < 4e-7);
    CHECK(y_tuned[1] == 100.0f);
    CHECK(std::fabs(y_tuned[0]) < 1e-30f);

    // double: std::exp in both; x · σ(x) against x / (1 + e^−x), so one rounding apart
    std::vector<double> xd(x.begin(), x.end()), yd_tuned(n), yd_naive(n);
    silu_forward(yd_tuned.data(), xd.data(), n);
    silu_forward_naive(yd_naive.data(), xd.data(), n);
    for (size_t i = 0; i < n; i++) CHECK(std::fabs(yd_tuned[i] - yd_naive[i]) <= 4e-16 * std::fabs(yd_naive[i]));
}

// The fused rows (flash.h: gau_rows_forward/backward, rows [v | z]) against the unfused ops they replace, run one
// after the other: silu_forward, offset_scale_forward, rope_forward ×4, and backward rope_backward ×4,
// offset_scale_backward, silu_backward. In double they are the same arithmetic but for the order of the sums over
// rows of dγ, dβ.
template <typename Real>
static void check_gau_rows(double tol) {
    Rng rng(41);
    const int Nr = 150, Tr = 50, I = e + s;  // rows [v | z]; Nr not a multiple of the 64-row blocks of the backward
    std::vector<double> cos_t, sin_t;
    rope_tables(cos_t, sin_t, 0, Tr, s, 10000.0);
    auto to = [](const std::vector<double>& v) { return std::vector<Real>(v.begin(), v.end()); };
    const auto h = to(randn((size_t)Nr * I, rng, 3.0)), gamma = to(randn(4 * s, rng, 0.5, 1.0)),
               beta = to(randn(4 * s, rng)), dact0 = to(randn((size_t)Nr * I, rng)),
               dheads0 = to(randn((size_t)4 * Nr * s, rng)), dh0 = to(randn((size_t)Nr * I, rng));
    const size_t Ns = (size_t)Nr * s;
    struct Out { std::vector<Real> act, heads, dh, dgamma, dbeta, dact; };
    Out fused{std::vector<Real>((size_t)Nr * I), std::vector<Real>(4 * Ns), dh0, std::vector<Real>(4 * s, Real(0.5)),
              std::vector<Real>(4 * s, Real(-0.5)), dact0};
    Out naive = fused;
    std::vector<Real> dheads_f = dheads0, dheads_n = dheads0;
    {
        Real* hd = fused.heads.data();
        gau_rows_forward(fused.act.data(), hd, hd + Ns, hd + 2 * Ns, hd + 3 * Ns, h.data(), gamma.data(), beta.data(),
                         cos_t.data(), sin_t.data(), Nr, Tr, e, s);
        Real* dhd = dheads_f.data();
        gau_rows_backward(fused.dh.data(), fused.dgamma.data(), fused.dbeta.data(), fused.dact.data(), dhd, dhd + Ns,
                          dhd + 2 * Ns, dhd + 3 * Ns, h.data(), fused.act.data(), gamma.data(), cos_t.data(),
                          sin_t.data(), Nr, Tr, e, s);
    }
    {
        Real* hd = naive.heads.data();
        silu_forward_naive(naive.act.data(), h.data(), (size_t)Nr * I);
        offset_scale_forward(hd, hd + Ns, hd + 2 * Ns, hd + 3 * Ns, naive.act.data() + e, I, gamma.data(),
                             beta.data(), Nr, s);
        for (int i = 0; i < 4; i++) rope_forward(hd + i * Ns, cos_t.data(), sin_t.data(), Nr, Tr, s);
        Real* dhd = dheads_n.data();
        for (int i = 0; i < 4; i++) rope_backward(dhd + i * Ns, cos_t.data(), sin_t.data(), Nr, Tr, s);
        offset_scale_backward(naive.dact.data() + e, I, naive.dgamma.data(), naive.dbeta.data(), dhd, dhd + Ns,
                              dhd + 2 * Ns, dhd + 3 * Ns, naive.act.data() + e, I, gamma.data(), Nr, s);
        silu_backward_naive(naive.dh.data(), naive.dact.data(), h.data(), (size_t)Nr * I);
    }
    auto rel = [](const std::vector<Real>& a, const std::vector<Real>& b) {  // testutil.h
        return rel_err(a.data(), b.data(), b.size());
    };
    CHECK(rel(fused.act, naive.act) < tol);
    CHECK(rel(fused.heads, naive.heads) < tol);
    CHECK(rel(dheads_f, dheads_n) < tol);
    CHECK(rel(fused.dact, naive.dact) < tol);
    CHECK(rel(fused.dh, naive.dh) < tol);
    CHECK(rel(fused.dgamma, naive.dgamma) < tol);
    CHECK(rel(fused.dbeta, naive.dbeta) < tol);
    MESSAGE("gau rows fused vs naive: dh " << rel(fused.dh, naive.dh) << ", dgamma " << rel(fused.dgamma, naive.dgamma));
}
TEST_CASE("gau rows: the fused silu, offset-scale and RoPE equal the three ops one after the other (double)") {
    check_gau_rows<double>(1e-14);
}
TEST_CASE("gau rows: the fused silu, offset-scale and RoPE equal the three ops one after the other (float)") {
    // float: exp_approx (< 2e-7) against std::exp, and the dγ, dβ sums over 150 rows in another order
    check_gau_rows<float>(2e-6);
}

TEST_CASE("matmul_residual_forward equals matmul_forward then residual_forward") {
    Rng rng(42);
    const int in = e, out = d;
    auto x = randn((size_t)N * in, rng), w = randn((size_t)in * out, rng), b = randn(out, rng),
         res = randn((size_t)N * out, rng);
    std::vector<double> fused((size_t)N * out), naive((size_t)N * out);
    matmul_residual_forward(fused.data(), res.data(), x.data(), w.data(), b.data(), N, in, out);
    matmul_forward(naive.data(), x.data(), w.data(), b.data(), N, in, out);
    residual_forward(naive.data(), res.data(), naive.size());
    CHECK(max_abs_diff(fused.data(), naive.data(), naive.size()) < 1e-12 * max_abs(naive));
    std::vector<double> in_place = res;  // y may be the residual itself
    matmul_residual_forward(in_place.data(), in_place.data(), x.data(), w.data(), b.data(), N, in, out);
    CHECK(in_place == fused);
}

// gemm splits a large product among the OpenMP threads (ops.cpp); gemm_blas is the plain BLAS call it replaces.
// Both transposes, both split directions (rows when C is tall, columns when it is wide), an uneven split
// (boundaries on multiples of 16), alpha and beta.
template <typename Real>
void check_gemm_split(double tol) {
    const int saved_omp = omp_get_max_threads(), saved_blas = openblas_get_num_threads();
    omp_set_num_threads(2);
    openblas_set_num_threads(2);
    Rng rng(43);
    for (auto [M, N, K] : {std::array<int, 3>{301, 70, 100}, std::array<int, 3>{40, 333, 200}})
        for (bool ta : {false, true})
            for (bool tb : {false, true}) {
                INFO("M " << M << " N " << N << " K " << K << " ta " << ta << " tb " << tb);
                REQUIRE(gemm_parts(M, N, K) == 2);  // the split path is the one under test
                const std::vector<double> a = randn((size_t)M * K, rng), b = randn((size_t)K * N, rng),
                                          c0 = randn((size_t)M * N, rng);
                const std::vector<Real> A(a.begin(), a.end()), Bm(b.begin(), b.end());
                std::vector<Real> split(c0.begin(), c0.end()), plain = split;
                const int lda = ta ? M : K, ldb = tb ? K : N;
                gemm(ta, tb, M, N, K, Real(0.5), A.data(), lda, Bm.data(), ldb, Real(1), split.data(), N);
                openblas_set_num_threads(1);
                gemm_blas(ta, tb, M, N, K, Real(0.5), A.data(), lda, Bm.data(), ldb, Real(1), plain.data(), N);
                openblas_set_num_threads(2);
                double err = 0, scale = 0;
                for (size_t i = 0; i < plain.size(); i++) {
                    err = std::max(err, std::fabs((double)split[i] - (double)plain[i]));
                    scale = std::max(scale, std::fabs((double)plain[i]));
                }
                CHECK(scale > 1);
                CHECK(err <= tol * scale);
            }
    int inside = 0;
#pragma omp parallel num_threads(2)
    {
#pragma omp single
        inside = gemm_parts(1000, 1000, 1000);  // already inside a parallel region: no second split
    }
    CHECK(inside == 1);
    int inside_inactive = 0;
#pragma omp parallel if (0)
    inside_inactive = gemm_parts(1000, 1000, 1000);  // a region of one thread: no nested team either (for_each_chunk)
    CHECK(inside_inactive == 1);
    CHECK(gemm_parts(1000, 1000, 1) == 1);  // 2 MFLOP: not worth a fork
    openblas_set_num_threads(1);
    CHECK(gemm_parts(1000, 1000, 1000) == 1);  // BLAS held at one thread: one block
    omp_set_num_threads(saved_omp);
    openblas_set_num_threads(saved_blas);
}
TEST_CASE("gemm: the product split among threads equals the plain BLAS call (double within 1e-13, float 1e-5)") {
    check_gemm_split<double>(1e-13);
    check_gemm_split<float>(1e-5);
}

// for_each_chunk (ops.h): over chunks on min(n, threads) threads with OpenBLAS at one thread when there are at least
// half as many chunks as threads; otherwise one after the other, outside any parallel region, where gemm splits the
// products. Every chunk is visited once, each thread makes its scratch once, and OpenBLAS's count comes back.
TEST_CASE("for_each_chunk: chunks in parallel, or one after the other outside any parallel region") {
    const int saved_omp = omp_get_max_threads(), saved_blas = openblas_get_num_threads();
    omp_set_num_threads(4);  // threads, not cores: the rule only counts them
    CHECK(chunk_threads(1) == 1);
    CHECK(chunk_threads(2) == 2);
    CHECK(chunk_threads(3) == 3);
    CHECK(chunk_threads(9) == 4);
    int nested = 0;
#pragma omp parallel if (0)
    nested = chunk_threads(9);
    CHECK(nested == 1);

    omp_set_num_threads(2);
    openblas_set_num_threads(2);
    for (int n : {1, 2, 7}) {
        CAPTURE(n);
        // recorded inside, checked outside (the body runs on several threads)
        std::vector<int> visits(n, 0), level(n, -1), team(n, 0), blas(n, 0), parts(n, 0), scratch_seen(n, 0);
        std::vector<int> made(2, 0);  // scratch made, per thread
        for_each_chunk(
            n, [&] { return ++made[omp_get_thread_num()]; },
            [&](int i, int& scratch) {
                scratch_seen[i] = scratch;
                visits[i]++;
                level[i] = omp_get_level();
                team[i] = omp_get_num_threads();
                blas[i] = openblas_get_num_threads();
                parts[i] = gemm_parts(1000, 1000, 1000);
            });
        const bool parallel = n >= 2;
        for (int i = 0; i < n; i++) {
            CAPTURE(i);
            CHECK(visits[i] == 1);
            CHECK(scratch_seen[i] == 1);
            CHECK(level[i] == (parallel ? 1 : 0));           // one after the other: no region at all
            CHECK(team[i] == (parallel ? 2 : 1));
            CHECK(blas[i] == (parallel ? 1 : 2));            // over chunks: OpenBLAS at one thread
            CHECK(parts[i] == (parallel ? 1 : 2));           // one after the other: products split
        }
        CHECK(made[0] == 1);
        CHECK(made[1] == (parallel ? 1 : 0));
        CHECK(openblas_get_num_threads() == 2);  // restored
    }
    omp_set_num_threads(saved_omp);
    openblas_set_num_threads(saved_blas);
}

// A one-row product goes to gemv (ops.cpp): every transpose, a strided row of A (A stored transposed), beta 1 and
// beta 0 over a C full of NaN (which beta = 0 must overwrite, as BLAS's gemm does).
template <typename Real>
void check_gemm_one_row(double tol) {
    Rng rng(44);
    const int N = 333, K = 200, lda_t = 3;  // A stored transposed: (K, lda_t), the row is its column 0
    for (bool ta : {false, true})
        for (bool tb : {false, true})
            for (double beta : {1.0, 0.0}) {
                INFO("ta " << ta << " tb " << tb << " beta " << beta);
                const std::vector<double> a = randn((size_t)K * lda_t, rng), b = randn((size_t)K * N, rng),
                                          c0 = randn(N, rng);
                const std::vector<Real> A(a.begin(), a.end()), Bm(b.begin(), b.end());
                std::vector<Real> row(c0.begin(), c0.end()), plain = row;
                if (beta == 0) row.assign(N, Real(NAN));
                const int lda = ta ? lda_t : K, ldb = tb ? K : N;
                gemm(ta, tb, 1, N, K, Real(0.5), A.data(), lda, Bm.data(), ldb, Real(beta), row.data(), N);
                gemm_blas(ta, tb, 1, N, K, Real(0.5), A.data(), lda, Bm.data(), ldb, Real(beta), plain.data(), N);
                double err = 0, scale = 0;
                for (int i = 0; i < N; i++) {
                    err = std::max(err, std::fabs((double)row[i] - (double)plain[i]));
                    scale = std::max(scale, std::fabs((double)plain[i]));
                }
                CHECK(scale > 1);
                CHECK(err <= tol * scale);  // NaN fails this
            }
}
TEST_CASE("gemm: a one-row product (gemv) equals the plain BLAS call (double within 1e-13, float 1e-5)") {
    check_gemm_one_row<double>(1e-13);
    check_gemm_one_row<float>(1e-5);
}

// chunk_prefix_sum sweeps blocks of 256 columns chunk by chunk, split among threads (ops.cpp); here against the sums
// written out per column, over widths that leave a partial block, with B > 1, every mode, 1 and 2 threads. Each
// column adds its chunks in the same order, so the results are equal to the bit.
TEST_CASE("chunk prefix sum: blocks of columns equal the per-column sums, exactly, for any thread count") {
    const int saved = omp_get_max_threads();
    const int B = 2, G = 5;
    const size_t se = 600;
    Rng rng(45);
    const std::vector<double> x0d = randn((size_t)B * G * se, rng);
    const std::vector<float> x0(x0d.begin(), x0d.end());
    for (int threads : {1, 2})
        for (bool exclusive : {true, false})
            for (bool reverse : {false, true}) {
                if (!exclusive && reverse) continue;  // the total has no direction
                INFO("threads " << threads << " exclusive " << exclusive << " reverse " << reverse);
                omp_set_num_threads(threads);
                std::vector<float> x = x0, want = x0;
                chunk_prefix_sum(x.data(), B, G, se, exclusive, reverse);
                for (int b = 0; b < B; b++)
                    for (size_t k = 0; k < se; k++) {
                        float running = 0, total = 0;
                        for (int g = 0; g < G; g++) total += x0[((size_t)b * G + g) * se + k];
                        for (int step = 0; step < G; step++) {
                            const int g = reverse ? G - 1 - step : step;
                            const size_t i = ((size_t)b * G + g) * se + k;
                            want[i] = exclusive ? running : total;
                            running += x0[i];
                        }
                    }
                CHECK(x == want);
                if (exclusive) {  // the last chunk in the sum's direction is not read: a NaN there changes nothing
                    x = x0;
                    const int last = reverse ? 0 : G - 1;
                    for (int b = 0; b < B; b++)
                        std::fill_n(x.begin() + ((size_t)b * G + last) * se, se, std::nanf(""));
                    chunk_prefix_sum(x.data(), B, G, se, exclusive, reverse);
                    CHECK(x == want);
                }
            }
    omp_set_num_threads(saved);
}

TEST_CASE("zero_fill clears exactly [0, n), split among threads or not") {
    const int saved = omp_get_max_threads();
    for (int threads : {1, 2, 3})
        for (size_t n : {size_t(0), size_t(1), size_t(5), size_t(1001)}) {
            omp_set_num_threads(threads);
            std::vector<float> x(n + 2, 7.0f);
            zero_fill(x.data() + 1, n);
            INFO("threads " << threads << " n " << n);
            CHECK(x.front() == 7.0f);
            CHECK(x.back() == 7.0f);
            CHECK(std::count(x.begin() + 1, x.begin() + 1 + n, 0.0f) == (long)n);
        }
    omp_set_num_threads(saved);
}

// The flags the kernel keeps for the mapping that holds address p (the VmFlags line of /proc/self/smaps), or "" when
// none is found. "hg" marks memory advised MADV_HUGEPAGE.
static std::string mapping_flags(const void* p) {
    std::ifstream smaps("/proc/self/smaps");
    std::string line;
    bool inside = false;
    while (std::getline(smaps, line)) {
        unsigned long lo, hi;
        char dash;
        std::istringstream head(line);
        if (line.compare(0, 8, "VmFlags:") == 0) {
            if (inside) return line.substr(8) + " ";
        } else if (head >> std::hex >> lo >> dash >> hi && dash == '-') {
            inside = lo <= (uintptr_t)p && (uintptr_t)p < hi;
        }
    }
    return "";
}

TEST_CASE("assign_zeros_on_huge_pages: n zeros, whatever was there; large buffers advised huge pages") {
    for (size_t n : {size_t(0), size_t(10), size_t(3) << 20}) {  // 3 M floats: 12 MB, several 2 MB pages
        std::vector<float> v(17, 7.0f);
        assign_zeros_on_huge_pages(v, n);
        INFO("n " << n);
        REQUIRE(v.size() == n);
        CHECK(std::count(v.begin(), v.end(), 0.0f) == (long)n);
    }
    std::vector<double> v;
    assign_zeros_on_huge_pages(v, size_t(3) << 20);  // 24 MB
    std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
    std::string modes;
    std::getline(thp, modes);
    MESSAGE("transparent huge pages: '" << modes << "'; the buffer's mapping: '" << mapping_flags(v.data() + v.size() / 2)
            << "'");
    // Where the kernel has transparent huge pages and does not refuse them ("[never]"), the middle of the buffer
    // is advised: the flag is set whatever memory the kernel then finds free.
    if (!modes.empty() && modes.find("[never]") == std::string::npos)
        CHECK(mapping_flags(v.data() + v.size() / 2).find(" hg ") != std::string::npos);
}

TEST_CASE("residual adds in place") {
    std::vector<double> y = {1, 2, 3}, x = {10, 20, 30};
    residual_forward(y.data(), x.data(), 3);
    CHECK(y == std::vector<double>{11, 22, 33});
}

}  // namespace
