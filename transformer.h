// transformer.h: the baselines Transformer++, Performer and Combiner (BASELINES.md §1, §2, §3, §6), CPU reference.
//
// One block for all three: the Transformer++ block, whose attention is softmax (Transformer++), FAVOR+ linear
// attention (Performer) or Combiner-Fixed (Combiner, combiner.h). The same engine as FLASH (flash.h): the embedding,
// RoPE, SiLU, products, residual, tied logits, cross-entropy and AdamW are the shared ops of ops.h, called, not
// copied. What is new lives here:
//   - TransformerConfig: the BASELINES.md §6 keys (their JSON form is formats/config.h), every field checked;
//   - the parameter layout: one spec table in checkpoint order (BASELINES.md §6), one flat buffer. Ω
//     (layers.{l}.omega, Performer only) is in it, marked not trained (TensorSpec::trained): no gradient, no
//     moments, no decay;
//   - the new ops (forward/backward pairs, templated on the scalar type; shapes in transformer.cpp): RMSNorm with
//     a vector gain, head split/merge, softmax attention with a saved log-sum-exp, SwiGLU, the FAVOR+ feature
//     map, linear attention computed chunk by chunk;
//   - TransformerModel: the Model interface (model.h) for the three archs; make_model picks it by "arch".
// Head layout: q, k, v and the attention output are (B, H, T, h), head-major, so that every head is one
// contiguous (T, h) matrix for BLAS, and FLASH's rope_forward (row n at position n mod T) rotates them as they are.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "flash.h"
#include "model.h"

// ----------------------------------------------------------------------------------------------------
// Configuration (BASELINES.md §1, BASELINES.md §2, BASELINES.md §3, BASELINES.md §6)

struct TransformerConfig {
    std::string arch = "transformer++";  // or "performer" or "combiner"
    int vocab_size = 4096;               // V
    int d = 256;                         // model width
    int n_layers = 4;                    // blocks
    int n_heads = 4;                     // H; head width h = d/H, even (RoPE)
    int ffn = 768;                       // f
    int features = 256;                  // m, Performer only (default 4h)
    int block = 128;                     // c, Combiner only: the span; T a multiple of it in training
    int seq_len = 512;                   // T used for training
    bool causal = true;                  // false: the non-causal (masked-LM) variant
    double eps = 1e-6;                   // RMSNorm epsilon
    double rope_base = 10000.0;

    int head_dim() const { return d / n_heads; }
    bool performer() const { return arch == "performer"; }
    bool combiner() const { return arch == "combiner"; }
};

// The archs this class implements.
inline bool is_transformer_arch(const std::string& arch) {
    return arch == "transformer++" || arch == "performer" || arch == "combiner";
}
// "tiny" (tests) or "small" (matched to FLASH small: 4 blocks, 4 heads of 64, f = 768), for arch
// "transformer++", "performer" or "combiner".
TransformerConfig transformer_preset(const std::string& name, const std::string& arch);
void transformer_config_validate(const TransformerConfig& c);       // throws, naming the bad field
// Forward FLOPs per token (the attention as BASELINES.md §1-§3 count it, at T = seq_len; a step is about 3×).
double transformer_forward_flops_per_token(const TransformerConfig& c);

// ----------------------------------------------------------------------------------------------------
// Parameters (BASELINES.md §6), in checkpoint order: wte, then per block attn_norm.g, ffn_norm.g, w_qkv, w_o, w_13,
// w_2, [omega], then norm_f.g; one flat buffer (grads, adam_m, adam_v mirror it; Ω's entries there stay zero).

std::vector<TensorSpec> transformer_param_specs(const TransformerConfig& c);
size_t transformer_param_count(const TransformerConfig& c);  // trained elements
size_t transformer_fixed_count(const TransformerConfig& c);  // elements that are not trained (Ω)

template <typename Real>
struct BlockParams {
    Real* attn_norm_g;  // (d)
    Real* ffn_norm_g;   // (d)
    Real* w_qkv;        // (d, 3d)  columns [q | k | v]
    Real* w_o;          // (d, d)
    Real* w_13;         // (d, 2f)  columns [gate | up]
    Real* w_2;          // (f, d)
    Real* omega;        // (m, h)   Performer only, not trained; null in a view of the gradients
};
template <typename Real>
struct TransformerParamView {
    Real* wte;          // (V, d), tied with the output logits
    std::vector<BlockParams<Real>> layers;
    Real* norm_f_g;     // (d)
};
// base: the params (or grads) buffer. with_fixed = false (the gradients): the omega pointers stay null.
template <typename Real>
TransformerParamView<Real> view_transformer_params(Real* base, const TransformerConfig& c, bool with_fixed);

// ----------------------------------------------------------------------------------------------------
// Activations saved by the forward pass, one flat buffer; N = B*T rows. Pointers of the other arch are null.

template <typename Real>
struct BlockActs {
    Real* x;         // (N, d)       block input: the residual stream
    Real* rstd_a;    // (N)          1 / sqrt(mean(x²) + eps)
    Real* xn_a;      // (N, d)       rmsnorm_a(x)
    Real* qkv;       // (N, 3d)      xn_a · W_qkv
    Real* q;         // (B, H, T, h) heads, rotated (RoPE)
    Real* k;         // (B, H, T, h) rotated
    Real* v;         // (B, H, T, h)
    Real* lse;       // (B, H, T)    Transformer++: log Σ_b exp S[a,b], so backward recomputes P in O(T) memory
    Real* phq;       // (B, H, T, m) Performer: φ(q)
    Real* phk;       // (B, H, T, m) Performer: φ(k)
    Real* den;       // (B, H, T)    Performer: Σ_b φ(q[a])·φ(k[b])
    Real* comb;      // Combiner: what its attention saves (combiner.h: CombinerSaved, heads as B·H sequences)
    Real* oh;        // (B, H, T, h) attention output per head
    Real* o;         // (N, d)       heads merged
    Real* x_mid;     // (N, d)       x + o · W_o
    Real* rstd_f;    // (N)
    Real* xn_f;      // (N, d)       rmsnorm_f(x_mid)
    Real* gu;        // (N, 2f)      xn_f · W_13 = [gate | up]
    Real* sg;        // (N, f)       silu(gate)
    Real* z;         // (N, f)       silu(gate) ⊙ up
};
template <typename Real>
struct TransformerActs {
    std::vector<BlockActs<Real>> layers;
    Real* x_final;   // (N, d)
    Real* rstd_f;    // (N)
    Real* xn_f;      // (N, d)
    Real* logits;    // (N, V)
    Real* probs;     // (N, V)
    Real* losses;    // (N)
};
// Gradients with respect to activations: one block's worth, reused block after block.
template <typename Real>
struct TransformerGradActs {
    Real* dres;      // (N, d)       gradient of the residual stream at the current boundary
    Real* dxn;       // (N, d)       scratch from here to dlogits: zeroed per block
    Real* dqkv;      // (N, 3d)
    Real* dq;        // (B, H, T, h)
    Real* dk;
    Real* dv;
    Real* dphq;      // (B, H, T, m) Performer
    Real* dphk;
    Real* doh;       // (B, H, T, h)
    Real* d_o;       // (N, d)
    Real* dgu;       // (N, 2f)
    Real* dz;        // (N, f)
    Real* dlogits;   // (N, V)
};
// Lays out both buffers (null bases: only counts) and returns their sizes in elements.
template <typename Real>
void view_transformer_activations(TransformerActs<Real>& acts, TransformerGradActs<Real>& dacts, Real* act_base,
                                  Real* grad_base, const TransformerConfig& c, int B, int T, size_t* n_act,
                                  size_t* n_grad);

// ----------------------------------------------------------------------------------------------------
// The new ops. Argument order: outputs, saved activations, inputs, parameters, sizes. Backward passes
// accumulate (+=) into every d... argument. BH = B*H heads of T rows each.

template <typename Real> void rmsnorm_forward(Real* y, Real* rstd, const Real* x, const Real* g, int N, int d,
                                              double eps);
template <typename Real> void rmsnorm_backward(Real* dx, Real* dg, const Real* dy, const Real* x, const Real* rstd,
                                               const Real* g, int N, int d);

template <typename Real> void split_heads_forward(Real* y, const Real* x, int ldx, int B, int T, int H, int hd);
template <typename Real> void split_heads_backward(Real* dx, int lddx, const Real* dy, int B, int T, int H, int hd);
template <typename Real> void merge_heads_forward(Real* y, const Real* x, int B, int T, int H, int hd);
template <typename Real> void merge_heads_backward(Real* dx, const Real* dy, int B, int T, int H, int hd);

template <typename Real> void softmax_attention_forward(Real* o, Real* lse, const Real* q, const Real* k, const Real* v,
                                                        int BH, int T, int hd, bool causal);
template <typename Real> void softmax_attention_backward(Real* dq, Real* dk, Real* dv, const Real* d_o, const Real* lse,
                                                         const Real* q, const Real* k, const Real* v, int BH, int T,
                                                         int hd, bool causal);

template <typename Real> void swiglu_forward(Real* z, Real* sg, const Real* gu, int N, int f);
template <typename Real> void swiglu_backward(Real* dgu, const Real* dz, const Real* gu, const Real* sg, int N, int f);

// Ω (m, h), BASELINES.md §2: ⌈m/h⌉ blocks of h orthonormal rows (Gram–Schmidt in double), row norms χ_h.
void draw_omega(double* omega, int m, int hd, Rng& rng);
// u = Ω x̃ − |x̃|²/2, x̃ = x / h^(1/4): the exponent of every feature of every row. u (n_rows, m), x (n_rows, h).
template <typename Real> void favor_exponents_forward(Real* u, const Real* x, const Real* omega, int n_rows, int hd,
                                                      int m);
// φ = exp(u − c) / sqrt(m) in place, n values (rows of m features) sharing one stabiliser c.
template <typename Real> void favor_exp(Real* phi, Real c, size_t n, int m);
// φ = favor_exp(favor_exponents_forward(x), c) with c the largest exponent of its group of rows.
// rows_per_max: how many consecutive rows share one stabiliser c (1 for queries, T for keys: one per sequence
// and head). stabilise = false sets c = 0 (the tests' check that c cancels).
template <typename Real> void favor_features_forward(Real* phi, const Real* x, const Real* omega, int n_rows,
                                                     int rows_per_max, int hd, int m, bool stabilise);
template <typename Real> void favor_features_backward(Real* dx, const Real* dphi, const Real* phi, const Real* x,
                                                      const Real* omega, int n_rows, int hd, int m);

// chunk: Cp, the causal chunk size (a speed knob, not part of the model; any Cp ≥ 1, need not divide T).
template <typename Real> void linear_attention_forward(Real* o, Real* den, const Real* phq, const Real* phk,
                                                       const Real* v, int BH, int T, int hd, int m, int chunk,
                                                       bool causal);
template <typename Real> void linear_attention_backward(Real* dphq, Real* dphk, Real* dv, const Real* d_o,
                                                        const Real* o, const Real* den, const Real* phq,
                                                        const Real* phk, const Real* v, int BH, int T, int hd, int m,
                                                        int chunk, bool causal);

// ----------------------------------------------------------------------------------------------------
// The model

// A batch the model can take: B, T > 0 (Combiner: T a multiple of block), ids as ops.h: check_token_ids.
void check_transformer_batch(const TransformerConfig& cfg, const int* tokens, const int* targets, int B, int T);

// Transformer++, Performer and Combiner on the CPU: the Model interface (model.h). The buffers (params, grads,
// adam_m, adam_v in the layout of specs; Ω included, in params only) and the verbs on them alone are HostModel's;
// its adamw_update skips Ω (not trained).
template <typename Real>
struct TransformerModel final : HostModel<Real> {
    TransformerConfig cfg;
    TransformerParamView<Real> p, dp;                 // named views (dp's omega pointers are null)
    // Not part of the model: Performer's causal chunk size, and the FAVOR+ stabilisers (on; the tests turn them
    // off to show that they cancel).
    int performer_chunk = 64;
    bool favor_stabilise = true;
    // Batch-dependent state, (re)allocated by forward when B or T change.
    int B = 0, T = 0;
    std::vector<Real> act_buf, grad_act_buf;
    TransformerActs<Real> acts{};
    TransformerGradActs<Real> dacts{};
    std::vector<double> rope_cos, rope_sin;  // (T, h/2)
    std::vector<int> tokens, targets;
    double loss = 0;                         // mean loss of the last forward (NaN without targets)

    explicit TransformerModel(const TransformerConfig& c);

    // The Model interface (model.h says what each verb does).
    std::string arch() const override { return cfg.arch; }
    nlohmann::json config_json() const override;
    std::string shape_mismatch(const nlohmann::json& config) const override;
    double forward_flops_per_token() const override { return transformer_forward_flops_per_token(cfg); }
    // BASELINES.md §1: W, wte ~ N(0, 0.02), every g = 1. strong = true (tests): wte ~ N(0, 0.3), matrices of
    // unit gain N(0, 1/fan_in), gains ~ N(1, 0.2). Ω (BASELINES.md §2) is drawn after the trained tensors from the
    // same Rng, so a Transformer++ and a Performer of one seed start from the same trained weights.
    void init_weights(uint64_t seed, bool strong = false) override;
    double forward(const int* tokens, const int* targets, int B, int T) override;
    void backward() override;
};
