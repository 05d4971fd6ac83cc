// test_combiner.cpp: Combiner-Fixed attention (BASELINES.md §3) against finite differences, against softmax
// attention (block = T and block = 1), against a naive form that builds the full T×T attention matrix from §3's
// probabilities, for causality around span boundaries, for prefixes, and cached decoding against the full forward.
// The naive references (softmax attention and the T×T Combiner) are scalar loops written from the equations, here,
// independent of combiner.cpp. q, k, v live in one fused (B·T, 3d) buffer [q | k | v], as the model will hold them.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>

#include <omp.h>

#include "combiner.h"
#include "testutil.h"

namespace {

// Tiny shapes give threads nothing to share; the thread-count test below sets its own.
const int kOneThread = (omp_set_num_threads(1), 1);

const double kGradTol = 1e-6;

// One Combiner problem: B sequences of T rows, H heads of width h, spans of c rows, q | k | v fused with ld = 3d.
struct Problem {
    int B, T, H, h, c;
    bool causal;
    int d() const { return H * h; }
    int ld() const { return 3 * d(); }
    size_t rows() const { return (size_t)B * T; }
};

std::vector<double> random_qkv(const Problem& pb, uint64_t seed, double scale = 1.0) {
    Rng rng(seed);
    return randn(pb.rows() * pb.ld(), rng, scale);
}

// The op's forward: o (B·T, d), and its saved buffer.
struct Forward {
    std::vector<double> o, saved_buf;
    CombinerSaved<double> saved;
};
template <typename Real>
void run_forward(std::vector<Real>& o, std::vector<Real>& saved_buf, CombinerSaved<Real>& saved,
                 const std::vector<Real>& qkv, const Problem& pb) {
    const int d = pb.d();
    o.assign(pb.rows() * d, Real(0));
    saved_buf.assign(combiner_saved_count(pb.B, pb.T, pb.H, pb.h, pb.c), Real(0));
    saved = view_combiner_saved(saved_buf.data(), pb.B, pb.T, pb.H, pb.h, pb.c);
    combiner_attention_forward(o.data(), saved, qkv.data(), qkv.data() + d, qkv.data() + 2 * d, pb.ld(), pb.B, pb.T,
                               pb.H, pb.h, pb.c, pb.causal);
}
Forward forward(const std::vector<double>& qkv, const Problem& pb) {
    Forward f;
    run_forward(f.o, f.saved_buf, f.saved, qkv, pb);
    return f;
}
// d(qkv) for the loss Σ o ⊙ W, in the fused layout.
template <typename Real>
std::vector<Real> backward(const std::vector<Real>& qkv, const std::vector<Real>& W, const Problem& pb) {
    std::vector<Real> o, saved_buf;
    CombinerSaved<Real> saved;
    run_forward(o, saved_buf, saved, qkv, pb);
    const int d = pb.d();
    std::vector<Real> dqkv(qkv.size(), Real(0));
    combiner_attention_backward(dqkv.data(), dqkv.data() + d, dqkv.data() + 2 * d, pb.ld(), W.data(), saved, qkv.data(),
                                qkv.data() + d, qkv.data() + 2 * d, pb.ld(), pb.B, pb.T, pb.H, pb.h, pb.c, pb.causal);
    return dqkv;
}

// Element m of head `head`'s part (0 = q, 1 = k, 2 = v) of row (b, t).
double& at(std::vector<double>& qkv, const Problem& pb, int part, int b, int t, int head, int m) {
    return qkv[((size_t)b * pb.T + t) * pb.ld() + (size_t)part * pb.d() + (size_t)head * pb.h + m];
}
double at(const std::vector<double>& qkv, const Problem& pb, int part, int b, int t, int head, int m) {
    return at(const_cast<std::vector<double>&>(qkv), pb, part, b, t, head, m);
}
double dot_rows(const std::vector<double>& qkv, const Problem& pb, int pa, int ta, int pb_, int tb, int b, int head) {
    double s = 0;
    for (int m = 0; m < pb.h; m++) s += at(qkv, pb, pa, b, ta, head, m) * at(qkv, pb, pb_, b, tb, head, m);
    return s;
}

// ---- naive references, from the equations ---------------------------------------------------------------

// Transformer++'s attention (BASELINES.md §1) on rotated q, k, v: P = softmax_b(q[a]·k[b]/√h), causal b ≤ a.
std::vector<double> naive_softmax_attention(const std::vector<double>& qkv, const Problem& pb) {
    const int T = pb.T, h = pb.h, d = pb.d();
    std::vector<double> o(pb.rows() * d, 0.0);
    for (int b = 0; b < pb.B; b++)
        for (int head = 0; head < pb.H; head++)
            for (int i = 0; i < T; i++) {
                const int last = pb.causal ? i : T - 1;
                std::vector<double> sc(last + 1);
                double mx = -1e300, sum = 0;
                for (int j = 0; j <= last; j++) mx = std::max(mx, sc[j] = dot_rows(qkv, pb, 0, i, 1, j, b, head) / std::sqrt(h));
                for (int j = 0; j <= last; j++) sum += (sc[j] = std::exp(sc[j] - mx));
                for (int j = 0; j <= last; j++)
                    for (int m = 0; m < h; m++)
                        o[((size_t)b * T + i) * d + head * h + m] += sc[j] / sum * at(qkv, pb, 2, b, j, head, m);
            }
    return o;
}

// §3's probabilities turned into ONE T×T matrix per sequence and head: A[i,j] = P[i,j] for a direct key j, plus
// P[i,s]·ρ[s,j] for every summary s the row reads (v̂[s] = Σ_j ρ[s,j] v[j]); then o = A v. A is returned too
// (B, H, T, T).
std::vector<double> naive_combiner(const std::vector<double>& qkv, const Problem& pb, std::vector<double>* A_out = nullptr) {
    const int T = pb.T, h = pb.h, d = pb.d(), c = pb.c, n = T / c;
    const double scale = 1 / std::sqrt((double)h);
    std::vector<double> o(pb.rows() * d, 0.0), A_all((size_t)pb.B * pb.H * T * T, 0.0);
    for (int b = 0; b < pb.B; b++)
        for (int head = 0; head < pb.H; head++) {
            // summaries: q̂, k̂ (elementwise max over the span's rows), ρ
            std::vector<std::vector<double>> q_hat(n, std::vector<double>(h, -1e300)), k_hat = q_hat;
            std::vector<std::vector<double>> rho(n, std::vector<double>(c));
            for (int s = 0; s < n; s++) {
                for (int j = s * c; j < s * c + c; j++)
                    for (int m = 0; m < h; m++) {
                        q_hat[s][m] = std::max(q_hat[s][m], at(qkv, pb, 0, b, j, head, m));
                        k_hat[s][m] = std::max(k_hat[s][m], at(qkv, pb, 1, b, j, head, m));
                    }
                double sum = 0;
                for (int j = 0; j < c; j++) {
                    double l = 0;
                    for (int m = 0; m < h; m++) l += q_hat[s][m] * at(qkv, pb, 1, b, s * c + j, head, m);
                    sum += (rho[s][j] = std::exp(l * scale));  // small logits: no max shift needed here
                }
                for (int j = 0; j < c; j++) rho[s][j] /= sum;
            }
            double* A = A_all.data() + ((size_t)b * pb.H + head) * T * T;
            for (int i = 0; i < T; i++) {
                const int si = i / c;
                // the row's logits: direct keys, then summary keys, in one softmax
                std::vector<std::pair<int, double>> direct, summary;  // (key or span, logit)
                for (int j = si * c; j < si * c + c; j++)
                    if (!pb.causal || j <= i) direct.push_back({j, dot_rows(qkv, pb, 0, i, 1, j, b, head) * scale});
                for (int s = 0; s < n; s++) {
                    if (pb.causal ? s >= si : s == si) continue;
                    double g = 0;
                    for (int m = 0; m < h; m++) g += at(qkv, pb, 0, b, i, head, m) * k_hat[s][m];
                    summary.push_back({s, g * scale});
                }
                double mx = -1e300, sum = 0;
                for (auto& x : direct) mx = std::max(mx, x.second);
                for (auto& x : summary) mx = std::max(mx, x.second);
                for (auto& x : direct) sum += (x.second = std::exp(x.second - mx));
                for (auto& x : summary) sum += (x.second = std::exp(x.second - mx));
                for (auto& x : direct) A[(size_t)i * T + x.first] += x.second / sum;
                for (auto& x : summary)
                    for (int j = 0; j < c; j++) A[(size_t)i * T + x.first * c + j] += x.second / sum * rho[x.first][j];
                for (int j = 0; j < T; j++)
                    for (int m = 0; m < h; m++)
                        o[((size_t)b * T + i) * d + head * h + m] += A[(size_t)i * T + j] * at(qkv, pb, 2, b, j, head, m);
            }
        }
    if (A_out) *A_out = A_all;
    return o;
}

// Smallest gap between the largest and the second largest value of a column of q or k inside a span: finite
// differences of step 1e-5 must not move an argmax, so the gradient checks require a gap well above it.
double min_max_gap(const std::vector<double>& qkv, const Problem& pb) {
    double gap = 1e300;
    for (int part = 0; part < 2; part++)
        for (int b = 0; b < pb.B; b++)
            for (int head = 0; head < pb.H; head++)
                for (int s = 0; s < pb.T / pb.c; s++)
                    for (int m = 0; m < pb.h; m++) {
                        double first = -1e300, second = -1e300;
                        for (int j = s * pb.c; j < s * pb.c + pb.c; j++) {
                            const double x = at(qkv, pb, part, b, j, head, m);
                            if (x > first) second = first, first = x;
                            else second = std::max(second, x);
                        }
                        if (pb.c > 1) gap = std::min(gap, first - second);
                    }
    return gap;
}

// ---- the tests -------------------------------------------------------------------------------------------

void check_gradients(bool causal) {
    const Problem pb{2, 12, 2, 4, 4, causal};  // 3 spans of 4, two heads of 4
    auto qkv = random_qkv(pb, causal ? 21 : 22);
    Rng rng(causal ? 23 : 24);
    const auto W = randn(pb.rows() * pb.d(), rng);
    REQUIRE(min_max_gap(qkv, pb) > 1e-4);
    const auto dqkv = backward(qkv, W, pb);
    auto loss = [&]() { return dot(forward(qkv, pb).o, W); };
    // every entry of q, k and v, each checked as its own tensor
    std::vector<size_t> part_entries[3];
    for (size_t i = 0; i < qkv.size(); i++) part_entries[(i % pb.ld()) / pb.d()].push_back(i);
    const double err_q = gradcheck(qkv, dqkv, loss, part_entries[0]);
    const double err_k = gradcheck(qkv, dqkv, loss, part_entries[1]);
    const double err_v = gradcheck(qkv, dqkv, loss, part_entries[2]);
    MESSAGE("relative gradient error q " << err_q << ", k " << err_k << ", v " << err_v);
    CHECK(err_q < kGradTol);
    CHECK(err_k < kGradTol);
    CHECK(err_v < kGradTol);
    // The summaries take part: the max pooling's rows get gradient through q̂ (compare with only the direct block,
    // block = T, which must differ).
    CHECK(max_abs_diff(dqkv.data(), backward(qkv, W, Problem{2, 12, 2, 4, 12, causal}).data(), dqkv.size()) > 1e-3);
}
TEST_CASE("combiner attention backward matches finite differences, causal") { check_gradients(true); }
TEST_CASE("combiner attention backward matches finite differences, non-causal") { check_gradients(false); }

TEST_CASE("with block = T and block = 1, Combiner's attention is softmax attention") {
    for (bool causal : {true, false})
        for (int c : {1, 12}) {
            const Problem pb{2, 12, 2, 4, c, causal};
            const auto qkv = random_qkv(pb, 31 + c + causal);
            const auto got = forward(qkv, pb).o, want = naive_softmax_attention(qkv, pb);
            const double err = max_abs_diff(got.data(), want.data(), got.size());
            MESSAGE(std::string(causal ? "causal" : "non-causal") << ", block " << c << ": max |combiner − softmax| = " << err);
            CHECK(err < 1e-12);
            CHECK(max_abs(want) > 0.1);
        }
}

TEST_CASE("the per-span computation equals the naive T×T Combiner, and its saved probabilities are §3's") {
    for (bool causal : {true, false})
        for (int c : {2, 3, 4, 6}) {
            const Problem pb{2, 12, 2, 3, c, causal};
            const auto qkv = random_qkv(pb, 41 + c + 10 * causal, 1.5);
            std::vector<double> A;
            const auto want = naive_combiner(qkv, pb, &A);
            const Forward f = forward(qkv, pb);
            const double err = max_abs_diff(f.o.data(), want.data(), want.size());
            MESSAGE(std::string(causal ? "causal" : "non-causal") << ", block " << c << ": max |per-span − naive| = " << err);
            CHECK(err < 1e-12);
            // Combiner is not softmax attention when 1 < c < T
            const auto soft = naive_softmax_attention(qkv, pb);
            CHECK(max_abs_diff(f.o.data(), soft.data(), soft.size()) > 1e-3);
            // Every row of A and of the saved P sums to 1; causal: A is lower triangular.
            const int T = pb.T, n = T / c;
            double worst_sum = 0, above = 0;
            for (size_t r = 0; r < (size_t)pb.B * pb.H * T; r++) {
                double sa = 0, sp = 0;
                for (int j = 0; j < T; j++) {
                    sa += A[r * T + j];
                    if (j > (int)(r % T)) above = std::max(above, std::fabs(A[r * T + j]));
                }
                for (int j = 0; j < c + n; j++) sp += f.saved.p[r * (c + n) + j];
                worst_sum = std::max({worst_sum, std::fabs(sa - 1), std::fabs(sp - 1)});
            }
            CHECK(worst_sum < 1e-14);
            if (causal) CHECK(above == 0.0);
        }
}

TEST_CASE("at a model-sized head (h = 64), the per-span computation equals the naive form, with BLAS threading too") {
    // B·H = 1 pair under 2 threads takes the other parallel path: one pair at a time, BLAS's own threads.
    omp_set_num_threads(2);
    for (bool causal : {true, false})
        for (int B : {1, 3}) {
            const Problem pb{B, 64, 1, 64, 16, causal};
            const auto qkv = random_qkv(pb, 131 + B + causal);
            const auto want = naive_combiner(qkv, pb);
            const auto got = forward(qkv, pb).o;
            const double err = max_abs_diff(got.data(), want.data(), want.size());
            MESSAGE(std::string(causal ? "causal" : "non-causal") << ", B = " << B << ", h = 64, block 16, T = 64: max "
                    "|per-span − naive| = " << err);
            CHECK(err < 1e-12);
        }
    omp_set_num_threads(1);
}

TEST_CASE("causal: a change at or after a span boundary leaves every earlier output unchanged") {
    const Problem pb{2, 16, 2, 4, 4, true};
    const auto qkv = random_qkv(pb, 51);
    const auto base = forward(qkv, pb).o;
    const int d = pb.d();
    for (int t0 : {3, 4, 5, 7, 8, 9, 12}) {
        auto changed = qkv;
        Rng rng(52 + t0);
        for (int b = 0; b < pb.B; b++)  // every later row of q, k and v, in both sequences
            for (int t = t0; t < pb.T; t++)
                for (int j = 0; j < pb.ld(); j++) changed[((size_t)b * pb.T + t) * pb.ld() + j] += rng.normal();
        const auto o = forward(changed, pb).o;
        double before = 0, at_t0 = 0;
        for (int b = 0; b < pb.B; b++)
            for (int t = 0; t <= t0; t++)
                for (int j = 0; j < d; j++) {
                    const size_t i = ((size_t)b * pb.T + t) * d + j;
                    (t < t0 ? before : at_t0) = std::max(t < t0 ? before : at_t0, std::fabs(o[i] - base[i]));
                }
        CAPTURE(t0);
        CHECK(before < 1e-14);
        CHECK(at_t0 > 1e-3);  // the change does reach the output
    }
    // Backward side: a loss on the rows before t0 sends no gradient to rows at or after t0.
    for (int t0 : {4, 5, 8}) {
        std::vector<double> W(pb.rows() * d, 0.0);
        Rng rng(60 + t0);
        for (int b = 0; b < pb.B; b++)
            for (int t = 0; t < t0; t++)
                for (int j = 0; j < d; j++) W[((size_t)b * pb.T + t) * d + j] = rng.normal();
        const auto dqkv = backward(qkv, W, pb);
        double later = 0, earlier = 0;
        for (int b = 0; b < pb.B; b++)
            for (int t = 0; t < pb.T; t++)
                for (int j = 0; j < pb.ld(); j++) {
                    const double g = std::fabs(dqkv[((size_t)b * pb.T + t) * pb.ld() + j]);
                    (t >= t0 ? later : earlier) = std::max(t >= t0 ? later : earlier, g);
                }
        CAPTURE(t0);
        CHECK(later == 0.0);
        CHECK(earlier > 1e-3);
    }
    // The non-causal model does read later rows (so the checks above can fail).
    Problem nc = pb;
    nc.causal = false;
    auto changed = qkv;
    at(changed, nc, 1, 0, 15, 0, 0) += 1.0;
    const auto o0 = forward(qkv, nc).o, o1 = forward(changed, nc).o;
    CHECK(std::fabs(o1[0] - o0[0]) > 1e-6);
}

TEST_CASE("causal: a prefix run alone equals the same prefix inside a longer run") {
    const Problem longer{2, 20, 2, 4, 4, true}, prefix{2, 8, 2, 4, 4, true};
    const auto qkv_long = random_qkv(longer, 71);
    std::vector<double> qkv_prefix(prefix.rows() * prefix.ld());
    for (int b = 0; b < 2; b++)
        std::copy(qkv_long.begin() + (size_t)b * longer.T * longer.ld(),
                  qkv_long.begin() + ((size_t)b * longer.T + prefix.T) * longer.ld(),
                  qkv_prefix.begin() + (size_t)b * prefix.T * prefix.ld());
    const auto o_long = forward(qkv_long, longer).o, o_prefix = forward(qkv_prefix, prefix).o;
    const int d = longer.d();
    double err = 0;
    for (int b = 0; b < 2; b++)
        err = std::max(err, max_abs_diff(o_long.data() + (size_t)b * longer.T * d,
                                         o_prefix.data() + (size_t)b * prefix.T * d, (size_t)prefix.T * d));
    MESSAGE("max |prefix alone − prefix inside a longer run| = " << err);
    CHECK(err < 1e-14);
}

TEST_CASE("ties of the max send the gradient to the first row that holds it") {
    const Problem pb3{1, 12, 1, 4, 4, true};  // span 0's summaries are read by spans 1 and 2
    auto qkv = random_qkv(pb3, 81);
    Rng rng(82);
    const auto W = randn(pb3.rows() * pb3.d(), rng);
    // Column 2 of q and of k: rows 1 and 3 of span 0 tie at the span's max.
    for (int part : {0, 1}) {
        double mx = -1e300;
        for (int t = 0; t < 4; t++) mx = std::max(mx, at(qkv, pb3, part, 0, t, 0, 2));
        at(qkv, pb3, part, 0, 1, 0, 2) = at(qkv, pb3, part, 0, 3, 0, 2) = mx + 0.5;
    }
    auto nudged = [&](double delta) {  // row 3's entries moved by delta: below (delta < 0) or above the tie
        auto x = qkv;
        for (int part : {0, 1}) at(x, pb3, part, 0, 3, 0, 2) += delta;
        return backward(x, W, pb3);
    };
    const auto tie = backward(qkv, W, pb3), first_wins = nudged(-1e-9), second_wins = nudged(1e-9);
    for (int part : {0, 1}) {
        CAPTURE(part);
        for (int t : {1, 3}) {
            const double g_tie = at(tie, pb3, part, 0, t, 0, 2);
            CHECK(std::fabs(g_tie - at(first_wins, pb3, part, 0, t, 0, 2)) < 1e-6);
            CHECK(std::fabs(g_tie - at(second_wins, pb3, part, 0, t, 0, 2)) > 1e-3);  // the rule is visible
        }
    }
}

TEST_CASE("float agrees with double") {
    const Problem pb{2, 16, 2, 8, 4, true};
    for (bool causal : {true, false}) {
        Problem p = pb;
        p.causal = causal;
        const auto qkv = random_qkv(p, 91);
        Rng rng(92);
        const auto W = randn(p.rows() * p.d(), rng);
        std::vector<float> qkv_f(qkv.begin(), qkv.end()), W_f(W.begin(), W.end()), o_f, saved_f;
        CombinerSaved<float> sv;
        run_forward(o_f, saved_f, sv, qkv_f, p);
        const auto o = forward(qkv, p).o;
        const auto dq = backward(qkv, W, p);
        const auto dq_f = backward(qkv_f, W_f, p);
        double err_o = 0, err_d = 0;
        for (size_t i = 0; i < o.size(); i++) err_o = std::max(err_o, std::fabs(o[i] - o_f[i]));
        for (size_t i = 0; i < dq.size(); i++) err_d = std::max(err_d, std::fabs(dq[i] - dq_f[i]));
        MESSAGE(std::string(causal ? "causal" : "non-causal") << ": float vs double, output " << err_o / max_abs(o)
                << ", gradient " << err_d / max_abs(dq) << " (relative to the largest entry)");
        CHECK(err_o / max_abs(o) < 1e-5);
        CHECK(err_d / max_abs(dq) < 1e-5);
    }
}

TEST_CASE("a step with 1 and 2 threads gives the same bits") {
    const Problem pb{2, 16, 2, 4, 4, true};  // 4 (sequence, head) pairs: OpenMP over them, BLAS at one thread
    const auto qkv = random_qkv(pb, 101);
    Rng rng(102);
    const auto W = randn(pb.rows() * pb.d(), rng);
    omp_set_num_threads(2);
    const auto o2 = forward(qkv, pb).o;
    const auto d2 = backward(qkv, W, pb);
    omp_set_num_threads(1);
    const auto o1 = forward(qkv, pb).o;
    const auto d1 = backward(qkv, W, pb);
    CHECK(o1 == o2);
    CHECK(d1 == d2);
}

TEST_CASE("sizes: a T that is not a multiple of block is a clear error") {
    std::string msg;
    try {
        combiner_saved_count(1, 10, 2, 4, 4);
    } catch (const flash_error& e) {
        msg = e.what();
    }
    CHECK(msg.find("T=10 is not a multiple of the span length block=4") != std::string::npos);
    CHECK(msg.find("hint:") != std::string::npos);
    CHECK_THROWS_AS(combiner_check_sizes(1, 8, 0, 4, 4), flash_error);
    // the saved buffer: B·H·(T·(c+n) + n·(3h + c))
    CHECK(combiner_saved_count(2, 12, 3, 4, 4) == (size_t)2 * 3 * (12 * 7 + 3 * (12 + 4)));
}

TEST_CASE("attention FLOPs per token: 4·d·(c + n + 1)") {
    CHECK(combiner_attention_flops_per_token(256, 4096, 128) == 4.0 * 256 * (128 + 32 + 1));
    CHECK(combiner_attention_flops_per_token(64, 256, 16) == 4.0 * 64 * 33);
}

TEST_CASE("cached decoding, token by token, equals the full causal forward") {
    for (int c : {1, 3, 4}) {
        const Problem pb{1, 24, 2, 4, c, true};
        const auto qkv = random_qkv(pb, 111 + c);
        const auto full = forward(qkv, pb).o;
        const int d = pb.d(), steps = 23;  // stops inside a span when c > 1
        CombinerCache<double> cache(pb.H, pb.h, c);
        std::vector<double> o(d);
        double err = 0;
        for (int t = 0; t < steps; t++) {
            const double* row = qkv.data() + (size_t)t * pb.ld();
            cache.step(o.data(), row, row + d, row + 2 * d);
            err = std::max(err, max_abs_diff(o.data(), full.data() + (size_t)t * d, d));
        }
        MESSAGE("block " << c << ": max |cached − full| over " << steps << " tokens = " << err);
        CHECK(err < 1e-12);
        // it keeps the summaries of the finished spans only, and c rows
        CHECK(cache.finished_spans() == steps / c);
        CHECK(cache.k_hat.size() == (size_t)(steps / c) * d);
        CHECK(cache.q.size() == (size_t)pb.H * c * pb.h);
    }
}

}  // namespace
