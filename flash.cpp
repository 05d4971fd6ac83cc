// flash.cpp: the CPU reference of FLASH. Plain loops and BLAS calls, meant to be read top to bottom; the ops it
// shares with other architectures (norms, products, RoPE, cross-entropy, AdamW, ...) are in ops.cpp.
//
// Layout of a token row: the fused projection h (and act = silu(h)) is [u (e) | v (e) | z (s)], so u, v and
// z are strided views into one buffer (leading dimension 2e+s); BLAS takes the stride directly.
// N = B*T rows; chunk bg of the batch is rows chunk_first_row(bg, C) .. + C-1; G = T/C.
// Parallelism: OpenMP on outer loops only (rows, columns, chunks). Every reduction is ordered: a thread
// owns whole output elements, or writes a partial per chunk that is then summed serially. Results are
// therefore the same from run to run.
#include "flash.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "formats/config.h"
#include "resource_check.h"

// ====================================================================================================
// Configuration (§5) and cost (§4)

FlashConfig config_preset(const std::string& name) {
    FlashConfig c;  // defaults are the small config
    if (name == "tiny") {
        c.vocab_size = 64; c.d = 16; c.e = 32; c.s = 8; c.n_layers = 2; c.chunk = 4; c.seq_len = 16;
    } else if (name == "small") {
        // the defaults
    } else if (name == "base") {
        c.vocab_size = 32768; c.d = 768; c.e = 1536; c.s = 128; c.n_layers = 24; c.chunk = 256; c.seq_len = 1024;
    } else {
        FLASH_FAIL("unknown config preset '" << name << "'", "use tiny, small, base, or a JSON file");
    }
    return c;
}

void config_validate(const FlashConfig& c) {
    auto positive = [](const char* field, long long v, long long max) {
        FLASH_CHECK(v > 0 && v <= max, "config field '" << field << "' is " << v << ", must be in 1.." << max,
                    "fix '" << field << "' in the config");
    };
    positive("vocab_size", c.vocab_size, 1 << 30);
    positive("d", c.d, 1 << 16);
    positive("e", c.e, 1 << 16);
    positive("s", c.s, 1 << 16);
    positive("n_layers", c.n_layers, 1024);
    positive("chunk", c.chunk, 1 << 16);
    positive("seq_len", c.seq_len, 1 << 24);
    FLASH_CHECK(c.s % 2 == 0, "config field 's' is " << c.s << ", must be even", "RoPE rotates pairs of dims");
    FLASH_CHECK(c.seq_len % c.chunk == 0,
                "config field 'seq_len' (" << c.seq_len << ") is not a multiple of 'chunk' (" << c.chunk << ")",
                "choose seq_len = G * chunk for a whole number of chunks G");
    FLASH_CHECK(std::isfinite(c.eps) && c.eps > 0, "config field 'eps' is " << c.eps << ", must be > 0",
                "use 1e-6");
    FLASH_CHECK(std::isfinite(c.rope_base) && c.rope_base > 1,
                "config field 'rope_base' is " << c.rope_base << ", must be > 1", "use 10000");
}

double forward_flops_per_token(const FlashConfig& c) {
    const double d = c.d, e = c.e, s = c.s, L = c.n_layers, C = c.chunk, V = c.vocab_size;
    return 2 * (d * (2 * e + s) + e * d) * L + 2 * C * (s + e) * L + 4 * s * e * L + 2 * d * V;
}

// ====================================================================================================
// Parameter layout (§7): one walk over the tensors makes both the specs and the named views.

// Lists the tensors in checkpoint order; when view is given, points its fields at base + offset (base may be null:
// then only the specs are wanted). Every tensor starts on a multiple of kParamAlign elements (the gaps hold zeros and
// are never read): cuBLAS picks its kernels by the operands' alignment, and on the H200 the layers' weights, at odd
// offsets (w_in right after the one-element norm gain), ran in alignment-1 kernels (README, GPU performance).
constexpr size_t kParamAlign = 16;  // 64 bytes in float: a cache line, and more than the 16 bytes cuBLAS needs
template <typename Real>
static std::vector<TensorSpec> walk_params(const FlashConfig& c, ParamView<Real>* view, Real* base) {
    std::vector<TensorSpec> specs;
    size_t offset = 0;
    auto add = [&](std::string name, std::vector<int64_t> shape, bool decay, Real** field) {
        TensorSpec t;
        t.name = std::move(name);
        t.shape = std::move(shape);
        t.count = 1;
        for (int64_t n : t.shape) t.count *= (size_t)n;
        offset = (offset + kParamAlign - 1) / kParamAlign * kParamAlign;
        t.offset = offset;
        t.decay = decay;
        offset += t.count;
        if (view) *field = base + t.offset;
        specs.push_back(std::move(t));
    };
    ParamView<Real> unused;
    ParamView<Real>& v = view ? *view : unused;
    v.layers.resize(c.n_layers);
    const int64_t V = c.vocab_size, d = c.d, e = c.e, s = c.s, I = c.inner();
    add("wte", {V, d}, true, &v.wte);
    for (int l = 0; l < c.n_layers; l++) {
        const std::string p = "layers." + std::to_string(l) + ".";
        LayerParams<Real>& lp = v.layers[l];
        add(p + "norm.g", {1}, false, &lp.norm_g);
        add(p + "w_in", {d, I}, true, &lp.w_in);
        add(p + "b_in", {I}, false, &lp.b_in);
        add(p + "gamma", {4, s}, false, &lp.gamma);
        add(p + "beta", {4, s}, false, &lp.beta);
        add(p + "rel_bias", {c.n_rel_bias()}, false, &lp.rel_bias);
        add(p + "w_out", {e, d}, true, &lp.w_out);
        add(p + "b_out", {d}, false, &lp.b_out);
    }
    add("norm_f.g", {1}, false, &v.norm_f_g);
    return specs;
}

std::vector<TensorSpec> param_specs(const FlashConfig& c) { return walk_params<float>(c, nullptr, nullptr); }

size_t param_count(const FlashConfig& c) {
    auto specs = param_specs(c);
    return specs.back().offset + specs.back().count;
}

template <typename Real>
ParamView<Real> view_params(Real* base, const FlashConfig& c) {
    ParamView<Real> v;
    walk_params(c, &v, base);
    return v;
}

// ====================================================================================================
// Activation layout: one list of the tensors, in memory order, gives both the sizes and the views.

template <typename Real>
struct ActivationSlots {
    std::vector<std::pair<Real**, size_t>> act, grad;  // (field to point, elements), in buffer order
};

template <typename Real>
static ActivationSlots<Real> activation_slots(Acts<Real>& acts, GradActs<Real>& g, const FlashConfig& c, int B,
                                              int T) {
    const size_t N = (size_t)B * T, d = c.d, e = c.e, s = c.s, I = c.inner(), V = c.vocab_size;
    const size_t G = T / c.chunk, C = c.chunk;
    ActivationSlots<Real> slots;
    acts.layers.resize(c.n_layers);
    slots.act.push_back({&acts.act, N * I});  // one layer's silu(h), shared by all (Acts::act)
    for (LayerActs<Real>& la : acts.layers) {
        // qq, kq, ql, kl are adjacent (the GPU rotates all four in one launch)
        slots.act.insert(slots.act.end(), {{&la.x, N * d}, {&la.rstd, N}, {&la.xn, N * d}, {&la.h, N * I},
                                           {&la.qq, N * s}, {&la.kq, N * s}, {&la.ql, N * s}, {&la.kl, N * s},
                                           {&la.relu_s, B * G * C * C}, {&la.m, B * G * s * e}, {&la.o, N * e},
                                           {&la.gated, N * e}});
    }
    slots.act.insert(slots.act.end(), {{&acts.x_final, N * d}, {&acts.rstd_f, N}, {&acts.xn_f, N * d},
                                       {&acts.logits, N * V}, {&acts.probs, N * V}, {&acts.losses, N}});
    // dxn .. dgated are contiguous: backward zeroes them in one fill per layer
    slots.grad = {{&g.dres, N * d}, {&g.dxn, N * d},  {&g.dh, N * I},   {&g.dact, N * I},
                  {&g.dqq, N * s},  {&g.dkq, N * s},  {&g.dql, N * s},  {&g.dkl, N * s},
                  {&g.d_o, N * e},  {&g.dgated, N * e}, {&g.dlogits, N * V}};
    return slots;
}

void activation_counts(const FlashConfig& c, int B, int T, size_t* n_act, size_t* n_grad) {
    Acts<float> acts;
    GradActs<float> g;
    const ActivationSlots<float> slots = activation_slots(acts, g, c, B, T);
    *n_act = *n_grad = 0;
    for (const auto& slot : slots.act) *n_act += slot.second;
    for (const auto& slot : slots.grad) *n_grad += slot.second;
}

template <typename Real>
void view_activations(Acts<Real>& acts, GradActs<Real>& g, Real* act_base, Real* grad_base, const FlashConfig& c,
                      int B, int T) {
    const ActivationSlots<Real> slots = activation_slots(acts, g, c, B, T);
    for (const auto& slot : slots.act) {
        *slot.first = act_base;
        act_base += slot.second;
    }
    for (const auto& slot : slots.grad) {
        *slot.first = grad_base;
        grad_base += slot.second;
    }
}

// ====================================================================================================
// FLASH's ops. Shapes use N = B*T rows.

// head_i = z ⊙ γ[i] + β[i] for the four heads i = qq, kq, ql, kl ("offset-scale")
// qq, kq, ql, kl (N,s); z (N,s) with row stride ldz; gamma, beta (4,s)
template <typename Real>
void offset_scale_forward(Real* qq, Real* kq, Real* ql, Real* kl, const Real* z, int ldz, const Real* gamma,
                          const Real* beta, int N, int s) {
    Real* heads[4] = {qq, kq, ql, kl};
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < s; j++)
                heads[i][(size_t)n * s + j] = z[(size_t)n * ldz + j] * gamma[i * s + j] + beta[i * s + j];
}
// Backward of: head_i = z ⊙ γ[i] + β[i]   =>   dγ[i] += Σ_rows dhead_i ⊙ z;  dβ[i] += Σ_rows dhead_i;
//                                          dz += Σ_i dhead_i ⊙ γ[i]
// Threads split the columns j (whole blocks), so the sums over rows are ordered.
template <typename Real>
void offset_scale_backward(Real* dz, int lddz, Real* dgamma, Real* dbeta, const Real* dqq, const Real* dkq,
                           const Real* dql, const Real* dkl, const Real* z, int ldz, const Real* gamma, int N, int s) {
    const Real* dheads[4] = {dqq, dkq, dql, dkl};
#pragma omp parallel for
    for (int j0 = 0; j0 < s; j0 += kColBlock) {
        const int j1 = std::min(s, j0 + kColBlock);
        Real dg[4][kColBlock] = {}, db[4][kColBlock] = {};
        for (int n = 0; n < N; n++)
            for (int j = j0; j < j1; j++) {
                const Real zv = z[(size_t)n * ldz + j];
                Real acc = 0;
                for (int i = 0; i < 4; i++) {
                    const Real dhv = dheads[i][(size_t)n * s + j];
                    dg[i][j - j0] += dhv * zv;
                    db[i][j - j0] += dhv;
                    acc += dhv * gamma[i * s + j];
                }
                dz[(size_t)n * lddz + j] += acc;
            }
        for (int i = 0; i < 4; i++)
            for (int j = j0; j < j1; j++) {
                dgamma[i * s + j] += dg[i][j - j0];
                dbeta[i * s + j] += db[i][j - j0];
            }
    }
}

// Rows per block of gau_rows_backward: the sums over rows of dγ, dβ are taken per block, then over the blocks in
// order, so they do not depend on the number of threads.
constexpr int kRowBlock = 64;
// The heads pass of gau_rows_backward reads z and adds to dz, the last s values of each row [v | z]: runs too short
// for the hardware prefetchers to pick up in time, so the pass asks for those of a row a few rows ahead. Small
// config, 2 threads, timed inside the step: 13.6-14.0 → 12.2 ms a step (when rows were [u | v | z]: 17-20 →
// 15.4-15.8; timed alone then, 1.1 → 0.87 ms a layer, 1 to 8 rows ahead alike).
constexpr int kPrefetchRowsAhead = 2;

// Over the [v | z] plane (vz_plane): act = silu(h);  head_i = rope(z ⊙ γ[i] + β[i]), z = act[:, e:], row by row
// (the three ops of §1 in one pass)
// act, h (N, e+s), rows [v | z]; qq, kq, ql, kl (N,s); gamma, beta (4,s); cos_t, sin_t (T, s/2), row n at position
// n mod T
template <typename Real>
void gau_rows_forward(Real* act, Real* qq, Real* kq, Real* ql, Real* kl, const Real* h, const Real* gamma,
                      const Real* beta, const double* cos_t, const double* sin_t, int N, int T, int e, int s) {
    const int width = e + s, half = s / 2;
    Real* heads[4] = {qq, kq, ql, kl};
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const Real* hr = h + (size_t)n * width;
        Real* ar = act + (size_t)n * width;
#pragma omp simd
        for (int j = 0; j < width; j++) ar[j] = hr[j] * (Real(1) / (Real(1) + exp_tuned(-hr[j])));  // silu = h · σ(h)
        const Real* z = ar + e;
        for (int i = 0; i < 4; i++) {
            Real* hd = heads[i] + (size_t)n * s;
            const Real *gi = gamma + i * s, *bi = beta + i * s;
#pragma omp simd
            for (int j = 0; j < s; j++) hd[j] = z[j] * gi[j] + bi[j];
            rope_rotate_row(hd, cos_t + (size_t)(n % T) * half, sin_t + (size_t)(n % T) * half, half, 1.0);
        }
    }
}
// Backward of the three, in reverse order, in two passes: the heads of every row, then SiLU over the whole buffer.
//   dhead_i = rope⁻¹(dhead_i);   dz = dact_z + Σ_i dhead_i ⊙ γ[i];   dγ[i] += Σ_rows dhead_i ⊙ z;   dβ[i] += Σ_rows dhead_i;
//   dh += dact ⊙ σ(h) · (1 + h · (1 − σ(h)))
// dh, dact, h, act (N, e+s), rows [v | z]: dact's z part receives dz (as offset_scale_backward leaves it), its v part
// holds dv on entry; the head gradients are rotated back in place. Unlike the forward, one pass per row was slower
// here: interleaving the four head rows (read and written) with the SiLU of the row took 2.5-2.9 ms a layer against
// 1.9-2.1 for the two passes (small config, 2 threads, bench_cpu, when the rows were [u | v | z]).
template <typename Real>
void gau_rows_backward(Real* dh, Real* dgamma, Real* dbeta, Real* dact, Real* dqq, Real* dkq, Real* dql, Real* dkl,
                       const Real* h, const Real* act, const Real* gamma, const double* cos_t, const double* sin_t,
                       int N, int T, int e, int s) {
    const int width = e + s, half = s / 2;
    Real* dheads[4] = {dqq, dkq, dql, dkl};
    const int n_blocks = (N + kRowBlock - 1) / kRowBlock;
    std::vector<Real> part((size_t)n_blocks * 8 * s, Real(0));  // per block: dγ (4,s), then dβ (4,s)
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < n_blocks; blk++) {
        Real* pg = part.data() + (size_t)blk * 8 * s;
        Real* pb = pg + 4 * s;
        for (int n = blk * kRowBlock; n < std::min(N, (blk + 1) * kRowBlock); n++) {
            const Real* z = act + (size_t)n * width + e;
            Real* dz = dact + (size_t)n * width + e;
            if (n + kPrefetchRowsAhead < N)
                for (int j = 0; j < s; j += 64 / (int)sizeof(Real)) {  // one request per 64-byte cache line
                    __builtin_prefetch(z + (size_t)kPrefetchRowsAhead * width + j);
                    __builtin_prefetch(dz + (size_t)kPrefetchRowsAhead * width + j, 1);
                }
            for (int i = 0; i < 4; i++) {
                Real* dhd = dheads[i] + (size_t)n * s;
                rope_rotate_row(dhd, cos_t + (size_t)(n % T) * half, sin_t + (size_t)(n % T) * half, half, -1.0);
                const Real* gi = gamma + i * s;
                Real *pgi = pg + i * s, *pbi = pb + i * s;
#pragma omp simd
                for (int j = 0; j < s; j++) {
                    pgi[j] += dhd[j] * z[j];
                    pbi[j] += dhd[j];
                    dz[j] += dhd[j] * gi[j];
                }
            }
        }
    }
    for (int blk = 0; blk < n_blocks; blk++)
        for (int k = 0; k < 4 * s; k++) {
            dgamma[k] += part[(size_t)blk * 8 * s + k];
            dbeta[k] += part[(size_t)blk * 8 * s + 4 * s + k];
        }
    silu_backward(dh, dact, h, (size_t)N * width);
}

// The gate with u's SiLU (§1: gated = u ⊙ o, u = silu(h_u)) in one pass: u is never stored, nor recomputed for the
// backward, which reads h_u where it would have read u.
// gated, o, h_u (N,e): h_u is the u plane of h (vz_plane)
template <typename Real>
void silu_gate_forward(Real* gated, const Real* h_u, const Real* o, int N, int e) {
    const size_t n = (size_t)N * e;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) gated[i] = h_u[i] * (Real(1) / (Real(1) + exp_tuned(-h_u[i]))) * o[i];
}
// Backward of: gated = u ⊙ o with u = h_u · σ(h_u)   =>   do += dgated ⊙ u;
//                                                        dh_u += dgated ⊙ o ⊙ σ(h_u) · (1 + h_u · (1 − σ(h_u)))
template <typename Real>
void silu_gate_backward(Real* dh_u, Real* d_o, const Real* dgated, const Real* h_u, const Real* o, int N, int e) {
    const size_t n = (size_t)N * e;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        const Real sig = Real(1) / (Real(1) + exp_tuned(-h_u[i]));
        d_o[i] += dgated[i] * (h_u[i] * sig);
        dh_u[i] += dgated[i] * o[i] * sig * (Real(1) + h_u[i] * (Real(1) - sig));
    }
}

// Rows per block of the local attention: row_block (1 .. C) when causal; non-causal, every row sees every column, so
// the whole chunk is one block.
static int local_block_rows(int row_block, int C, bool causal) {
    return causal ? std::max(1, std::min(row_block, C)) : C;
}

// Local squared-ReLU attention inside each chunk (writes o = quad; the global part adds to it):
//   S[a,b] = (qq[a]·kq[b]) / C + w[a−b];   A[a,b] = relu(S[a,b])² if b ≤ a (causal) else 0;   quad[a] = Σ_b A[a,b] v[b]
// o (N,e); relu_s (B,G,C,C) saved; qq, kq (N,s); v (N,e) with row stride ldv; rel_bias (C) or (2C−1)
// Causal chunks go in blocks of row_block rows: rows a0 .. a1−1 attend to the columns b < a1 only, so the products
// skip the blocks above the diagonal, which the mask makes zero (at C = 128 and 32 rows a block, 3/8 of the
// products; the model's FLOP count keeps the whole square). The results are those of one block of C rows, but for
// the order in which BLAS adds the products' terms; test_ops compares the two.
template <typename Real>
void local_attention_forward(Real* o, Real* relu_s, const Real* qq, const Real* kq, const Real* v, int ldv,
                             const Real* rel_bias, int B, int T, int C, int s, int e, bool causal, int row_block) {
    const int G = T / C;
    const int rows = local_block_rows(row_block, C, causal);
    auto scratch = [&] { return std::vector<Real>((size_t)C * C); };  // A of one chunk
    for_each_chunk(B * G, scratch, [&](int bg, std::vector<Real>& A) {
        const size_t row0 = chunk_first_row(bg, C);
        Real* R = relu_s + (size_t)bg * C * C;
        for (int a0 = 0; a0 < C; a0 += rows) {
            const int a1 = std::min(C, a0 + rows), cols = causal ? a1 : C;  // rows a0..a1−1 see columns 0..cols−1
            // R = qq_chunk · kq_chunkᵀ / C on these rows and columns, then bias, mask and relu in place.
            gemm(false, true, a1 - a0, cols, s, Real(1) / C, qq + (row0 + a0) * s, s, kq + row0 * s, s, Real(0),
                 R + (size_t)a0 * C, C);
            for (int a = a0; a < a1; a++) {
                Real *Ra = R + (size_t)a * C, *Aa = A.data() + (size_t)a * C;
                const int attended = causal ? a + 1 : C;  // columns b < attended; the rest are masked
#pragma omp simd
                for (int b = 0; b < attended; b++) {
                    const Real r = std::max(Real(0), Ra[b] + rel_bias[rel_bias_index(a, b, C, causal)]);
                    Ra[b] = r;
                    Aa[b] = r * r;
                }
                for (int b = attended; b < C; b++) Ra[b] = Aa[b] = Real(0);
            }
            gemm(false, false, a1 - a0, e, cols, Real(1), A.data() + (size_t)a0 * C, C, v + row0 * ldv, ldv, Real(0),
                 o + (row0 + a0) * e, e);
        }
    });
}
// Backward of: quad = A · v with A = relu(S)² (masked), S = qq·kqᵀ/C + w:
//   dA = do · vᵀ (masked);  dv += Aᵀ · do;  dS = 2·relu(S) ⊙ dA;
//   dqq += dS · kq / C;  dkq += dSᵀ · qq / C;  dw[a−b] += dS[a,b]
// In the forward's blocks: dA and dqq by blocks of rows (a0 .. a1−1, over the columns b < a1), dv and dkq by blocks of
// columns (b0 .. b1−1, over the rows a ≥ b0 that attend them). dw is summed per chunk into a partial, then over
// chunks in order.
template <typename Real>
void local_attention_backward(Real* dqq, Real* dkq, Real* dv, int lddv, Real* drel_bias, const Real* d_o,
                              const Real* relu_s, const Real* qq, const Real* kq, const Real* v, int ldv, int B, int T,
                              int C, int s, int e, bool causal, int row_block) {
    const int G = T / C;
    const int rows = local_block_rows(row_block, C, causal);
    const int nbias = rel_bias_count(C, causal);
    std::vector<Real> dbias_part((size_t)B * G * nbias, Real(0));
    struct Scratch {  // one thread's buffers, reused chunk after chunk
        std::vector<Real> A, dS;
    };
    auto scratch = [&] { return Scratch{std::vector<Real>((size_t)C * C), std::vector<Real>((size_t)C * C)}; };
    for_each_chunk(B * G, scratch, [&](int bg, Scratch& sc) {
        auto& [A, dS] = sc;
        const size_t row0 = chunk_first_row(bg, C);
        const Real* R = relu_s + (size_t)bg * C * C;
        for (size_t i = 0; i < (size_t)C * C; i++) A[i] = R[i] * R[i];
        for (int a0 = 0; a0 < C; a0 += rows) {  // dS starts as dA = do · vᵀ
            const int a1 = std::min(C, a0 + rows), cols = causal ? a1 : C;
            gemm(false, true, a1 - a0, cols, e, Real(1), d_o + (row0 + a0) * e, e, v + row0 * ldv, ldv, Real(0),
                 dS.data() + (size_t)a0 * C, C);
        }
        for (int b0 = 0; b0 < C; b0 += rows) {  // dv += Aᵀ · do
            const int b1 = std::min(C, b0 + rows), first = causal ? b0 : 0;  // rows first..C−1 attend these columns
            gemm(true, false, b1 - b0, e, C - first, Real(1), A.data() + (size_t)first * C + b0, C,
                 d_o + (row0 + first) * e, e, Real(1), dv + (row0 + b0) * lddv, lddv);
        }
        Real* dbias = dbias_part.data() + (size_t)bg * nbias;
        for (int a = 0; a < C; a++) {
            Real* dSa = dS.data() + (size_t)a * C;
            const Real* Ra = R + (size_t)a * C;
            const int attended = causal ? a + 1 : C;
#pragma omp simd  // within a row every b has its own bias entry, so the lanes never add to the same one
            for (int b = 0; b < attended; b++) {
                const Real ds = 2 * Ra[b] * dSa[b];  // R = 0 where relu was off
                dSa[b] = ds;
                dbias[rel_bias_index(a, b, C, causal)] += ds;
            }
            for (int b = attended; b < C; b++) dSa[b] = Real(0);  // masked (and, past the row's block, not computed)
        }
        for (int a0 = 0; a0 < C; a0 += rows) {  // dqq += dS · kq / C
            const int a1 = std::min(C, a0 + rows), cols = causal ? a1 : C;
            gemm(false, false, a1 - a0, s, cols, Real(1) / C, dS.data() + (size_t)a0 * C, C, kq + row0 * s, s, Real(1),
                 dqq + (row0 + a0) * s, s);
        }
        for (int b0 = 0; b0 < C; b0 += rows) {  // dkq += dSᵀ · qq / C
            const int b1 = std::min(C, b0 + rows), first = causal ? b0 : 0;
            gemm(true, false, b1 - b0, s, C - first, Real(1) / C, dS.data() + (size_t)first * C + b0, C,
                 qq + (row0 + first) * s, s, Real(1), dkq + (row0 + b0) * s, s);
        }
    });
    for (int bg = 0; bg < B * G; bg++)
        for (int k = 0; k < nbias; k++) drel_bias[k] += dbias_part[(size_t)bg * nbias + k];
}

// The chunks (b·G + g) whose global products are taken. Causal, the last chunk of a batch row feeds no later chunk
// and the first is fed by none, so each side has G − 1 chunks a row; non-causal, every chunk is both.
struct GlobalChunks {
    GlobalChunks(int B, int G, bool causal) : B(B), G(G), per_row(causal ? G - 1 : G) {}
    int count() const { return B * per_row; }
    int feeding(int i) const { return i / per_row * G + i % per_row; }  // chunks 0 .. per_row−1
    int fed(int i) const { return feeding(i) + G - per_row; }           // chunks G−per_row .. G−1
    int B, G, per_row;
};

// Global linear attention across chunks (adds to o):
//   P[g] = kl[g]ᵀ · v[g] / C;   M[g] = Σ_{h<g} P[h] (causal, exclusive) or Σ_h P[h] (non-causal);   o[g] += ql[g] · M[g]
// o (N,e); m (B,G,s,e) saved; ql, kl (N,s); v (N,e) with row stride ldv
// Causal, the last chunk's P feeds no chunk and the first chunk's M is zero, so neither product is taken: at G = 4
// that is a quarter of the products (and of the backward's; the model's FLOP count keeps them, FLASH.md §4).
template <typename Real>
void global_attention_forward(Real* o, Real* m, const Real* ql, const Real* kl, const Real* v, int ldv, int B, int T,
                              int C, int s, int e, bool causal) {
    const int G = T / C;
    const size_t se = (size_t)s * e;
    const GlobalChunks chunks(B, G, causal);
    // 1. P[g] for every chunk that feeds another, written into m's slot for that chunk.
    for_each_chunk(chunks.count(), [&](int i) {
        const int bg = chunks.feeding(i);
        const size_t row0 = chunk_first_row(bg, C);
        gemm(true, false, s, e, C, Real(1) / C, kl + row0 * s, s, v + row0 * ldv, ldv, Real(0), m + bg * se, e);
    });
    // 2. Turn P into M in place, per batch row: an exclusive prefix sum (causal) or the total (non-causal).
    chunk_prefix_sum(m, B, G, se, /*exclusive=*/causal, /*reverse=*/false);
    // 3. lin = ql · M[g], added to o, for every chunk that is fed.
    for_each_chunk(chunks.count(), [&](int i) {
        const int bg = chunks.fed(i);
        const size_t row0 = chunk_first_row(bg, C);
        gemm(false, false, C, e, s, Real(1), ql + row0 * s, s, m + bg * se, e, Real(1), o + row0 * e, e);
    });
}
// Backward of: o[g] += ql[g] · M[g] with M[g] = Σ_{h<g} kl[h]ᵀ v[h] / C:
//   dql[g] += do[g] · M[g]ᵀ;   dM[g] = ql[g]ᵀ · do[g];   R[g] = Σ_{h>g} dM[h] (non-causal: Σ_h dM[h]);
//   dkl[g] += v[g] · R[g]ᵀ / C;   dv[g] += kl[g] · R[g] / C
// over the same chunks as the forward: the fed ones for dql and dM (dM of the first chunk reaches no R), the feeding
// ones for dkl and dv (R of the last chunk is zero).
template <typename Real>
void global_attention_backward(Real* dql, Real* dkl, Real* dv, int lddv, const Real* d_o, const Real* m,
                               const Real* ql, const Real* kl, const Real* v, int ldv, int B, int T, int C, int s,
                               int e, bool causal) {
    const int G = T / C;
    const size_t se = (size_t)s * e;
    const GlobalChunks chunks(B, G, causal);
    // dM, then R in place. Not zeroed first: the products below write every dM they take (beta 0), and the sum writes
    // every R without reading the dM that was not taken.
    std::unique_ptr<Real[]> r(new Real[(size_t)B * G * se]);
    for_each_chunk(chunks.count(), [&](int i) {
        const int bg = chunks.fed(i);
        const size_t row0 = chunk_first_row(bg, C);
        gemm(false, true, C, s, e, Real(1), d_o + row0 * e, e, m + bg * se, e, Real(1), dql + row0 * s, s);
        gemm(true, false, s, e, C, Real(1), ql + row0 * s, s, d_o + row0 * e, e, Real(0), r.get() + bg * se, e);
    });
    // R[g] = Σ_{h>g} dM[h]: the reverse of the forward's exclusive sum (non-causal: the total again).
    chunk_prefix_sum(r.get(), B, G, se, /*exclusive=*/causal, /*reverse=*/true);
    for_each_chunk(chunks.count(), [&](int i) {
        const int bg = chunks.feeding(i);
        const size_t row0 = chunk_first_row(bg, C);
        const Real* rg = r.get() + bg * se;
        gemm(false, true, C, s, e, Real(1) / C, v + row0 * ldv, ldv, rg, e, Real(1), dkl + row0 * s, s);
        gemm(false, false, C, e, s, Real(1) / C, kl + row0 * s, s, rg, e, Real(1), dv + row0 * lddv, lddv);
    });
}

// forward_flops_per_token less what the causal code skips: per chunk, the blocks of local_block_rows rows see only
// the columns before their last row; of the global products, G − 1 of G chunks a side (GlobalChunks).
double forward_flops_done_per_token(const FlashConfig& c, int T) {
    const double e = c.e, s = c.s, L = c.n_layers, C = c.chunk, G = T / c.chunk;
    const int rows = local_block_rows(kLocalRowBlock, c.chunk, c.causal);
    double local_share = 0;  // of the C×C square
    for (int a0 = 0; a0 < c.chunk; a0 += rows) {
        const int a1 = std::min(c.chunk, a0 + rows);
        local_share += (double)(a1 - a0) * (c.causal ? a1 : c.chunk) / (C * C);
    }
    const double global_share = c.causal ? (G - 1) / G : 1.0;
    return forward_flops_per_token(c) - 2 * C * (s + e) * L * (1 - local_share) - 4 * s * e * L * (1 - global_share);
}

// ====================================================================================================
// The model

void check_batch(const FlashConfig& cfg, const int* tokens, const int* targets, int B, int T) {
    FLASH_CHECK(B > 0 && T > 0, "batch shape must be positive, got B=" << B << " T=" << T, "");
    FLASH_CHECK(T % cfg.chunk == 0, "sequence length T=" << T << " is not a multiple of the chunk size C=" << cfg.chunk,
                "use T = G*C; only the cached decoder handles other lengths");
    check_token_ids(tokens, targets, B * T, cfg.vocab_size);
}

template <typename Real>
void init_flash_weights(const ParamView<Real>& p, const FlashConfig& cfg, uint64_t seed, bool strong) {
    Rng rng(seed);
    auto fill_normal = [&](Real* x, size_t n, double mean, double std) {
        for (size_t i = 0; i < n; i++) x[i] = (Real)(mean + std * rng.normal());
    };
    const size_t I = cfg.inner(), s = cfg.s, d = cfg.d, e = cfg.e;
    if (!strong) {  // the paper's (§1): every layer starts close to the identity
        fill_normal(p.wte, (size_t)cfg.vocab_size * d, 0, 0.02);
        for (auto& lp : p.layers) {
            lp.norm_g[0] = 1;
            fill_normal(lp.w_in, d * I, 0, 0.02);
            fill_normal(lp.gamma, 4 * s, 0, 0.02);
            fill_normal(lp.rel_bias, cfg.n_rel_bias(), 0, 0.02);
            fill_normal(lp.w_out, e * d, 0, 0.02);
        }
        p.norm_f_g[0] = 1;
        return;
    }
    // Strong (for tests): γ ~ N(1, 0.5), β and w ~ N(0, 0.5) as FLASH.md suggests, and also matrices of unit gain,
    // random biases and gains, so that every parameter's gradient is large enough for finite differences to
    // resolve it to 1e-6 (with the paper's, the gradient of γ is ~1e-8 while the loss is ~4).
    fill_normal(p.wte, (size_t)cfg.vocab_size * d, 0, 0.3);
    for (auto& lp : p.layers) {
        fill_normal(lp.norm_g, 1, 1.0, 0.2);
        fill_normal(lp.w_in, d * I, 0, 1.0 / std::sqrt((double)d));
        fill_normal(lp.b_in, I, 0, 0.1);
        fill_normal(lp.gamma, 4 * s, 1.0, 0.5);
        fill_normal(lp.beta, 4 * s, 0, 0.5);
        fill_normal(lp.rel_bias, cfg.n_rel_bias(), 0, 0.5);
        fill_normal(lp.w_out, e * d, 0, 1.0 / std::sqrt((double)e));
        fill_normal(lp.b_out, d, 0, 0.1);
    }
    fill_normal(p.norm_f_g, 1, 1.0, 0.2);
}

template <typename Real>
FlashModel<Real>::FlashModel(const FlashConfig& c) : cfg(c) {
    config_validate(cfg);
    check_model_state_fits((double)param_count(cfg), sizeof(Real));
    this->allocate(param_specs(cfg));
    p = view_params(this->params.data(), cfg);
    dp = view_params(this->grads.data(), cfg);
}

template <typename Real>
nlohmann::json FlashModel<Real>::config_json() const {
    return config_to_json(cfg);
}

template <typename Real>
std::string FlashModel<Real>::shape_mismatch(const nlohmann::json& config) const {
    return config_shape_mismatch(config_from_json(config), cfg);
}

template <typename Real>
void FlashModel<Real>::init_weights(uint64_t seed, bool strong) {
    std::fill(this->params.begin(), this->params.end(), Real(0));
    this->zero_moments();
    init_flash_weights(p, cfg, seed, strong);
}

// (Re)allocates the activations for a batch of B rows of T tokens.
template <typename Real>
static void layout_activations(FlashModel<Real>& m, int B, int T) {
    check_token_count(B, T);  // before activation_counts computes B * T in int
    size_t n_act, n_grad;
    activation_counts(m.cfg, B, T, &n_act, &n_grad);
    check_activations_fit((double)n_act, (double)n_grad, B, T, sizeof(Real));
    assign_zeros_on_huge_pages(m.act_buf, n_act);
    assign_zeros_on_huge_pages(m.grad_act_buf, n_grad);
    view_activations(m.acts, m.dacts, m.act_buf.data(), m.grad_act_buf.data(), m.cfg, B, T);
    m.act_layer = -1;
    rope_tables(m.rope_cos, m.rope_sin, 0, T, m.cfg.s, m.cfg.rope_base);
    m.B = B;
    m.T = T;
}

template <typename Real>
double FlashModel<Real>::forward(const int* tok, const int* tgt, int B_, int T_) {
    check_batch(cfg, tok, tgt, B_, T_);
    const int N = B_ * T_, V = cfg.vocab_size;
    if (B_ != B || T_ != T) layout_activations(*this, B_, T_);
    tokens.assign(tok, tok + N);
    if (tgt) targets.assign(tgt, tgt + N);
    else targets.clear();

    const int d = cfg.d, e = cfg.e, s = cfg.s, I = cfg.inner(), C = cfg.chunk;
    encoder_forward(acts.layers[0].x, tok, p.wte, N, d);
    for (int l = 0; l < cfg.n_layers; l++) {
        const LayerParams<Real>& lp = p.layers[l];
        LayerActs<Real>& la = acts.layers[l];
        Real* x_next = (l + 1 < cfg.n_layers) ? acts.layers[l + 1].x : acts.x_final;
        // h and act in two planes (vz_plane): h_u = la.h (N,e), then h_vz and act_vz = [v | z] (N, e+s)
        Real *h_vz = vz_plane(la.h, N, e), *act_vz = vz_plane(acts.act, N, e);
        const Real* v = act_vz;
        scalenorm_forward(la.xn, la.rstd, la.x, lp.norm_g, N, d, cfg.eps);
        matmul_forward(la.h, la.xn, lp.w_in, lp.b_in, N, d, e, I);                 // W_in's u columns
        matmul_forward(h_vz, la.xn, lp.w_in + e, lp.b_in + e, N, d, e + s, I);    // and its v and z columns
        gau_rows_forward(act_vz, la.qq, la.kq, la.ql, la.kl, h_vz, lp.gamma, lp.beta, rope_cos.data(),
                         rope_sin.data(), N, T, e, s);
        local_attention_forward(la.o, la.relu_s, la.qq, la.kq, v, e + s, lp.rel_bias, B, T, C, s, e, cfg.causal);
        global_attention_forward(la.o, la.m, la.ql, la.kl, v, e + s, B, T, C, s, e, cfg.causal);
        silu_gate_forward(la.gated, la.h, la.o, N, e);                             // gated = silu(h_u) ⊙ o
        matmul_residual_forward(x_next, la.x, la.gated, lp.w_out, lp.b_out, N, e, d);  // x_next = x + gated·W + b
    }
    act_layer = cfg.n_layers - 1;
    scalenorm_forward(acts.xn_f, acts.rstd_f, acts.x_final, p.norm_f_g, N, d, cfg.eps);
    logits_forward(acts.logits, acts.xn_f, p.wte, N, d, V);
    loss = tgt ? crossentropy_forward(acts.losses, acts.probs, acts.logits, tgt, N, V)
               : std::numeric_limits<double>::quiet_NaN();
    return loss;
}

template <typename Real>
void FlashModel<Real>::backward() {
    FLASH_CHECK(B > 0 && (int)targets.size() == B * T, "backward() needs a forward() with targets first", "");
    const int N = B * T, d = cfg.d, e = cfg.e, s = cfg.s, I = cfg.inner(), C = cfg.chunk, V = cfg.vocab_size;
    GradActs<Real>& g = dacts;
    // What the head's backward accumulates into starts at zero: dlogits, dxn and dres. The rest of the layers'
    // scratch (dh .. dgated) is zeroed layer by layer below.
    zero_fill(g.dlogits, (size_t)N * V);
    zero_fill(g.dxn, (size_t)N * d);
    zero_fill(g.dres, (size_t)N * d);

    crossentropy_backward(g.dlogits, acts.probs, targets.data(), N, V);
    logits_backward(g.dxn, dp.wte, g.dlogits, acts.xn_f, p.wte, N, d, V);
    scalenorm_backward(g.dres, dp.norm_f_g, g.dxn, acts.x_final, acts.rstd_f, p.norm_f_g, N, d);

    for (int l = cfg.n_layers - 1; l >= 0; l--) {
        const LayerParams<Real>& lp = p.layers[l];
        const LayerParams<Real>& dlp = dp.layers[l];
        const LayerActs<Real>& la = acts.layers[l];
        const Real *h_vz = vz_plane(la.h, N, e), *v = vz_plane(acts.act, N, e);
        Real *dh_vz = vz_plane(g.dh, N, e), *dv = vz_plane(g.dact, N, e);  // dh_u = g.dh; dact's u plane is unused
        // This layer's act = [v | z] again (Acts::act), unless it is still there: the forward leaves the last layer's.
        if (act_layer != l) silu_forward(vz_plane(acts.act, N, e), h_vz, (size_t)N * (e + s));
        act_layer = l;
        // This layer's scratch gradients (dxn .. dgated, contiguous in view_activations) accumulate from zero;
        // g.dres carries d(x_next) in and d(x) out.
        zero_fill(g.dxn, (size_t)(g.dlogits - g.dxn));
        matmul_backward(g.dgated, dlp.w_out, dlp.b_out, g.dres, la.gated, lp.w_out, N, e, d);
        silu_gate_backward(g.dh, g.d_o, g.dgated, la.h, la.o, N, e);
        global_attention_backward(g.dql, g.dkl, dv, e + s, g.d_o, la.m, la.ql, la.kl, v, e + s, B, T, C, s, e,
                                  cfg.causal);
        local_attention_backward(g.dqq, g.dkq, dv, e + s, dlp.rel_bias, g.d_o, la.relu_s, la.qq, la.kq, v, e + s, B, T,
                                 C, s, e, cfg.causal);
        gau_rows_backward(dh_vz, dlp.gamma, dlp.beta, dv, g.dqq, g.dkq, g.dql, g.dkl, h_vz, v, lp.gamma,
                          rope_cos.data(), rope_sin.data(), N, T, e, s);
        matmul_backward(g.dxn, dlp.w_in, dlp.b_in, g.dh, la.xn, lp.w_in, N, d, e, I);
        matmul_backward(g.dxn, dlp.w_in + e, dlp.b_in + e, dh_vz, la.xn, lp.w_in + e, N, d, e + s, I);
        // residual: dres already holds the direct path; the scalenorm path adds to it.
        scalenorm_backward(g.dres, dlp.norm_g, g.dxn, la.x, la.rstd, lp.norm_g, N, d);
    }
    encoder_backward(dp.wte, g.dres, tokens.data(), N, d);
}

template <typename Real>
void FlashModel<Real>::release_activations() {
    std::vector<Real>().swap(act_buf);  // swap, not clear: clear keeps the capacity
    std::vector<Real>().swap(grad_act_buf);
    acts = Acts<Real>{};
    dacts = GradActs<Real>{};
    act_layer = -1;
    B = T = 0;  // forward compares (B, T) with these to decide whether to lay out its buffers again
}

// ====================================================================================================
// Instantiations, float (training) and double (gradient checks). decltype names each function's own signature.

#define INSTANTIATE(fn)                       \
    template decltype(fn<float>) fn<float>;   \
    template decltype(fn<double>) fn<double>;
INSTANTIATE(view_params)
INSTANTIATE(view_activations)
INSTANTIATE(offset_scale_forward)
INSTANTIATE(offset_scale_backward)
INSTANTIATE(gau_rows_forward)
INSTANTIATE(gau_rows_backward)
INSTANTIATE(silu_gate_forward)
INSTANTIATE(silu_gate_backward)
INSTANTIATE(local_attention_forward)
INSTANTIATE(local_attention_backward)
INSTANTIATE(global_attention_forward)
INSTANTIATE(global_attention_backward)
INSTANTIATE(init_flash_weights)
template struct FlashModel<float>;
template struct FlashModel<double>;
