// combiner.cpp: Combiner-Fixed attention (BASELINES.md §3), CPU reference. Read next to combiner.h.
//
// Per sequence and head everything is a product per span through BLAS: the span summaries (c logits K_s q̂ and
// ρᵀ V_s), the c×c direct block Q_s K_sᵀ, the c×n summary block Q_s K̂ᵀ, and their backward products. The only
// scalar loops are per row (max pooling, one softmax per row): O(T·(c+n)) per head, never O(T²).
// Parallelism: OpenMP over (sequence, head) only. Each (sequence, head) owns its columns of o, dq, dk and dv, and
// every sum over spans (dK̂, dV̂) runs in span order inside it, so results do not depend on the thread count.
#include "combiner.h"

#include "ops.h"  // gemm, for_each_chunk

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>

// ====================================================================================================
// Sizes and layout

void combiner_check_sizes(int B, int T, int H, int h, int c) {
    FLASH_CHECK(B > 0 && T > 0 && H > 0 && h > 0, "Combiner attention: sizes must be positive, got B=" << B << " T=" << T
                                                   << " H=" << H << " h=" << h, "check the batch and the model config");
    FLASH_CHECK(c > 0 && T % c == 0, "Combiner attention: the sequence length T=" << T
                                         << " is not a multiple of the span length block=" << c,
                "use a seq_len that block divides (or a block that divides seq_len)");
}

size_t combiner_saved_count(int B, int T, int H, int h, int c) {
    combiner_check_sizes(B, T, H, h, c);
    const size_t n = T / c, pairs = (size_t)B * H;
    return pairs * ((size_t)T * (c + n) + n * (3 * (size_t)h + c));
}

template <typename Real>
CombinerSaved<Real> view_combiner_saved(Real* base, int B, int T, int H, int h, int c) {
    combiner_check_sizes(B, T, H, h, c);
    const size_t n = T / c, pairs = (size_t)B * H;
    CombinerSaved<Real> sv;
    sv.p = base;
    sv.q_hat = sv.p + pairs * T * (c + n);
    sv.k_hat = sv.q_hat + pairs * n * h;
    sv.rho = sv.k_hat + pairs * n * h;
    sv.v_hat = sv.rho + pairs * n * c;
    return sv;
}

double combiner_attention_flops_per_token(int d, int T, int c) {
    return 4.0 * d * (c + T / c + 1);
}

// ====================================================================================================
// The pieces shared by the full forward and the cache: a span's summaries, and the attention of some rows of one
// span. Rows are h wide with row stride ld.

// The row of span rows x[0..c) holding the max of column m; ties go to the first such row (BASELINES.md §3). The
// forward takes its value as the pooled max, the backward sends the pooled gradient to it: one rule for both.
template <typename Real>
static int span_argmax(const Real* x, int ld, int c, int m) {
    int best = 0;
    for (int j = 1; j < c; j++)
        if (x[(size_t)j * ld + m] > x[(size_t)best * ld + m]) best = j;
    return best;
}

// In place: row[j] = exp(row[j] − max) / Σ exp over the n entries (all unmasked).
template <typename Real>
static void softmax_inplace(Real* row, int n) {
    Real mx = row[0];
    for (int j = 1; j < n; j++) mx = std::max(mx, row[j]);
    double sum = 0;
    for (int j = 0; j < n; j++) sum += (row[j] = std::exp(row[j] - mx));
    const Real inv = Real(1.0 / sum);
    for (int j = 0; j < n; j++) row[j] *= inv;
}

// The summaries of one span of c rows (no mask):
//   q̂ = max_j Q[j];  k̂ = max_j K[j];  ρ = softmax_j(K q̂ / √h);  v̂ = ρᵀ V
// q_hat, k_hat, v_hat (h); rho (c); Q, K, V (c, h) with row stride ld
template <typename Real>
static void span_summary(Real* q_hat, Real* k_hat, Real* rho, Real* v_hat, const Real* Q, const Real* K, const Real* V,
                         int ld, int c, int h) {
    for (int m = 0; m < h; m++) {
        q_hat[m] = Q[(size_t)span_argmax(Q, ld, c, m) * ld + m];
        k_hat[m] = K[(size_t)span_argmax(K, ld, c, m) * ld + m];
    }
    gemm(false, true, 1, c, h, Real(1 / std::sqrt((double)h)), q_hat, h, K, ld, Real(0), rho, c);
    softmax_inplace(rho, c);
    gemm(false, false, 1, h, c, Real(1), rho, c, V, ld, Real(0), v_hat, h);
}

// r query rows of one span, at in-span rows a0 .. a0+r−1, against the span's first n_direct keys and m summary keys:
//   S = Q Kᵀ/√h (r × n_direct);  G = Q K̂ᵀ/√h (r × m);  P = softmax over each row of [S | G], masked:
//   causal: key j visible to in-span row a iff j ≤ a;  the summary column `skip` (−1: none) is left out
//   O = P_S V + P_G V̂
// O (r, h) with row stride ldo; P (r, ldp ≥ n_direct + m), 0 where masked and in the columns past n_direct + m;
// Q, K, V with row stride ld; K̂, V̂ (m, h) with row stride ldhat.
template <typename Real>
static void span_attention_forward(Real* O, int ldo, Real* P, int ldp, const Real* Q, const Real* K, const Real* V,
                                   int ld, const Real* k_hat, const Real* v_hat, int ldhat, int r, int a0, int n_direct,
                                   int m, int skip, bool causal, int h) {
    const Real scale = Real(1 / std::sqrt((double)h));
    gemm(false, true, r, n_direct, h, scale, Q, ld, K, ld, Real(0), P, ldp);
    if (m > 0) gemm(false, true, r, m, h, scale, Q, ld, k_hat, ldhat, Real(0), P + n_direct, ldp);
    for (int a = 0; a < r; a++) {
        Real* row = P + (size_t)a * ldp;
        const int last_direct = causal ? std::min(a0 + a, n_direct - 1) : n_direct - 1;  // visible: 0 .. last_direct
        auto visible = [&](int col) { return col < n_direct ? col <= last_direct : col - n_direct != skip; };
        Real mx = row[0];  // key 0 is visible to every row
        for (int col = 1; col < n_direct + m; col++)
            if (visible(col)) mx = std::max(mx, row[col]);
        double sum = 0;
        for (int col = 0; col < n_direct + m; col++) sum += (row[col] = visible(col) ? std::exp(row[col] - mx) : Real(0));
        const Real inv = Real(1.0 / sum);
        for (int col = 0; col < n_direct + m; col++) row[col] *= inv;
        for (int col = n_direct + m; col < ldp; col++) row[col] = 0;
    }
    gemm(false, false, r, h, n_direct, Real(1), P, ldp, V, ld, Real(0), O, ldo);
    if (m > 0) gemm(false, false, r, h, m, Real(1), P + n_direct, ldp, v_hat, ldhat, Real(1), O, ldo);
}

// ====================================================================================================
// The ops

// Per sequence b and head: first every span's summaries, then every span's rows:
//   span s, causal:     direct keys j ≤ i of span s, summary keys of spans 0 .. s−1
//   span s, non-causal: every key of span s, summary keys of every span but s (its own is left out, §3)
template <typename Real>
void combiner_attention_forward(Real* o, const CombinerSaved<Real>& saved, const Real* q, const Real* k, const Real* v,
                                int ld, int B, int T, int H, int h, int c, bool causal) {
    combiner_check_sizes(B, T, H, h, c);
    const int n = T / c, d = H * h;
    for_each_chunk(B * H, [&](int bh) {
        const size_t in0 = (size_t)(bh / H) * T * ld + (size_t)(bh % H) * h;  // row 0 of this head in q, k, v
        const size_t out0 = (size_t)(bh / H) * T * d + (size_t)(bh % H) * h;  // ... in o
        Real* q_hat = saved.q_hat + (size_t)bh * n * h;
        Real* k_hat = saved.k_hat + (size_t)bh * n * h;
        Real* rho = saved.rho + (size_t)bh * n * c;
        Real* v_hat = saved.v_hat + (size_t)bh * n * h;
        for (int s = 0; s < n; s++) {
            const size_t span = in0 + (size_t)s * c * ld;
            span_summary(q_hat + (size_t)s * h, k_hat + (size_t)s * h, rho + (size_t)s * c, v_hat + (size_t)s * h,
                         q + span, k + span, v + span, ld, c, h);
        }
        for (int s = 0; s < n; s++) {
            const size_t span = in0 + (size_t)s * c * ld;
            Real* P = saved.p + ((size_t)bh * T + (size_t)s * c) * (c + n);
            span_attention_forward(o + out0 + (size_t)s * c * d, d, P, c + n, q + span, k + span, v + span, ld, k_hat,
                                   v_hat, h, c, 0, c, causal ? s : n, causal ? -1 : s, causal, h);
        }
    });
}

// Backward of: P = softmax of each row of [S | G];  O_s = P_S V_s + P_G V̂;  S = Q_s K_sᵀ/√h;  G = Q_s K̂ᵀ/√h;
//              v̂[s] = Σ_j ρ[s,j] v[j];  ρ[s] = softmax_j(q̂[s]·k[j]/√h);  q̂[s] = max_j q[j];  k̂[s] = max_j k[j]
// Per sequence and head (BASELINES.md §3), with D[i] = Σ over row i of P ⊙ dP (= do[i]·o[i], as a row of P sums to
// 1; computed from dP, which the step needs anyway, so the backward does not take o):
//   joint, every span:  dS = P_S ⊙ (do V_sᵀ − D);  dG = P_G ⊙ (do V̂ᵀ − D)
//                       dV_s += P_Sᵀ do;  dV̂ += P_Gᵀ do;  dQ_s += (dS K_s + dG K̂)/√h;  dK_s += dSᵀ Q_s/√h;
//                       dK̂ += dGᵀ Q_s/√h          (dV̂, dK̂: n×h, summed over the query spans in order)
//   summary, span s:    e[j] = ρ[s,j]·(dv̂[s]·v[j] − dv̂[s]·v̂[s]);  dv[j] += ρ[s,j] dv̂[s]
//                       dq̂[s] = Σ_j e[j] k[j]/√h;  dk[j] += e[j] q̂[s]/√h
//   max:                dq[j*,m] += dq̂[s,m], j* = span_argmax (the first row holding the max); dk from dk̂ alike
// Causal: a row's P_G is nonzero in its first s columns only, so the summary products take m = s columns.
template <typename Real>
void combiner_attention_backward(Real* dq, Real* dk, Real* dv, int ldd, const Real* d_o, const CombinerSaved<Real>& saved,
                                 const Real* q, const Real* k, const Real* v, int ld, int B, int T, int H, int h, int c,
                                 bool causal) {
    combiner_check_sizes(B, T, H, h, c);
    const int n = T / c, d = H * h, ldp = c + n;
    const Real scale = Real(1 / std::sqrt((double)h));
    struct Scratch {  // one thread's buffers, reused chunk after chunk
        std::vector<Real> dP, dk_hat, dv_hat, e, dq_hat;
    };
    auto scratch = [&] {
        using V = std::vector<Real>;
        return Scratch{V((size_t)c * ldp), V((size_t)n * h), V((size_t)n * h), V(c), V(h)};
    };
    for_each_chunk(B * H, scratch, [&](int bh, Scratch& sc) {
        auto& [dP, dk_hat, dv_hat, e, dq_hat] = sc;
        const size_t in0 = (size_t)(bh / H) * T * ld + (size_t)(bh % H) * h;
        const size_t din0 = (size_t)(bh / H) * T * ldd + (size_t)(bh % H) * h;
        const size_t out0 = (size_t)(bh / H) * T * d + (size_t)(bh % H) * h;
        const Real* q_hat = saved.q_hat + (size_t)bh * n * h;
        const Real* k_hat = saved.k_hat + (size_t)bh * n * h;
        const Real* rho = saved.rho + (size_t)bh * n * c;
        const Real* v_hat = saved.v_hat + (size_t)bh * n * h;
        std::fill(dk_hat.begin(), dk_hat.end(), Real(0));
        std::fill(dv_hat.begin(), dv_hat.end(), Real(0));
        // 1. The joint softmax step, span by span.
        for (int s = 0; s < n; s++) {
            const int m = causal ? s : n;
            const size_t span = in0 + (size_t)s * c * ld, dspan = din0 + (size_t)s * c * ldd;
            const Real* P = saved.p + ((size_t)bh * T + (size_t)s * c) * ldp;
            const Real* dO = d_o + out0 + (size_t)s * c * d;
            // dP = [do V_sᵀ | do V̂ᵀ], then dS, dG in place
            gemm(false, true, c, c, h, Real(1), dO, d, v + span, ld, Real(0), dP.data(), ldp);
            if (m > 0) gemm(false, true, c, m, h, Real(1), dO, d, v_hat, h, Real(0), dP.data() + c, ldp);
            for (int i = 0; i < c; i++) {
                const Real* p_row = P + (size_t)i * ldp;
                Real* dp_row = dP.data() + (size_t)i * ldp;
                double D = 0;
                for (int col = 0; col < c + m; col++) D += (double)p_row[col] * dp_row[col];
                for (int col = 0; col < c + m; col++) dp_row[col] = p_row[col] * (dp_row[col] - Real(D));
            }
            const Real* dS = dP.data();
            const Real* dG = dP.data() + c;
            gemm(true, false, c, h, c, Real(1), P, ldp, dO, d, Real(1), dv + dspan, ldd);
            gemm(false, false, c, h, c, scale, dS, ldp, k + span, ld, Real(1), dq + dspan, ldd);
            gemm(true, false, c, h, c, scale, dS, ldp, q + span, ld, Real(1), dk + dspan, ldd);
            if (m > 0) {
                gemm(true, false, m, h, c, Real(1), P + c, ldp, dO, d, Real(1), dv_hat.data(), h);
                gemm(false, false, c, h, m, scale, dG, ldp, k_hat, h, Real(1), dq + dspan, ldd);
                gemm(true, false, m, h, c, scale, dG, ldp, q + span, ld, Real(1), dk_hat.data(), h);
            }
        }
        // 2. Each span's summaries, then its max pooling.
        for (int s = 0; s < n; s++) {
            const size_t span = in0 + (size_t)s * c * ld, dspan = din0 + (size_t)s * c * ldd;
            const Real* rho_s = rho + (size_t)s * c;
            const Real* dvh = dv_hat.data() + (size_t)s * h;
            const Real* vh = v_hat + (size_t)s * h;
            gemm(false, true, 1, c, h, Real(1), dvh, h, v + span, ld, Real(0), e.data(), c);  // e = V_s dv̂
            double dvh_vh = 0;
            for (int m = 0; m < h; m++) dvh_vh += (double)dvh[m] * vh[m];
            for (int j = 0; j < c; j++) e[j] = rho_s[j] * (e[j] - Real(dvh_vh));
            gemm(true, false, c, h, 1, Real(1), rho_s, c, dvh, h, Real(1), dv + dspan, ldd);  // ρ ⊗ dv̂
            gemm(false, false, 1, h, c, scale, e.data(), c, k + span, ld, Real(0), dq_hat.data(), h);
            gemm(true, false, c, h, 1, scale, e.data(), c, q_hat + (size_t)s * h, h, Real(1), dk + dspan, ldd);
            for (int m = 0; m < h; m++) {
                dq[dspan + (size_t)span_argmax(q + span, ld, c, m) * ldd + m] += dq_hat[m];
                dk[dspan + (size_t)span_argmax(k + span, ld, c, m) * ldd + m] += dk_hat[(size_t)s * h + m];
            }
        }
    });
}

// ====================================================================================================
// Cached decoding

template <typename Real>
CombinerCache<Real>::CombinerCache(int H_, int h_, int c_) : H(H_), h(h_), c(c_) {
    combiner_check_sizes(1, c, H, h, c);
    q.assign((size_t)H * c * h, Real(0));
    k.assign(q.size(), Real(0));
    v.assign(q.size(), Real(0));
    q_hat.resize(h);
    rho.resize(c);
}

// The row at in-span index a attends to the cached rows 0..a of its span and to the summaries of every finished
// span: span_attention_forward with one row, as the full forward runs it for c rows. After the span's last row its
// summaries are appended (span_summary, as in the forward) and its rows are forgotten (overwritten from row 0).
template <typename Real>
void CombinerCache<Real>::step(Real* o, const Real* q_row, const Real* k_row, const Real* v_row) {
    const int a = (int)(pos % c), d = H * h;
    const int done = (int)(pos / c);  // finished spans
    const bool span_ends = a == c - 1;
    if (span_ends) {
        k_hat.resize((size_t)(done + 1) * d);
        v_hat.resize((size_t)(done + 1) * d);
    }
    p.resize((size_t)a + 1 + done);
    for (int head = 0; head < H; head++) {
        Real* qs = q.data() + (size_t)head * c * h;
        Real* ks = k.data() + (size_t)head * c * h;
        Real* vs = v.data() + (size_t)head * c * h;
        std::copy(q_row + head * h, q_row + (head + 1) * h, qs + (size_t)a * h);
        std::copy(k_row + head * h, k_row + (head + 1) * h, ks + (size_t)a * h);
        std::copy(v_row + head * h, v_row + (head + 1) * h, vs + (size_t)a * h);
        const Real* kh = done > 0 ? k_hat.data() + head * h : nullptr;  // read only when done > 0
        const Real* vh = done > 0 ? v_hat.data() + head * h : nullptr;
        span_attention_forward(o + head * h, d, p.data(), a + 1 + done, qs + (size_t)a * h, ks, vs, h, kh, vh, d, 1, a,
                               a + 1, done, -1, true, h);
        if (span_ends)
            span_summary(q_hat.data(), k_hat.data() + (size_t)done * d + head * h, rho.data(),
                         v_hat.data() + (size_t)done * d + head * h, qs, ks, vs, h, c, h);
    }
    pos++;
}

// ====================================================================================================
// Explicit instantiations: float trains, double checks gradients.

#define COMBINER_INSTANTIATE(Real)                                                                                     \
    template CombinerSaved<Real> view_combiner_saved(Real*, int, int, int, int, int);                                 \
    template void combiner_attention_forward(Real*, const CombinerSaved<Real>&, const Real*, const Real*, const Real*, \
                                             int, int, int, int, int, int, bool);                                      \
    template void combiner_attention_backward(Real*, Real*, Real*, int, const Real*, const CombinerSaved<Real>&,       \
                                              const Real*, const Real*, const Real*, int, int, int, int, int, int,     \
                                              bool);                                                                   \
    template struct CombinerCache<Real>;

COMBINER_INSTANTIATE(float)
COMBINER_INSTANTIATE(double)
