// flash.h: the FLASH language model (Hua et al. 2022, "Transformer Quality in Linear Time"), CPU reference.
//
// The method is defined in docs/FLASH.md; section numbers below (§1, §2, ...) refer to it. This file holds FLASH and
// nothing else: what another architecture would reuse is in ops.h, the file formats are in formats/, and the model
// interface every architecture implements is model.h.
//   - FlashConfig: the model shape (§5); its JSON form is formats/config.h;
//   - the index rules of chunked attention, shared with the CUDA kernels and the decoder;
//   - the parameter layout (§7) and the activation layout: one flat buffer each, viewed through structs of pointers;
//   - FLASH's own ops (§1 forward, §2 backward): offset-scale, local (quadratic) and global (linear) chunk attention;
//   - FlashModel: forward to the loss, backward to every gradient (its buffers and AdamW are model.h's HostModel);
//     and its FLOPs per token (§4).
// Read flash.cpp top to bottom next to this file: every op's shapes are documented there.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common.h"
#include "model.h"
#include "ops.h"
#include "rng.h"

// ----------------------------------------------------------------------------------------------------
// Chunks and the relative-position bias (§1): the index rules, stated once for the CPU, the CUDA kernels and the
// decoder. A batch of B rows of T = G·C tokens has B·G chunks; chunk bg = b·G + g of batch row b starts at row
// b·T + g·C = bg·C.

FLASH_HD inline size_t chunk_first_row(int bg, int C) { return (size_t)bg * C; }
// Bias entries per layer: w[a−b] for 0 ≤ a−b < C (causal), or −C < a−b < C (non-causal).
FLASH_HD inline int rel_bias_count(int C, bool causal) { return causal ? C : 2 * C - 1; }
// The entry for query a and key b of one chunk; its inverse gives a−b for entry k.
FLASH_HD inline int rel_bias_index(int a, int b, int C, bool causal) { return causal ? a - b : a - b + C - 1; }
FLASH_HD inline int rel_bias_offset(int k, int C, bool causal) { return causal ? k : k - (C - 1); }

// ----------------------------------------------------------------------------------------------------
// Configuration (§5)

struct FlashConfig {
    int vocab_size = 4096;   // V
    int d = 256;             // model width
    int e = 512;             // expanded width (paper: 2d)
    int s = 128;             // shared query/key width; even, for RoPE
    int n_layers = 8;        // L
    int chunk = 128;         // C
    int seq_len = 512;       // T used for training; a multiple of C
    bool causal = true;      // false: the non-causal (masked-LM) variant of §1
    double eps = 1e-6;       // scalenorm epsilon
    double rope_base = 10000.0;

    int inner() const { return 2 * e + s; }                  // width of the fused projection: [u | v | z]
    int n_rel_bias() const { return rel_bias_count(chunk, causal); }
};

FlashConfig config_preset(const std::string& name);        // "tiny", "small" or "base" (§5)
void config_validate(const FlashConfig& c);                 // throws, naming the bad field

// FLASH.md §4: forward FLOPs per token (a training step is about 3× that). The local part is counted at full C (as is
// customary, although the causal kernels skip the upper half); the global part is counted even when C = T.
double forward_flops_per_token(const FlashConfig& c);
// The part of that count the CPU code performs for sequences of T tokens: causal, it skips the local blocks above
// each chunk's diagonal and the global products of each sequence's first and last chunks, which are zero (§4).
double forward_flops_done_per_token(const FlashConfig& c, int T);

// ----------------------------------------------------------------------------------------------------
// Parameters (§7): names, shapes and places in the flat buffer, in checkpoint order.

std::vector<TensorSpec> param_specs(const FlashConfig& c);  // wte, layers.{l}.{norm.g,w_in,...}, norm_f.g
size_t param_count(const FlashConfig& c);

template <typename Real>
struct LayerParams {
    Real* norm_g;    // (1)          scalenorm gain
    Real* w_in;      // (d, 2e+s)    fused input projection
    Real* b_in;      // (2e+s)
    Real* gamma;     // (4, s)       offset-scale gains, rows qq, kq, ql, kl
    Real* beta;      // (4, s)       offset-scale offsets
    Real* rel_bias;  // (C) causal, (2C-1) non-causal
    Real* w_out;     // (e, d)
    Real* b_out;     // (d)
};
template <typename Real>
struct ParamView {
    Real* wte;       // (V, d), tied with the output logits
    std::vector<LayerParams<Real>> layers;
    Real* norm_f_g;  // (1)
};
// base may be a device pointer: this is pointer arithmetic only. Made by the same walk as param_specs.
template <typename Real>
ParamView<Real> view_params(Real* base, const FlashConfig& c);

// ----------------------------------------------------------------------------------------------------
// Activations saved by the forward pass for the backward pass, in one flat buffer. N = B*T rows.

template <typename Real>
struct LayerActs {
    Real* x;       // (N, d)        layer input: the residual stream
    Real* rstd;    // (N)           1 / sqrt(mean(x²) + eps)
    Real* xn;      // (N, d)        scalenorm(x)
    Real* h;       // (N, 2e+s)     xn · W_in + b_in, in two planes (vz_plane); act = silu(h) is not kept per layer
    Real* qq;      // (N, s)        the four offset-scale heads, after RoPE
    Real* kq;
    Real* ql;
    Real* kl;
    Real* relu_s;  // (B, G, C, C)  relu(S) per chunk, 0 where masked; A = relu_s²
    Real* m;       // (B, G, s, e)  M[g], the (exclusive, if causal) prefix sum of P over chunks
    Real* o;       // (N, e)        quad + lin
    Real* gated;   // (N, e)        u ⊙ o
};
template <typename Real>
struct Acts {
    std::vector<LayerActs<Real>> layers;
    // (N, 2e+s)  act = silu(h) of ONE layer, laid out as h: the forward overwrites it layer after layer, and the
    // backward recomputes it from the layer's h before differentiating the layer (but the last layer's, which the
    // forward leaves: FlashModel::act_layer). One SiLU pass per layer costs little; keeping it for every layer would
    // cost L·N·(2e+s) values, about a fifth of the activations. The CPU fills only its [v | z] plane: u goes straight
    // from h into the gate (silu_gate_forward).
    Real* act;
    Real* x_final;  // (N, d)   output of the last layer
    Real* rstd_f;   // (N)
    Real* xn_f;     // (N, d)
    Real* logits;   // (N, V)
    Real* probs;    // (N, V)   softmax(logits)
    Real* losses;   // (N)      per-position cross-entropy
};
// Gradients with respect to activations: one layer's worth, reused layer after layer.
template <typename Real>
struct GradActs {
    Real* dres;     // (N, d)     gradient of the residual stream at the current layer boundary
    Real* dxn;      // (N, d)
    Real* dh;       // (N, 2e+s)  laid out as h
    Real* dact;     // (N, 2e+s)  laid out as h: [du | dv | dz] (the CPU leaves the du plane unused)
    Real* dqq;      // (N, s)
    Real* dkq;
    Real* dql;
    Real* dkl;
    Real* d_o;      // (N, e)
    Real* dgated;   // (N, e)
    Real* dlogits;  // (N, V)
};

// The two activation buffers for a batch of B rows of T tokens: their sizes in elements, and the views into
// them (in the order of the structs above). Shared by the CPU and GPU models, so both lay memory out alike; both
// come from one list of the tensors (flash.cpp: activation_slots), so they cannot disagree.
void activation_counts(const FlashConfig& c, int B, int T, size_t* n_act, size_t* n_grad);
template <typename Real>
void view_activations(Acts<Real>& acts, GradActs<Real>& dacts, Real* act_base, Real* grad_base, const FlashConfig& c,
                      int B, int T);

// The CPU keeps h, act = silu(h) and their gradients in two planes: u (N, e), then [v | z] (N, e+s) at vz_plane.
// Passes over one of them (the gate reads u; the heads, attention and the SiLU recompute [v | z]) then stream
// memory of their own: a pass over a part of each row of [u | v | z] cost as much as one over the whole rows. W_in
// keeps its columns [u | v | z]; each plane is the product with its block of columns. (The GPU keeps rows.)
template <typename Real> Real* vz_plane(Real* h, int N, int e) { return h + (size_t)N * e; }  // Real may be const

// ----------------------------------------------------------------------------------------------------
// FLASH's own ops (§1, §2); the shared ones are in ops.h. Argument order: outputs, saved activations, inputs,
// parameters, sizes. Backward passes accumulate (+=) into every d... argument. Shapes are documented in flash.cpp.

template <typename Real> void offset_scale_forward(Real* qq, Real* kq, Real* ql, Real* kl, const Real* z, int ldz,
                                                   const Real* gamma, const Real* beta, int N, int s);
template <typename Real> void offset_scale_backward(Real* dz, int lddz, Real* dgamma, Real* dbeta, const Real* dqq,
                                                    const Real* dkq, const Real* dql, const Real* dkl, const Real* z,
                                                    int ldz, const Real* gamma, int N, int s);

// The elementwise work between the input projection and the attention, on the [v | z] plane, forward fused row by
// row (each row of h is read once and its heads are made while it is in cache), backward in two passes (flash.cpp
// says why):
//   act = silu(h) = [v | z];   head_i = rope(z ⊙ γ[i] + β[i]) for the heads i = qq, kq, ql, kl
// The unfused sequence (silu_forward, offset_scale_forward, rope_forward ×4, and their backward ops) is the naive
// version the tests compare these with.
template <typename Real> void gau_rows_forward(Real* act, Real* qq, Real* kq, Real* ql, Real* kl, const Real* h,
                                               const Real* gamma, const Real* beta, const double* cos_t,
                                               const double* sin_t, int N, int T, int e, int s);
template <typename Real> void gau_rows_backward(Real* dh, Real* dgamma, Real* dbeta, Real* dact, Real* dqq, Real* dkq,
                                                Real* dql, Real* dkl, const Real* h, const Real* act,
                                                const Real* gamma, const double* cos_t, const double* sin_t, int N,
                                                int T, int e, int s);

// The gate with u's SiLU, on the u plane: gated = silu(h_u) ⊙ o. Naive version: silu_forward, then gate_forward.
template <typename Real> void silu_gate_forward(Real* gated, const Real* h_u, const Real* o, int N, int e);
template <typename Real> void silu_gate_backward(Real* dh_u, Real* d_o, const Real* dgated, const Real* h_u,
                                                 const Real* o, int N, int e);

// Causal chunks are computed in blocks of row_block rows that skip the masked products above the diagonal
// (flash.cpp); row_block = C is the plain version, one product over the whole chunk, that the tests compare with.
// Small config, 2 threads, a layer's local attention forward and backward: 11.5 ms in whole chunks, 9.4 in blocks of
// 64 rows, 8.8-8.9 in blocks of 32 or 48, 8.7-9.0 in blocks of 16 (more, smaller products for no gain).
constexpr int kLocalRowBlock = 32;
template <typename Real> void local_attention_forward(Real* o, Real* relu_s, const Real* qq, const Real* kq, const Real* v,
                                                      int ldv, const Real* rel_bias, int B, int T, int C, int s, int e,
                                                      bool causal, int row_block = kLocalRowBlock);
template <typename Real> void local_attention_backward(Real* dqq, Real* dkq, Real* dv, int lddv, Real* drel_bias,
                                                       const Real* d_o, const Real* relu_s, const Real* qq,
                                                       const Real* kq, const Real* v, int ldv, int B, int T, int C,
                                                       int s, int e, bool causal, int row_block = kLocalRowBlock);

template <typename Real> void global_attention_forward(Real* o, Real* m, const Real* ql, const Real* kl, const Real* v,
                                                       int ldv, int B, int T, int C, int s, int e, bool causal);
template <typename Real> void global_attention_backward(Real* dql, Real* dkl, Real* dv, int lddv, const Real* d_o,
                                                        const Real* m, const Real* ql, const Real* kl, const Real* v,
                                                        int ldv, int B, int T, int C, int s, int e, bool causal);

// ----------------------------------------------------------------------------------------------------
// The model

// A batch the model can take: B, T > 0, T a multiple of C, every token id in [0, V), every target id in [0, V) or
// kIgnoreTarget (targets may be null). Throws naming the first problem. Shared by the CPU and GPU models.
void check_batch(const FlashConfig& cfg, const int* tokens, const int* targets, int B, int T);

// Paper initialisation (§1) of a parameter buffer viewed by p; strong = true is the tests' initialisation far from
// the identity, so that bugs show (§1): γ ~ N(1, 0.5), β, w ~ N(0, 0.5), unit-gain matrices, random biases and gains.
// The same numbers on every device: the GPU model draws them on the host with this and copies them over.
template <typename Real>
void init_flash_weights(const ParamView<Real>& p, const FlashConfig& cfg, uint64_t seed, bool strong);

// FLASH on the CPU: the reference implementation of the Model interface (model.h). The buffers (params, grads,
// adam_m, adam_v, specs) and the verbs on them alone are HostModel's.
template <typename Real>
struct FlashModel final : HostModel<Real> {
    FlashConfig cfg;
    ParamView<Real> p, dp;                             // named views of params and grads
    // Batch-dependent state, (re)allocated by forward when B or T change.
    int B = 0, T = 0;
    std::vector<Real> act_buf, grad_act_buf;
    Acts<Real> acts{};
    GradActs<Real> dacts{};
    int act_layer = -1;                                // the layer whose silu(h) acts.act holds (-1: none)
    std::vector<double> rope_cos, rope_sin;            // (T, s/2)
    std::vector<int> tokens, targets;                  // the batch of the last forward
    double loss = 0;                                   // mean loss over the scored targets of the last forward
                                                       // (0 when none is scored, NaN without targets)

    explicit FlashModel(const FlashConfig& c);

    // The Model interface (model.h says what each verb does).
    std::string arch() const override { return "flash"; }
    nlohmann::json config_json() const override;
    std::string shape_mismatch(const nlohmann::json& config) const override;
    double forward_flops_per_token() const override { return ::forward_flops_per_token(cfg); }
    void init_weights(uint64_t seed, bool strong = false) override;
    double forward(const int* tokens, const int* targets, int B, int T) override;
    void backward() override;

    // Frees the forward activations (act_buf, grad_act_buf), which a long prefill leaves behind (≈ 12 GB for a
    // 64K-token prompt in the small config) and decoding never reads; the next forward lays them out afresh.
    void release_activations();
};
