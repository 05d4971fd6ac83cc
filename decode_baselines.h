// decode_baselines.h: cached decoding of the baselines (BASELINES.md §1-§3), in the style of decode.h (FLASH's).
//
// One token at a time through the Transformer++ block (BASELINES.md §1: RMSNorm, fused q|k|v, RoPE, attention, W_o,
// SwiGLU), computing what the full causal forward computes at that position. Only the attention keeps a cache, and
// it is what sets each architecture's cost per token:
//   softmax  (Transformer++)  the rotated k and v of every earlier position          O(d·t) per token and layer
//   favor    (Performer)      per head S = Σ_b φ(k_b)ᵀ [v_b | 1]  (m, h+1)            O(d·m) per token and layer
//            the key stabiliser c is a running maximum of the key exponents; when a key raises it, S is rescaled
//            by exp(c_old − c_new), so that S always holds exp(u − c)/sqrt(m) of every key (c cancels: exact)
//   combiner (Combiner)       k̂, v̂ of every finished span, rows of the current one    O(d·(c + t/c)) per token
//            (CombinerCache, combiner.h)
//
//   BaselineDecodeState<float> st;
//   decode_init(st, model);                            // model: a causal TransformerModel<float>
//   decode_prefill(model, st, prompt, n, logits);      // the prompt
//   for (...) { decode_step(model, st, tok, logits); } // one token in, the next token's logits out
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "combiner.h"
#include "decode.h"
#include "transformer.h"

// Which attention a baseline decodes with. The Combiner has exactly the Transformer++ tensors (BASELINES.md §3,
// §6), so a TransformerModel's weights with the combiner attention ARE a Combiner model.
struct BaselineAttention {
    enum Kind { softmax, favor, combiner } kind = softmax;
    int block = 0;  // c, combiner only
};
// The one place a config's arch picks the decoder's attention.
BaselineAttention baseline_attention(const TransformerConfig& c);

// One layer's cache; only the attention's own fields are used.
template <typename Real>
struct BaselineLayerCache {
    std::vector<Real> k, v;             // softmax: (pos, d) rotated keys and values, token rows, head i in columns i·h
    std::vector<double> sums;           // favor: (H, m, h+1) Σ_b exp(u_b − key_max)/sqrt(m) ⊗ [v_b | 1], in double
    std::vector<Real> key_max;          // favor: (H) running maximum of the key exponents u (BASELINES.md §2)
    int64_t rescales = 0;               // favor: how many times a key raised key_max and the sums were rescaled
    std::vector<CombinerCache<Real>> combiner;  // combiner: one cache for the layer's H heads (0 or 1 element)
};

template <typename Real>
struct BaselineDecodeState {
    TransformerConfig cfg;                         // the model's, checked on every call
    BaselineAttention attention;
    int64_t pos = 0;                               // tokens consumed = position of the next token
    int64_t max_positions = 0;                     // tokens the decoder may hold (decode_init)
    std::vector<BaselineLayerCache<Real>> layers;  // (L)
    // Scratch for one token, kept here so that a step allocates nothing (beyond the KV cache's growth).
    std::vector<double> rope_cos, rope_sin;        // (h/2) angles of the current position
    std::vector<Real> x, x_mid, xn, qkv, o, gu, sg, z;  // (d) x4, (3d), (d), (2f), (f) x2
    std::vector<Real> scores;                      // softmax: (pos+1) one head's scores, then probabilities
    std::vector<Real> phq, uk;                     // favor: (H, m) φ(q) and the key exponents
    std::vector<double> num;                       // favor: (h+1) [numerator | denominator] of one head
    Real rstd = 0;                                 // rmsnorm's saved 1/rms, unused here

    // Bytes held by the caches (what grows with t for Transformer++, and with t/c for the Combiner).
    size_t cache_bytes() const;
};

// Sizes the state for the model and empties it (position 0), decoding with baseline_attention(model.cfg), or with
// `attention` (the tests' and the benchmark's Combiner from Transformer++ weights). A non-causal model is refused.
// max_positions: the most tokens the state may hold (0: the attention's limit, 2^31 − 1 for the KV cache, whose
// products take int sizes; unlimited otherwise); decoding beyond it is an error that changes nothing.
template <typename Real>
void decode_init(BaselineDecodeState<Real>& state, const TransformerModel<Real>& model, int64_t max_positions = 0);
template <typename Real>
void decode_init(BaselineDecodeState<Real>& state, const TransformerModel<Real>& model, BaselineAttention attention,
                 int64_t max_positions = 0);

// Feeds tokens[0..n) and writes the logits after the last one to logits_out (V), if not null. From position 0,
// Transformer++ and Performer run the prompt through TransformerModel::forward (which overwrites the model's
// activations; it holds O(n²) memory for Transformer++) and build the caches from its saved rotated k and v; the
// Combiner, and any prompt from a later position, go token by token. Every token id and the length are checked
// before anything changes.
template <typename Real>
void decode_prefill(TransformerModel<Real>& model, BaselineDecodeState<Real>& state, const int* tokens, int64_t n,
                    Real* logits_out);

// Feeds one token at position state.pos, writes the next token's logits to logits_out (V) if not null, and advances
// state.pos. A bad token id or a full state is an error that leaves the state as it was.
template <typename Real>
void decode_step(const TransformerModel<Real>& model, BaselineDecodeState<Real>& state, int token, Real* logits_out);
