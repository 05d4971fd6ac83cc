// flash.cpp: the CPU reference of FLASH. Plain loops and BLAS calls, meant to be read top to bottom.
//
// Layout of a token row: the fused projection h (and act = silu(h)) is [u (e) | v (e) | z (s)], so u, v and
// z are strided views into one buffer (leading dimension 2e+s); BLAS takes the stride directly.
// N = B*T rows; chunk g of batch row b is rows b*T + g*C .. b*T + g*C + C-1; G = T/C.
// Parallelism: OpenMP on outer loops only (rows, columns, chunks). Every reduction is ordered: a thread
// owns whole output elements, or writes a partial per chunk that is then summed serially. Results are
// therefore the same from run to run.
#include "flash.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include <fcntl.h>
#include <unistd.h>

#include "json_util.h"
#include "resource_check.h"
#include "value_check.h"

using json = nlohmann::json;

// ====================================================================================================
// Configuration

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

FlashConfig config_from_json(const json& j) {
    FLASH_CHECK(j.is_object(), "model config must be a JSON object, got " << j.type_name(),
                "write {\"d\": 256, ...} with the keys of FLASH.md section 5");
    FlashConfig c;
    static const char* known[] = {"vocab_size", "d", "e", "s", "n_layers", "chunk", "seq_len", "causal", "eps",
                                  "rope_base"};
    for (auto it = j.begin(); it != j.end(); ++it) {
        bool ok = false;
        for (const char* k : known) ok = ok || it.key() == k;
        FLASH_CHECK(ok, "unknown model config field '" << clip_text(it.key()) << "'",
                    "the fields are vocab_size, d, e, s, n_layers, chunk, seq_len, causal, eps, rope_base");
    }
    auto get_int = [&](const char* k, int& dst) {
        if (!j.contains(k)) return;
        const json& v = j[k];
        FLASH_CHECK(v.is_number_integer(), "config field '" << k << "' must be an integer, got " << json_excerpt(v),
                    "write e.g. \"" << k << "\": " << dst);
        long long x = v.get<long long>();
        FLASH_CHECK(x >= std::numeric_limits<int>::min() && x <= std::numeric_limits<int>::max(),
                    "config field '" << k << "' is out of range: " << x, "fix '" << k << "'");
        dst = (int)x;
    };
    auto get_double = [&](const char* k, double& dst) {
        if (!j.contains(k)) return;
        const json& v = j[k];
        FLASH_CHECK(v.is_number(), "config field '" << k << "' must be a number, got " << json_excerpt(v),
                    "write e.g. \"" << k << "\": " << dst);
        dst = v.get<double>();
    };
    get_int("vocab_size", c.vocab_size);
    get_int("d", c.d);
    get_int("e", c.e);
    get_int("s", c.s);
    get_int("n_layers", c.n_layers);
    get_int("chunk", c.chunk);
    get_int("seq_len", c.seq_len);
    if (j.contains("causal")) {
        FLASH_CHECK(j["causal"].is_boolean(), "config field 'causal' must be true or false, got " << json_excerpt(j["causal"]),
                    "write \"causal\": true");
        c.causal = j["causal"].get<bool>();
    }
    get_double("eps", c.eps);
    get_double("rope_base", c.rope_base);
    config_validate(c);
    return c;
}

json config_to_json(const FlashConfig& c) {
    return json{{"vocab_size", c.vocab_size}, {"d", c.d}, {"e", c.e}, {"s", c.s}, {"n_layers", c.n_layers},
                {"chunk", c.chunk}, {"seq_len", c.seq_len}, {"causal", c.causal}, {"eps", c.eps},
                {"rope_base", c.rope_base}};
}

std::string config_shape_mismatch(const FlashConfig& a, const FlashConfig& b) {
    std::ostringstream os;
    auto cmp = [&](const char* k, double x, double y) {
        if (x != y) os << (os.tellp() > 0 ? ", " : "") << k << ": " << x << " vs " << y;
    };
    cmp("vocab_size", a.vocab_size, b.vocab_size);
    cmp("d", a.d, b.d);
    cmp("e", a.e, b.e);
    cmp("s", a.s, b.s);
    cmp("n_layers", a.n_layers, b.n_layers);
    cmp("chunk", a.chunk, b.chunk);
    cmp("causal", a.causal, b.causal);
    cmp("eps", a.eps, b.eps);
    cmp("rope_base", a.rope_base, b.rope_base);
    return os.str();
}

double Rng::normal() {
    // Box-Muller; 1 - uniform() is in (0, 1], so the log is finite.
    double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

// ====================================================================================================
// Parameter layout (§7)

std::vector<TensorSpec> param_specs(const FlashConfig& c) {
    std::vector<TensorSpec> specs;
    size_t offset = 0;
    auto add = [&](std::string name, std::vector<int64_t> shape, bool decay) {
        TensorSpec t;
        t.name = std::move(name);
        t.shape = std::move(shape);
        t.count = 1;
        for (int64_t n : t.shape) t.count *= (size_t)n;
        t.offset = offset;
        t.decay = decay;
        offset += t.count;
        specs.push_back(std::move(t));
    };
    const int64_t V = c.vocab_size, d = c.d, e = c.e, s = c.s, I = c.inner();
    add("wte", {V, d}, true);
    for (int l = 0; l < c.n_layers; l++) {
        std::string p = "layers." + std::to_string(l) + ".";
        add(p + "norm.g", {1}, false);
        add(p + "w_in", {d, I}, true);
        add(p + "b_in", {I}, false);
        add(p + "gamma", {4, s}, false);
        add(p + "beta", {4, s}, false);
        add(p + "rel_bias", {c.n_rel_bias()}, false);
        add(p + "w_out", {e, d}, true);
        add(p + "b_out", {d}, false);
    }
    add("norm_f.g", {1}, false);
    return specs;
}

size_t param_count(const FlashConfig& c) {
    auto specs = param_specs(c);
    return specs.back().offset + specs.back().count;
}

template <typename Real>
ParamView<Real> view_params(Real* base, const FlashConfig& c) {
    // Walks param_specs in order: wte, 8 tensors per layer, norm_f.g.
    auto specs = param_specs(c);
    ParamView<Real> v;
    v.wte = base + specs[0].offset;
    v.layers.resize(c.n_layers);
    for (int l = 0; l < c.n_layers; l++) {
        const TensorSpec* t = &specs[1 + 8 * l];
        LayerParams<Real>& lp = v.layers[l];
        lp.norm_g = base + t[0].offset;
        lp.w_in = base + t[1].offset;
        lp.b_in = base + t[2].offset;
        lp.gamma = base + t[3].offset;
        lp.beta = base + t[4].offset;
        lp.rel_bias = base + t[5].offset;
        lp.w_out = base + t[6].offset;
        lp.b_out = base + t[7].offset;
    }
    v.norm_f_g = base + specs.back().offset;
    return v;
}

// ====================================================================================================
// BLAS: y = alpha · op(A) · op(B) + beta · C, row-major, one overload per precision.

static void gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
                 float beta, float* C, int ldc) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda,
                B, ldb, beta, C, ldc);
}
static void gemm(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda, const double* B,
                 int ldb, double beta, double* C, int ldc) {
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda,
                B, ldb, beta, C, ldc);
}

// The per-chunk products run either chunks in parallel, each with a one-thread BLAS (when there are at least as many
// chunks as threads: the usual case), or one chunk at a time with BLAS's own threads (few, large chunks, as in
// FLASH-Quad with B = 1). In the first case OpenBLAS must not start threads of its own inside the OpenMP loop.
struct ChunkParallelism {
    bool over_chunks;  // use as: #pragma omp parallel for if (par.over_chunks)
    int saved;
    explicit ChunkParallelism(int n_chunks)
        : over_chunks(n_chunks >= omp_get_max_threads()), saved(openblas_get_num_threads()) {
        if (over_chunks) openblas_set_num_threads(1);
    }
    ~ChunkParallelism() { openblas_set_num_threads(saved); }
};

// ====================================================================================================
// The ops. Shapes use N = B*T rows.

// Sums over rows (bias gradients, dγ, dβ, the embedding scatter) split the COLUMNS among threads, in blocks of
// kColBlock, and walk the rows in order inside a block: reads stay contiguous, and every sum has the same
// order whatever the number of threads.
constexpr int kColBlock = 64;

// x[n,:] = wte[tokens[n],:]
// x (N,d), tokens (N), wte (V,d)
template <typename Real>
void encoder_forward(Real* x, const int* tokens, const Real* wte, int N, int d) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) std::memcpy(x + (size_t)n * d, wte + (size_t)tokens[n] * d, sizeof(Real) * d);
}
// Inverts: x[n,:] = wte[tokens[n],:]   =>   dwte[tokens[n],:] += dx[n,:]
// A token can repeat, so rows collide: threads split the columns (whole blocks), and each sums rows in order.
template <typename Real>
void encoder_backward(Real* dwte, const Real* dx, const int* tokens, int N, int d) {
#pragma omp parallel for
    for (int j0 = 0; j0 < d; j0 += kColBlock) {
        const int j1 = std::min(d, j0 + kColBlock);
        for (int n = 0; n < N; n++) {
            Real* dst = dwte + (size_t)tokens[n] * d;
            const Real* src = dx + (size_t)n * d;
            for (int j = j0; j < j1; j++) dst[j] += src[j];
        }
    }
}

// xn = g · x / sqrt(mean(x²) + eps), with ONE scalar gain g; rstd = 1/sqrt(mean(x²) + eps) is saved.
// xn (N,d), rstd (N), x (N,d), g (1)
template <typename Real>
void scalenorm_forward(Real* xn, Real* rstd, const Real* x, const Real* g, int N, int d, double eps) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const Real* xr = x + (size_t)n * d;
        double ss = 0;
        for (int j = 0; j < d; j++) ss += (double)xr[j] * xr[j];
        Real r = (Real)(1.0 / std::sqrt(ss / d + eps));
        rstd[n] = r;
        for (int j = 0; j < d; j++) xn[(size_t)n * d + j] = g[0] * xr[j] * r;
    }
}
// Inverts: xn = g · x · rstd.   With r = 1/rstd:
//   dg += Σ dxn·x/r;   dx += (g/r)·(dxn − x·(Σ_j dxn_j x_j)/(d·r²))
template <typename Real>
void scalenorm_backward(Real* dx, Real* dg, const Real* dxn, const Real* x, const Real* rstd, const Real* g, int N,
                        int d) {
    std::vector<double> dg_row(N);  // per-row partials, summed in order below
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const Real* xr = x + (size_t)n * d;
        const Real* dr = dxn + (size_t)n * d;
        double dot = 0;
        for (int j = 0; j < d; j++) dot += (double)dr[j] * xr[j];
        const double r = rstd[n];
        dg_row[n] = dot * r;
        const double c = dot * r * r / d;  // (Σ dxn x) / (d r²), with rstd = 1/r
        for (int j = 0; j < d; j++) dx[(size_t)n * d + j] += (Real)(g[0] * r * (dr[j] - xr[j] * c));
    }
    double sum = 0;
    for (int n = 0; n < N; n++) sum += dg_row[n];
    dg[0] += (Real)sum;
}

// y = x · w + b
// y (N,out), x (N,in), w (in,out), b (out) or null
template <typename Real>
void matmul_forward(Real* y, const Real* x, const Real* w, const Real* b, int N, int in, int out) {
    if (b) {
#pragma omp parallel for
        for (int n = 0; n < N; n++) std::memcpy(y + (size_t)n * out, b, sizeof(Real) * out);
    }
    gemm(false, false, N, out, in, Real(1), x, in, w, out, b ? Real(1) : Real(0), y, out);
}
// Inverts: y = x · w + b   =>   dx += dy · wᵀ;  dw += xᵀ · dy;  db += Σ_rows dy
template <typename Real>
void matmul_backward(Real* dx, Real* dw, Real* db, const Real* dy, const Real* x, const Real* w, int N, int in,
                     int out) {
    gemm(false, true, N, in, out, Real(1), dy, out, w, out, Real(1), dx, in);
    gemm(true, false, in, out, N, Real(1), x, in, dy, out, Real(1), dw, out);
    if (db) {
#pragma omp parallel for
        for (int j0 = 0; j0 < out; j0 += kColBlock) {
            const int j1 = std::min(out, j0 + kColBlock);
            Real sum[kColBlock] = {};
            for (int n = 0; n < N; n++)
                for (int j = j0; j < j1; j++) sum[j - j0] += dy[(size_t)n * out + j];
            for (int j = j0; j < j1; j++) db[j] += sum[j - j0];
        }
    }
}

// y = x · σ(x), elementwise over n values
template <typename Real>
void silu_forward(Real* y, const Real* x, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) y[i] = x[i] / (Real(1) + std::exp(-x[i]));
}
// Inverts: y = x · σ(x)   =>   dx += dy · σ(x) · (1 + x · (1 − σ(x)))
template <typename Real>
void silu_backward(Real* dx, const Real* dy, const Real* x, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        Real sig = Real(1) / (Real(1) + std::exp(-x[i]));
        dx[i] += dy[i] * sig * (Real(1) + x[i] * (Real(1) - sig));
    }
}

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
// Inverts: head_i = z ⊙ γ[i] + β[i]   =>   dγ[i] += Σ_rows dhead_i ⊙ z;  dβ[i] += Σ_rows dhead_i;
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

// RoPE angle tables: θ_i(t) = t · base^(−2i/s) for t = first_pos .. first_pos+T-1, in double (§1).
// cos_t, sin_t: (T, s/2)
void rope_tables(std::vector<double>& cos_t, std::vector<double>& sin_t, int first_pos, int T, int s, double base) {
    const int half = s / 2;
    cos_t.resize((size_t)T * half);
    sin_t.resize((size_t)T * half);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            double theta = (double)(first_pos + t) * std::pow(base, -2.0 * i / s);
            cos_t[(size_t)t * half + i] = std::cos(theta);
            sin_t[(size_t)t * half + i] = std::sin(theta);
        }
}
// Rotate-half RoPE, in place: r'[i] = r[i]·cos θ_i − r[i+s/2]·sin θ_i;  r'[i+s/2] = r[i+s/2]·cos θ_i + r[i]·sin θ_i
// x (N,s); row n is at table row n mod T
template <typename Real>
void rope_forward(Real* x, const double* cos_t, const double* sin_t, int N, int T, int s) {
    const int half = s / 2;
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        Real* r = x + (size_t)n * s;
        const double* c = cos_t + (size_t)(n % T) * half;
        const double* sn = sin_t + (size_t)(n % T) * half;
        for (int i = 0; i < half; i++) {
            double a = r[i], b = r[i + half];
            r[i] = (Real)(a * c[i] - b * sn[i]);
            r[i + half] = (Real)(b * c[i] + a * sn[i]);
        }
    }
}
// Inverts the rotation above: the transpose of a rotation by θ is the rotation by −θ, applied to dx in place.
template <typename Real>
void rope_backward(Real* dx, const double* cos_t, const double* sin_t, int N, int T, int s) {
    const int half = s / 2;
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        Real* r = dx + (size_t)n * s;
        const double* c = cos_t + (size_t)(n % T) * half;
        const double* sn = sin_t + (size_t)(n % T) * half;
        for (int i = 0; i < half; i++) {
            double a = r[i], b = r[i + half];
            r[i] = (Real)(a * c[i] + b * sn[i]);
            r[i + half] = (Real)(b * c[i] - a * sn[i]);
        }
    }
}

// Index of the relative-position bias for query a and key b inside a chunk.
static inline int rel_bias_index(int a, int b, int C, bool causal) { return causal ? a - b : a - b + C - 1; }

// Local squared-ReLU attention inside each chunk (writes o = quad; the global part adds to it):
//   S[a,b] = (qq[a]·kq[b]) / C + w[a−b];   A[a,b] = relu(S[a,b])² if b ≤ a (causal) else 0;   quad[a] = Σ_b A[a,b] v[b]
// o (N,e); relu_s (B,G,C,C) saved; qq, kq (N,s); v (N,e) with row stride ldv; rel_bias (C) or (2C−1)
template <typename Real>
void local_attention_forward(Real* o, Real* relu_s, const Real* qq, const Real* kq, const Real* v, int ldv,
                             const Real* rel_bias, int B, int T, int C, int s, int e, bool causal) {
    const int G = T / C;
    ChunkParallelism par(B * G);
#pragma omp parallel if (par.over_chunks)
    {
        std::vector<Real> A((size_t)C * C);
#pragma omp for
        for (int bg = 0; bg < B * G; bg++) {
            const size_t row0 = (size_t)(bg / G) * T + (size_t)(bg % G) * C;
            Real* R = relu_s + (size_t)bg * C * C;
            // R = qq_chunk · kq_chunkᵀ / C, then bias, mask and relu in place.
            gemm(false, true, C, C, s, Real(1) / C, qq + row0 * s, s, kq + row0 * s, s, Real(0), R, C);
            for (int a = 0; a < C; a++)
                for (int b = 0; b < C; b++) {
                    Real& r = R[(size_t)a * C + b];
                    r = (causal && b > a) ? Real(0) : std::max(Real(0), r + rel_bias[rel_bias_index(a, b, C, causal)]);
                    A[(size_t)a * C + b] = r * r;
                }
            gemm(false, false, C, e, C, Real(1), A.data(), C, v + row0 * ldv, ldv, Real(0), o + row0 * e, e);
        }
    }
}
// Inverts: quad = A · v with A = relu(S)² (masked), S = qq·kqᵀ/C + w:
//   dA = do · vᵀ (masked);  dv += Aᵀ · do;  dS = 2·relu(S) ⊙ dA;
//   dqq += dS · kq / C;  dkq += dSᵀ · qq / C;  dw[a−b] += dS[a,b]
// dw is summed per chunk into a partial, then over chunks in order.
template <typename Real>
void local_attention_backward(Real* dqq, Real* dkq, Real* dv, int lddv, Real* drel_bias, const Real* d_o,
                              const Real* relu_s, const Real* qq, const Real* kq, const Real* v, int ldv, int B, int T,
                              int C, int s, int e, bool causal) {
    const int G = T / C;
    const int nbias = causal ? C : 2 * C - 1;
    std::vector<Real> dbias_part((size_t)B * G * nbias, Real(0));
    ChunkParallelism par(B * G);
#pragma omp parallel if (par.over_chunks)
    {
        std::vector<Real> A((size_t)C * C), dS((size_t)C * C);
#pragma omp for
        for (int bg = 0; bg < B * G; bg++) {
            const size_t row0 = (size_t)(bg / G) * T + (size_t)(bg % G) * C;
            const Real* R = relu_s + (size_t)bg * C * C;
            for (size_t i = 0; i < (size_t)C * C; i++) A[i] = R[i] * R[i];
            // dS starts as dA = do · vᵀ
            gemm(false, true, C, C, e, Real(1), d_o + row0 * e, e, v + row0 * ldv, ldv, Real(0), dS.data(), C);
            gemm(true, false, C, e, C, Real(1), A.data(), C, d_o + row0 * e, e, Real(1), dv + row0 * lddv, lddv);
            Real* dbias = dbias_part.data() + (size_t)bg * nbias;
            for (int a = 0; a < C; a++)
                for (int b = 0; b < C; b++) {
                    Real& ds = dS[(size_t)a * C + b];
                    ds = 2 * R[(size_t)a * C + b] * ds;  // R = 0 where masked or relu was off
                    if (!(causal && b > a)) dbias[rel_bias_index(a, b, C, causal)] += ds;  // masked: no bias entry
                }
            gemm(false, false, C, s, C, Real(1) / C, dS.data(), C, kq + row0 * s, s, Real(1), dqq + row0 * s, s);
            gemm(true, false, C, s, C, Real(1) / C, dS.data(), C, qq + row0 * s, s, Real(1), dkq + row0 * s, s);
        }
    }
    for (int bg = 0; bg < B * G; bg++)
        for (int k = 0; k < nbias; k++) drel_bias[k] += dbias_part[(size_t)bg * nbias + k];
}

// Global linear attention across chunks (adds to o):
//   P[g] = kl[g]ᵀ · v[g] / C;   M[g] = Σ_{h<g} P[h] (causal, exclusive) or Σ_h P[h] (non-causal);   o[g] += ql[g] · M[g]
// o (N,e); m (B,G,s,e) saved; ql, kl (N,s); v (N,e) with row stride ldv
template <typename Real>
void global_attention_forward(Real* o, Real* m, const Real* ql, const Real* kl, const Real* v, int ldv, int B, int T,
                              int C, int s, int e, bool causal) {
    const int G = T / C;
    const size_t se = (size_t)s * e;
    ChunkParallelism par(B * G);
    // 1. P[g] for every chunk, written into m's slot for that chunk.
#pragma omp parallel for if (par.over_chunks)
    for (int bg = 0; bg < B * G; bg++) {
        const size_t row0 = (size_t)(bg / G) * T + (size_t)(bg % G) * C;
        gemm(true, false, s, e, C, Real(1) / C, kl + row0 * s, s, v + row0 * ldv, ldv, Real(0), m + bg * se, e);
    }
    // 2. Turn P into M in place, per batch row: an exclusive prefix sum (causal) or the total (non-causal).
#pragma omp parallel for
    for (int b = 0; b < B; b++) {
        Real* mb = m + (size_t)b * G * se;
        for (size_t k = 0; k < se; k++) {
            Real running = 0;
            if (causal) {
                for (int g = 0; g < G; g++) {
                    Real p = mb[g * se + k];
                    mb[g * se + k] = running;
                    running += p;
                }
            } else {
                for (int g = 0; g < G; g++) running += mb[g * se + k];
                for (int g = 0; g < G; g++) mb[g * se + k] = running;
            }
        }
    }
    // 3. lin = ql · M[g], added to o.
#pragma omp parallel for if (par.over_chunks)
    for (int bg = 0; bg < B * G; bg++) {
        const size_t row0 = (size_t)(bg / G) * T + (size_t)(bg % G) * C;
        gemm(false, false, C, e, s, Real(1), ql + row0 * s, s, m + bg * se, e, Real(1), o + row0 * e, e);
    }
}
// Inverts: o[g] += ql[g] · M[g] with M[g] = Σ_{h<g} kl[h]ᵀ v[h] / C:
//   dql[g] += do[g] · M[g]ᵀ;   dM[g] = ql[g]ᵀ · do[g];   R[g] = Σ_{h>g} dM[h] (non-causal: Σ_h dM[h]);
//   dkl[g] += v[g] · R[g]ᵀ / C;   dv[g] += kl[g] · R[g] / C
template <typename Real>
void global_attention_backward(Real* dql, Real* dkl, Real* dv, int lddv, const Real* d_o, const Real* m,
                               const Real* ql, const Real* kl, const Real* v, int ldv, int B, int T, int C, int s,
                               int e, bool causal) {
    const int G = T / C;
    const size_t se = (size_t)s * e;
    std::vector<Real> r((size_t)B * G * se);  // dM, then R in place
    ChunkParallelism par(B * G);
#pragma omp parallel for if (par.over_chunks)
    for (int bg = 0; bg < B * G; bg++) {
        const size_t row0 = (size_t)(bg / G) * T + (size_t)(bg % G) * C;
        gemm(false, true, C, s, e, Real(1), d_o + row0 * e, e, m + bg * se, e, Real(1), dql + row0 * s, s);
        gemm(true, false, s, e, C, Real(1), ql + row0 * s, s, d_o + row0 * e, e, Real(0), r.data() + bg * se, e);
    }
#pragma omp parallel for
    for (int b = 0; b < B; b++) {
        Real* rb = r.data() + (size_t)b * G * se;
        for (size_t k = 0; k < se; k++) {
            Real running = 0;
            if (causal) {  // reverse exclusive prefix sum
                for (int g = G - 1; g >= 0; g--) {
                    Real dmg = rb[g * se + k];
                    rb[g * se + k] = running;
                    running += dmg;
                }
            } else {
                for (int g = 0; g < G; g++) running += rb[g * se + k];
                for (int g = 0; g < G; g++) rb[g * se + k] = running;
            }
        }
    }
#pragma omp parallel for if (par.over_chunks)
    for (int bg = 0; bg < B * G; bg++) {
        const size_t row0 = (size_t)(bg / G) * T + (size_t)(bg % G) * C;
        const Real* rg = r.data() + bg * se;
        gemm(false, true, C, s, e, Real(1) / C, v + row0 * ldv, ldv, rg, e, Real(1), dkl + row0 * s, s);
        gemm(false, false, C, e, s, Real(1) / C, kl + row0 * s, s, rg, e, Real(1), dv + row0 * lddv, lddv);
    }
}

// gated = u ⊙ o
// gated (N,e); u (N,e) with row stride ldu; o (N,e)
template <typename Real>
void gate_forward(Real* gated, const Real* u, int ldu, const Real* o, int N, int e) {
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int j = 0; j < e; j++) gated[(size_t)n * e + j] = u[(size_t)n * ldu + j] * o[(size_t)n * e + j];
}
// Inverts: gated = u ⊙ o   =>   du += dgated ⊙ o;  do += dgated ⊙ u
template <typename Real>
void gate_backward(Real* du, int lddu, Real* d_o, const Real* dgated, const Real* u, int ldu, const Real* o, int N,
                   int e) {
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int j = 0; j < e; j++) {
            Real dg = dgated[(size_t)n * e + j];
            du[(size_t)n * lddu + j] += dg * o[(size_t)n * e + j];
            d_o[(size_t)n * e + j] += dg * u[(size_t)n * ldu + j];
        }
}

// y += x: the residual connection (its backward passes the gradient through unchanged)
template <typename Real>
void residual_forward(Real* y, const Real* x, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

// logits = xn · wteᵀ (tied embedding)
// logits (N,V), xn (N,d), wte (V,d)
template <typename Real>
void logits_forward(Real* logits, const Real* xn, const Real* wte, int N, int d, int V) {
    gemm(false, true, N, V, d, Real(1), xn, d, wte, d, Real(0), logits, V);
}
// Inverts: logits = xn · wteᵀ   =>   dxn += dlogits · wte;  dwte += dlogitsᵀ · xn
template <typename Real>
void logits_backward(Real* dxn, Real* dwte, const Real* dlogits, const Real* xn, const Real* wte, int N, int d, int V) {
    gemm(false, false, N, d, V, Real(1), dlogits, V, wte, d, Real(1), dxn, d);
    gemm(true, false, V, d, N, Real(1), dlogits, V, xn, d, Real(1), dwte, d);
}

// losses[n] = logsumexp(logits[n]) − logits[n, targets[n]]; probs = softmax(logits); returns the mean loss.
// losses (N), probs (N,V), logits (N,V), targets (N)
template <typename Real>
double crossentropy_forward(Real* losses, Real* probs, const Real* logits, const int* targets, int N, int V) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const Real* lr = logits + (size_t)n * V;
        Real* pr = probs + (size_t)n * V;
        Real mx = lr[0];
        for (int k = 1; k < V; k++) mx = std::max(mx, lr[k]);
        double sum = 0;
        for (int k = 0; k < V; k++) {
            pr[k] = std::exp(lr[k] - mx);
            sum += pr[k];
        }
        for (int k = 0; k < V; k++) pr[k] = (Real)(pr[k] / sum);
        losses[n] = (Real)(std::log(sum) + mx - lr[targets[n]]);
    }
    double total = 0;
    for (int n = 0; n < N; n++) total += losses[n];
    return total / N;
}
// Inverts: loss = mean_n (logsumexp(logits[n]) − logits[n, t_n])   =>   dlogits += (probs − onehot(t)) / N
template <typename Real>
void crossentropy_backward(Real* dlogits, const Real* probs, const int* targets, int N, int V) {
    const Real scale = Real(1) / N;
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        for (int k = 0; k < V; k++) {
            Real p = probs[(size_t)n * V + k];
            dlogits[(size_t)n * V + k] += (p - (k == targets[n] ? Real(1) : Real(0))) * scale;
        }
    }
}

// ====================================================================================================
// The model

void check_batch(const FlashConfig& cfg, const int* tokens, const int* targets, int B, int T) {
    FLASH_CHECK(B > 0 && T > 0, "batch shape must be positive, got B=" << B << " T=" << T, "");
    FLASH_CHECK(T % cfg.chunk == 0, "sequence length T=" << T << " is not a multiple of the chunk size C=" << cfg.chunk,
                "use T = G*C; only the cached decoder handles other lengths");
    const int N = B * T, V = cfg.vocab_size;
    for (int n = 0; n < N; n++) {
        FLASH_CHECK(tokens[n] >= 0 && tokens[n] < V, "token id " << tokens[n] << " at position " << n
                                                     << " is out of range for vocab_size " << V,
                    "the data was made with another tokenizer; prepare it again or fix vocab_size");
        FLASH_CHECK(!targets || (targets[n] >= 0 && targets[n] < V),
                    "target id " << targets[n] << " at position " << n << " is out of range for vocab_size " << V,
                    "the data was made with another tokenizer; prepare it again or fix vocab_size");
    }
}

template <typename Real>
FlashModel<Real>::FlashModel(const FlashConfig& c) : cfg(c) {
    config_validate(cfg);
    check_model_state_fits(cfg, sizeof(Real));
    specs = param_specs(cfg);
    const size_t n = param_count(cfg);
    params.assign(n, Real(0));
    grads.assign(n, Real(0));
    adam_m.assign(n, Real(0));
    adam_v.assign(n, Real(0));
    p = view_params(params.data(), cfg);
    dp = view_params(grads.data(), cfg);
}

template <typename Real>
void FlashModel<Real>::init_weights(uint64_t seed, bool strong) {
    Rng rng(seed);
    auto fill_normal = [&](Real* x, size_t n, double mean, double std) {
        for (size_t i = 0; i < n; i++) x[i] = (Real)(mean + std * rng.normal());
    };
    std::fill(params.begin(), params.end(), Real(0));
    std::fill(adam_m.begin(), adam_m.end(), Real(0));
    std::fill(adam_v.begin(), adam_v.end(), Real(0));
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

// Sizes of the two activation buffers for a batch (elements): what view_activations lays out.
void activation_counts(const FlashConfig& c, int B, int T, size_t* n_act, size_t* n_grad) {
    const size_t N = (size_t)B * T, d = c.d, e = c.e, s = c.s, I = c.inner(), V = c.vocab_size;
    const size_t G = T / c.chunk, C = c.chunk;
    const size_t per_layer = N * d + N + N * d + 2 * N * I + 4 * N * s + B * G * C * C + B * G * s * e + 2 * N * e;
    *n_act = per_layer * c.n_layers + 2 * N * d + N + 2 * N * V + N;
    *n_grad = 2 * N * d + 2 * N * I + 4 * N * s + 2 * N * e + N * V;
}

template <typename Real>
void view_activations(Acts<Real>& acts, GradActs<Real>& g, Real* act_base, Real* grad_base, const FlashConfig& c,
                      int B, int T) {
    const size_t N = (size_t)B * T, d = c.d, e = c.e, s = c.s, I = c.inner(), V = c.vocab_size;
    const size_t G = T / c.chunk, C = c.chunk;
    Real* ptr = act_base;
    auto take = [&](size_t n) { Real* r = ptr; ptr += n; return r; };
    acts.layers.resize(c.n_layers);
    for (auto& la : acts.layers) {
        la.x = take(N * d);
        la.rstd = take(N);
        la.xn = take(N * d);
        la.h = take(N * I);
        la.act = take(N * I);
        la.qq = take(N * s);  // qq, kq, ql, kl are adjacent (the GPU rotates all four in one launch)
        la.kq = take(N * s);
        la.ql = take(N * s);
        la.kl = take(N * s);
        la.relu_s = take(B * G * C * C);
        la.m = take(B * G * s * e);
        la.o = take(N * e);
        la.gated = take(N * e);
    }
    acts.x_final = take(N * d);
    acts.rstd_f = take(N);
    acts.xn_f = take(N * d);
    acts.logits = take(N * V);
    acts.probs = take(N * V);
    acts.losses = take(N);
    const size_t used_act = (size_t)(ptr - act_base);

    ptr = grad_base;
    g.dres = take(N * d);
    g.dxn = take(N * d);  // dxn .. dgated are contiguous: backward zeroes them in one fill per layer
    g.dh = take(N * I);
    g.dact = take(N * I);
    g.dqq = take(N * s);
    g.dkq = take(N * s);
    g.dql = take(N * s);
    g.dkl = take(N * s);
    g.d_o = take(N * e);
    g.dgated = take(N * e);
    g.dlogits = take(N * V);
    size_t n_act, n_grad;
    activation_counts(c, B, T, &n_act, &n_grad);
    FLASH_CHECK(used_act == n_act && (size_t)(ptr - grad_base) == n_grad,
                "view_activations and activation_counts disagree", "this is a bug: keep the two in step");
}

// (Re)allocates the activations for a batch of B rows of T tokens.
template <typename Real>
static void layout_activations(FlashModel<Real>& m, int B, int T) {
    check_activations_fit(m.cfg, B, T, sizeof(Real));
    size_t n_act, n_grad;
    activation_counts(m.cfg, B, T, &n_act, &n_grad);
    m.act_buf.assign(n_act, Real(0));
    m.grad_act_buf.assign(n_grad, Real(0));
    view_activations(m.acts, m.dacts, m.act_buf.data(), m.grad_act_buf.data(), m.cfg, B, T);
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
        const Real *u = la.act, *v = la.act + e, *z = la.act + 2 * e;
        scalenorm_forward(la.xn, la.rstd, la.x, lp.norm_g, N, d, cfg.eps);
        matmul_forward(la.h, la.xn, lp.w_in, lp.b_in, N, d, I);
        silu_forward(la.act, la.h, (size_t)N * I);
        offset_scale_forward(la.qq, la.kq, la.ql, la.kl, z, I, lp.gamma, lp.beta, N, s);
        for (Real* head : {la.qq, la.kq, la.ql, la.kl}) rope_forward(head, rope_cos.data(), rope_sin.data(), N, T, s);
        local_attention_forward(la.o, la.relu_s, la.qq, la.kq, v, I, lp.rel_bias, B, T, C, s, e, cfg.causal);
        global_attention_forward(la.o, la.m, la.ql, la.kl, v, I, B, T, C, s, e, cfg.causal);
        gate_forward(la.gated, u, I, la.o, N, e);
        matmul_forward(x_next, la.gated, lp.w_out, lp.b_out, N, e, d);
        residual_forward(x_next, la.x, (size_t)N * d);
    }
    scalenorm_forward(acts.xn_f, acts.rstd_f, acts.x_final, p.norm_f_g, N, d, cfg.eps);
    logits_forward(acts.logits, acts.xn_f, p.wte, N, d, V);
    loss = tgt ? crossentropy_forward(acts.losses, acts.probs, acts.logits, tgt, N, V)
               : std::numeric_limits<double>::quiet_NaN();
    return loss;
}

template <typename Real>
void FlashModel<Real>::zero_grad() {
    std::fill(grads.begin(), grads.end(), Real(0));
}

template <typename Real>
void FlashModel<Real>::backward() {
    FLASH_CHECK(B > 0 && (int)targets.size() == B * T, "backward() needs a forward() with targets first", "");
    const int N = B * T, d = cfg.d, e = cfg.e, s = cfg.s, I = cfg.inner(), C = cfg.chunk, V = cfg.vocab_size;
    GradActs<Real>& g = dacts;
    std::fill(grad_act_buf.begin(), grad_act_buf.end(), Real(0));

    crossentropy_backward(g.dlogits, acts.probs, targets.data(), N, V);
    logits_backward(g.dxn, dp.wte, g.dlogits, acts.xn_f, p.wte, N, d, V);
    scalenorm_backward(g.dres, dp.norm_f_g, g.dxn, acts.x_final, acts.rstd_f, p.norm_f_g, N, d);

    for (int l = cfg.n_layers - 1; l >= 0; l--) {
        const LayerParams<Real>& lp = p.layers[l];
        const LayerParams<Real>& dlp = dp.layers[l];
        const LayerActs<Real>& la = acts.layers[l];
        const Real *u = la.act, *v = la.act + e, *z = la.act + 2 * e;
        Real *du = g.dact, *dv = g.dact + e, *dz = g.dact + 2 * e;
        // This layer's scratch gradients (dxn .. dgated, contiguous in view_activations) accumulate from zero;
        // g.dres carries d(x_next) in and d(x) out.
        std::fill(g.dxn, g.dlogits, Real(0));
        matmul_backward(g.dgated, dlp.w_out, dlp.b_out, g.dres, la.gated, lp.w_out, N, e, d);
        gate_backward(du, I, g.d_o, g.dgated, u, I, la.o, N, e);
        global_attention_backward(g.dql, g.dkl, dv, I, g.d_o, la.m, la.ql, la.kl, v, I, B, T, C, s, e, cfg.causal);
        local_attention_backward(g.dqq, g.dkq, dv, I, dlp.rel_bias, g.d_o, la.relu_s, la.qq, la.kq, v, I, B, T, C, s, e,
                                 cfg.causal);
        for (Real* dhead : {g.dqq, g.dkq, g.dql, g.dkl}) rope_backward(dhead, rope_cos.data(), rope_sin.data(), N, T, s);
        offset_scale_backward(dz, I, dlp.gamma, dlp.beta, g.dqq, g.dkq, g.dql, g.dkl, z, I, lp.gamma, N, s);
        silu_backward(g.dh, g.dact, la.h, (size_t)N * I);
        matmul_backward(g.dxn, dlp.w_in, dlp.b_in, g.dh, la.xn, lp.w_in, N, d, I);
        // residual: dres already holds the direct path; the scalenorm path adds to it.
        scalenorm_backward(g.dres, dlp.norm_g, g.dxn, la.x, la.rstd, lp.norm_g, N, d);
    }
    encoder_backward(dp.wte, g.dres, tokens.data(), N, d);
}

template <typename Real>
void FlashModel<Real>::adamw_update(double lr, const AdamWConfig& opt, int64_t t) {
    FLASH_CHECK(t >= 1, "AdamW step counter must start at 1, got " << t, "");
    const double bc1 = 1.0 - std::pow(opt.beta1, (double)t), bc2 = 1.0 - std::pow(opt.beta2, (double)t);
    for (const TensorSpec& spec : specs) {
        const double wd = spec.decay ? opt.weight_decay : 0.0;
        Real *w = params.data() + spec.offset, *gr = grads.data() + spec.offset;
        Real *m1 = adam_m.data() + spec.offset, *m2 = adam_v.data() + spec.offset;
#pragma omp parallel for
        for (size_t i = 0; i < spec.count; i++) {
            double gi = gr[i];
            double mi = opt.beta1 * m1[i] + (1 - opt.beta1) * gi;
            double vi = opt.beta2 * m2[i] + (1 - opt.beta2) * gi * gi;
            m1[i] = (Real)mi;
            m2[i] = (Real)vi;
            double update = (mi / bc1) / (std::sqrt(vi / bc2) + opt.eps) + wd * w[i];
            w[i] = (Real)(w[i] - lr * update);
        }
    }
}

template <typename Real>
double FlashModel<Real>::grad_norm() const {
    double ss = 0;
    for (Real gv : grads) ss += (double)gv * gv;
    return std::sqrt(ss);
}

// ====================================================================================================
// Safetensors

size_t dtype_size(const std::string& dtype) {
    if (dtype == "F32" || dtype == "I32") return 4;
    if (dtype == "F64" || dtype == "I64") return 8;
    FLASH_FAIL("unsupported safetensors dtype '" << dtype << "'", "this program reads F32, F64, I32 and I64");
}

const SafeTensor* SafeTensorsFile::find(const std::string& name) const {
    for (const SafeTensor& t : tensors)
        if (t.name == name) return &t;
    return nullptr;
}

static std::string shape_str(const std::vector<int64_t>& shape) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + ")";
}

void safetensors_write(const std::string& path, const std::vector<SafeTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
    // Header: every tensor with its dtype, shape and [begin, end) byte range, plus __metadata__.
    json header = json::object();
    uint64_t offset = 0;
    for (const SafeTensor& t : tensors) {
        size_t n = dtype_size(t.dtype);
        for (int64_t dim : t.shape) n *= (size_t)dim;
        FLASH_CHECK(n == t.data.size(), "tensor '" << t.name << "' has " << t.data.size() << " bytes but shape "
                                                   << shape_str(t.shape) << " of " << t.dtype << " needs " << n,
                    "this is a bug in the caller");
        FLASH_CHECK(!header.contains(t.name), "tensor name '" << t.name << "' appears twice", "");
        header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
        offset += n;
    }
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::string text = header.dump();
    while (text.size() % 8 != 0) text += ' ';  // keeps the data 8-byte aligned
    const uint64_t header_len = text.size();

    // A name of this process's own: two writers of one path never share a temporary file.
    const std::string tmp = path + "." + std::to_string(getpid()) + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "wb");
    FLASH_CHECK(f, "cannot open '" << tmp << "' for writing: " << std::strerror(errno),
                "check that the directory exists and is writable");
    uint8_t len_bytes[8];
    for (int i = 0; i < 8; i++) len_bytes[i] = (uint8_t)(header_len >> (8 * i));  // little-endian
    bool ok = std::fwrite(len_bytes, 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
    for (const SafeTensor& t : tensors)
        ok = ok && (t.data.empty() || std::fwrite(t.data.data(), 1, t.data.size(), f) == t.data.size());
    ok = ok && std::fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = (std::fclose(f) == 0) && ok;
    if (!ok) {
        std::remove(tmp.c_str());
        FLASH_FAIL("writing '" << tmp << "' failed: " << std::strerror(errno), "check free disk space");
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        FLASH_FAIL("cannot rename '" << tmp << "' to '" << path << "': " << std::strerror(errno), "");
    }
}

SafeTensorsFile safetensors_read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    FLASH_CHECK(in, "cannot open '" << path << "': " << std::strerror(errno), "check the path");
    in.seekg(0, std::ios::end);
    const uint64_t file_size = (uint64_t)in.tellg();
    in.seekg(0);
    FLASH_CHECK(file_size >= 8, "'" << path << "' is not a safetensors file: only " << file_size << " bytes",
                "the file is truncated or of another kind");
    uint8_t len_bytes[8];
    in.read((char*)len_bytes, 8);
    uint64_t header_len = 0;
    for (int i = 0; i < 8; i++) header_len |= (uint64_t)len_bytes[i] << (8 * i);
    FLASH_CHECK(header_len <= file_size - 8 && header_len <= (100u << 20),
                "'" << path << "' has a bad safetensors header length " << header_len << " (file is " << file_size
                    << " bytes)",
                "the file is truncated or not a safetensors file");
    std::string text(header_len, '\0');
    in.read(text.data(), (std::streamsize)header_len);
    FLASH_CHECK(in, "cannot read the header of '" << path << "'", "the file is truncated");
    const json header = parse_json_bounded(text, "'" + path + "': the header", "the file is corrupt or not a safetensors file");
    FLASH_CHECK(header.is_object(), "'" << path << "' has a header that is not a JSON object",
                "the file is corrupt or not a safetensors file");
    const uint64_t data_size = file_size - 8 - header_len;

    SafeTensorsFile out;
    struct Range { uint64_t begin, end; std::string name; };
    std::vector<Range> ranges;
    for (auto it = header.begin(); it != header.end(); ++it) {
        if (it.key() == "__metadata__") {
            FLASH_CHECK(it->is_object(), "'" << path << "': __metadata__ is not a map of strings", "");
            for (auto mt = it->begin(); mt != it->end(); ++mt) {
                FLASH_CHECK(mt->is_string(), "'" << path << "': __metadata__ entry '" << clip_text(mt.key()) << "' is not a string", "");
                out.metadata[mt.key()] = mt->get<std::string>();
            }
            continue;
        }
        const json& e = *it;
        const std::string& name = it.key();
        FLASH_CHECK(e.is_object() && e.contains("dtype") && e.contains("shape") && e.contains("data_offsets") &&
                        e["dtype"].is_string() && e["shape"].is_array() && e["data_offsets"].is_array() &&
                        e["data_offsets"].size() == 2,
                    "'" << path << "': tensor '" << clip_text(name) << "' lacks a valid dtype, shape or data_offsets",
                    "the file is corrupt");
        SafeTensor t;
        t.name = name;
        t.dtype = e["dtype"].get<std::string>();
        size_t bytes = 0;
        try {
            bytes = dtype_size(t.dtype);
        } catch (const flash_error& ex) {
            FLASH_FAIL("'" << path << "': tensor '" << clip_text(name) << "': " << clip_text(ex.what(), 200), "the file is corrupt");
        }
        for (const json& dim : e["shape"]) {
            FLASH_CHECK(dim.is_number_integer() && dim.get<int64_t>() >= 0,
                        "'" << path << "': tensor '" << clip_text(name) << "' has a bad dimension " << json_excerpt(dim), "");
            t.shape.push_back(dim.get<int64_t>());
            FLASH_CHECK(t.shape.back() == 0 || bytes <= SIZE_MAX / (uint64_t)t.shape.back(),
                        "'" << path << "': tensor '" << clip_text(name) << "' has a shape of more than 2^64 bytes",
                        "the file is corrupt");
            bytes *= (size_t)t.shape.back();
        }
        const json& off = e["data_offsets"];
        FLASH_CHECK(off[0].is_number_unsigned() && off[1].is_number_unsigned(),
                    "'" << path << "': tensor '" << clip_text(name) << "' has bad data_offsets", "the file is corrupt");
        Range r{off[0].get<uint64_t>(), off[1].get<uint64_t>(), name};
        FLASH_CHECK(r.begin <= r.end && r.end <= data_size,
                    "'" << path << "': tensor '" << clip_text(name) << "' lies at bytes [" << r.begin << ", " << r.end
                        << ") but the data section has " << data_size << " bytes",
                    "the file is truncated");
        FLASH_CHECK(r.end - r.begin == bytes, "'" << path << "': tensor '" << clip_text(name) << "' has " << r.end - r.begin
                                                  << " bytes but its shape " << shape_str(t.shape) << " of " << t.dtype
                                                  << " needs " << bytes,
                    "the file is corrupt");
        ranges.push_back(r);
        out.tensors.push_back(std::move(t));
    }
    // The tensors must tile the data section exactly, without overlaps or holes.
    std::vector<Range> sorted = ranges;
    std::sort(sorted.begin(), sorted.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
    uint64_t expect = 0;
    for (const Range& r : sorted) {
        FLASH_CHECK(r.begin == expect, "'" << path << "': tensor '" << clip_text(r.name) << "' starts at byte " << r.begin
                                           << ", expected " << expect << " (overlap or hole)",
                    "the file is corrupt");
        expect = r.end;
    }
    FLASH_CHECK(expect == data_size, "'" << path << "': " << data_size - expect << " bytes after the last tensor",
                "the file is corrupt");
    // File order = order of data offsets.
    std::vector<SafeTensor> ordered;
    for (const Range& r : sorted)
        for (SafeTensor& t : out.tensors)
            if (t.name == r.name) {
                in.seekg((std::streamoff)(8 + header_len + r.begin));
                t.data.resize(r.end - r.begin);
                in.read((char*)t.data.data(), (std::streamsize)t.data.size());
                FLASH_CHECK(in || t.data.empty(), "cannot read tensor '" << clip_text(t.name) << "' of '" << path << "'",
                            "the file is truncated");
                ordered.push_back(std::move(t));
                break;
            }
    out.tensors = std::move(ordered);
    return out;
}

template <typename Real>
SafeTensor make_tensor(const std::string& name, const std::vector<int64_t>& shape, const Real* values,
                       const std::string& dtype) {
    SafeTensor t;
    t.name = name;
    t.dtype = dtype;
    t.shape = shape;
    size_t n = 1;
    for (int64_t dim : shape) n *= (size_t)dim;
    t.data.resize(n * dtype_size(dtype));
    if (dtype == "F32") {
        for (size_t i = 0; i < n; i++) {
            float v = (float)values[i];
            std::memcpy(t.data.data() + 4 * i, &v, 4);
        }
    } else if (dtype == "F64") {
        for (size_t i = 0; i < n; i++) {
            double v = (double)values[i];
            std::memcpy(t.data.data() + 8 * i, &v, 8);
        }
    } else {
        FLASH_FAIL("make_tensor: floating dtype expected, got " << dtype, "");
    }
    return t;
}

SafeTensor make_int_tensor(const std::string& name, const std::vector<int64_t>& shape, const int* values) {
    SafeTensor t;
    t.name = name;
    t.dtype = "I32";
    t.shape = shape;
    size_t n = 1;
    for (int64_t dim : shape) n *= (size_t)dim;
    t.data.resize(4 * n);
    for (size_t i = 0; i < n; i++) {
        int32_t v = values[i];
        std::memcpy(t.data.data() + 4 * i, &v, 4);
    }
    return t;
}

template <typename Real>
void read_tensor(const SafeTensor& t, const std::vector<int64_t>& shape, Real* out, const std::string& file) {
    FLASH_CHECK(t.shape == shape, "'" << file << "': tensor '" << t.name << "' has shape " << shape_str(t.shape)
                                      << ", the model expects " << shape_str(shape),
                "the checkpoint belongs to another model shape");
    const size_t n = t.data.size() / dtype_size(t.dtype);
    if (t.dtype == "F32") {
        for (size_t i = 0; i < n; i++) {
            float v;
            std::memcpy(&v, t.data.data() + 4 * i, 4);
            out[i] = (Real)v;
        }
    } else if (t.dtype == "F64") {
        for (size_t i = 0; i < n; i++) {
            double v;
            std::memcpy(&v, t.data.data() + 8 * i, 8);
            out[i] = (Real)v;
        }
    } else {
        FLASH_FAIL("'" << file << "': tensor '" << t.name << "' has dtype " << t.dtype << ", expected F32 or F64",
                   "the file was not written by this program");
    }
}

FlashConfig checkpoint_config(const SafeTensorsFile& f, const std::string& path) {
    auto it = f.metadata.find("config");
    FLASH_CHECK(it != f.metadata.end(), "'" << path << "' has no model config in its __metadata__",
                "it was not written by this program; FLASH.md section 7 says what a checkpoint holds");
    const json j = parse_json_bounded(it->second, "'" + path + "': the config in __metadata__", "the file is corrupt");
    try {
        return config_from_json(j);
    } catch (const flash_error& ex) {
        FLASH_FAIL("'" << path << "' holds a bad config: " << ex.what(), "the file is corrupt");
    }
}

template <typename Real>
std::vector<SafeTensor> param_tensors(const FlashModel<Real>& m, const std::vector<Real>& buf,
                                      const std::string& prefix, const std::string& dtype) {
    std::vector<SafeTensor> out;
    for (const TensorSpec& spec : m.specs)
        out.push_back(make_tensor(prefix + spec.name, spec.shape, buf.data() + spec.offset, dtype));
    return out;
}

template <typename Real>
void load_param_tensors(const FlashModel<Real>& m, std::vector<Real>& buf, const SafeTensorsFile& f,
                        const std::string& prefix, const std::string& path) {
    for (const TensorSpec& spec : m.specs) {
        const SafeTensor* t = f.find(prefix + spec.name);
        FLASH_CHECK(t, "'" << path << "' has no tensor '" << prefix + spec.name << "'",
                    "the file belongs to another model or was not written by this program");
        read_tensor(*t, spec.shape, buf.data() + spec.offset, path);
    }
    check_loaded_values(m, buf, prefix, path, /*nonnegative=*/prefix == "adam_v.");
}

template <typename Real>
void save_weights(const std::string& path, const FlashModel<Real>& m) {
    safetensors_write(path, param_tensors(m, m.params, "", "F32"), {{"config", config_to_json(m.cfg).dump()}});
}

template <typename Real>
void load_weights(const std::string& path, FlashModel<Real>& m) {
    SafeTensorsFile f = safetensors_read(path);
    FlashConfig c = checkpoint_config(f, path);
    std::string diff = config_shape_mismatch(c, m.cfg);
    FLASH_CHECK(diff.empty(), "'" << path << "' holds a model of another shape (file vs this model: " << diff << ")",
                "load it with its own config, or start a fresh model");
    // Read into a copy first, so that a failure leaves the model untouched.
    std::vector<Real> buf(m.params.size());
    load_param_tensors(m, buf, f, "", path);
    std::copy(buf.begin(), buf.end(), m.params.begin());
}

template <typename Real>
void write_debug_state(const std::string& path, FlashModel<Real>& m, const int* tokens, const int* targets, int B,
                       int T) {
    const std::string dtype = sizeof(Real) == 4 ? "F32" : "F64";
    m.forward(tokens, targets, B, T);
    m.zero_grad();
    m.backward();
    std::vector<SafeTensor> t;
    t.push_back(make_int_tensor("batch.tokens", {B, T}, tokens));
    t.push_back(make_int_tensor("batch.targets", {B, T}, targets));
    double loss = m.loss;
    t.push_back(make_tensor("loss", {1}, &loss, dtype));
    for (SafeTensor& x : param_tensors(m, m.params, "", dtype)) t.push_back(std::move(x));
    for (SafeTensor& x : param_tensors(m, m.grads, "grad.", dtype)) t.push_back(std::move(x));
    safetensors_write(path, t, {{"config", config_to_json(m.cfg).dump()}, {"kind", "flash debug state"}});
}

// ====================================================================================================
// Explicit instantiations: float trains, double checks gradients.

#define FLASH_INSTANTIATE(Real)                                                                                        \
    template ParamView<Real> view_params(Real*, const FlashConfig&);                                                   \
    template void view_activations(Acts<Real>&, GradActs<Real>&, Real*, Real*, const FlashConfig&, int, int);          \
    template void encoder_forward(Real*, const int*, const Real*, int, int);                                           \
    template void encoder_backward(Real*, const Real*, const int*, int, int);                                          \
    template void scalenorm_forward(Real*, Real*, const Real*, const Real*, int, int, double);                         \
    template void scalenorm_backward(Real*, Real*, const Real*, const Real*, const Real*, const Real*, int, int);      \
    template void matmul_forward(Real*, const Real*, const Real*, const Real*, int, int, int);                         \
    template void matmul_backward(Real*, Real*, Real*, const Real*, const Real*, const Real*, int, int, int);          \
    template void silu_forward(Real*, const Real*, size_t);                                                            \
    template void silu_backward(Real*, const Real*, const Real*, size_t);                                              \
    template void offset_scale_forward(Real*, Real*, Real*, Real*, const Real*, int, const Real*, const Real*, int,    \
                                       int);                                                                           \
    template void offset_scale_backward(Real*, int, Real*, Real*, const Real*, const Real*, const Real*, const Real*,  \
                                        const Real*, int, const Real*, int, int);                                      \
    template void rope_forward(Real*, const double*, const double*, int, int, int);                                    \
    template void rope_backward(Real*, const double*, const double*, int, int, int);                                   \
    template void local_attention_forward(Real*, Real*, const Real*, const Real*, const Real*, int, const Real*, int,  \
                                          int, int, int, int, bool);                                                   \
    template void local_attention_backward(Real*, Real*, Real*, int, Real*, const Real*, const Real*, const Real*,      \
                                           const Real*, const Real*, int, int, int, int, int, int, bool);              \
    template void global_attention_forward(Real*, Real*, const Real*, const Real*, const Real*, int, int, int, int,    \
                                           int, int, bool);                                                            \
    template void global_attention_backward(Real*, Real*, Real*, int, const Real*, const Real*, const Real*,           \
                                            const Real*, const Real*, int, int, int, int, int, int, bool);             \
    template void gate_forward(Real*, const Real*, int, const Real*, int, int);                                        \
    template void gate_backward(Real*, int, Real*, const Real*, const Real*, int, const Real*, int, int);              \
    template void residual_forward(Real*, const Real*, size_t);                                                        \
    template void logits_forward(Real*, const Real*, const Real*, int, int, int);                                      \
    template void logits_backward(Real*, Real*, const Real*, const Real*, const Real*, int, int, int);                 \
    template double crossentropy_forward(Real*, Real*, const Real*, const int*, int, int);                             \
    template void crossentropy_backward(Real*, const Real*, const int*, int, int);                                     \
    template struct FlashModel<Real>;                                                                                  \
    template SafeTensor make_tensor(const std::string&, const std::vector<int64_t>&, const Real*, const std::string&); \
    template void read_tensor(const SafeTensor&, const std::vector<int64_t>&, Real*, const std::string&);              \
    template std::vector<SafeTensor> param_tensors(const FlashModel<Real>&, const std::vector<Real>&,                  \
                                                   const std::string&, const std::string&);                            \
    template void load_param_tensors(const FlashModel<Real>&, std::vector<Real>&, const SafeTensorsFile&,              \
                                     const std::string&, const std::string&);                                          \
    template void save_weights(const std::string&, const FlashModel<Real>&);                                           \
    template void load_weights(const std::string&, FlashModel<Real>&);                                                 \
    template void write_debug_state(const std::string&, FlashModel<Real>&, const int*, const int*, int, int);

FLASH_INSTANTIATE(float)
FLASH_INSTANTIATE(double)
