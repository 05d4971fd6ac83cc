// decode.h: generating text one token at a time with a cache (FLASH.md §3), and sampling from logits.
//
// FLASH's normalisers are constants (1/C) and its global sum over chunks is exclusive, so a causal layer can run
// one token at a time and compute exactly what the full forward computes. Per layer the decoder keeps
//   M          (s, e)  Σ over the finished chunks of P = klᵀ v / C
//   kq, v, kl  (C, ·)  the rows of the current, unfinished chunk (kq and kl after RoPE)
// A token at position t, a = t mod C, attends locally to the cached rows 0..a and globally through lin = ql · M;
// after the chunk's last row (a = C−1) its P is added to M and the chunk rows are forgotten. Cost and memory
// per token are O(C·(s+e) + s·e) per layer, whatever t is.
//
//   DecodeState<float> st;
//   decode_init(st, model);
//   decode_prefill(model, st, prompt, n, logits);      // the prompt, through the chunked forward
//   for (...) { int tok = sample_token(logits, V, temperature, top_k, top_p, rng);
//               decode_step(model, st, tok, logits); }  // one token in, the next token's logits out
//
//   DecodeBatch<float> batch;                          // n sequences at once, each with its own cache
//   decode_batch_init(batch, model, n);
//   decode_batch_step(model, batch, tokens, logits);   // tokens (n) in, logits (n, V) out
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include <cblas.h>
#include <omp.h>

#include "flash.h"

// One token's work (a few million multiply-adds for the small config) is too small to share among threads: the
// fork and join of every op cost more than they save, and far more when the cores are busy (measured, small config,
// 2 cores under load: 1.9 ms per token on one thread, 90-400 ms on two). So a step runs on the calling thread only,
// OpenMP and OpenBLAS alike; the previous settings come back when it ends. (A batched step of at least as many
// sequences as threads has enough work to share, and shares it: decode.cpp, decode_rows.)
// Shared by every cached decoder (decode_baselines.h too).
struct SingleThreaded {
    int omp_saved = omp_get_max_threads();
    BlasThreads one_blas_thread{1};  // ops.h
    SingleThreaded() { omp_set_num_threads(1); }
    ~SingleThreaded() { omp_set_num_threads(omp_saved); }
};

// One layer's cache.
template <typename Real>
struct DecodeLayerCache {
    std::vector<Real> m;   // (s, e)  Σ_{finished chunks} kl_chunkᵀ v_chunk / C
    std::vector<Real> kq;  // (C, s)  rotated kq rows of the current chunk; rows 0 .. pos mod C − 1 are valid
    std::vector<Real> v;   // (C, e)  v rows of the current chunk
    std::vector<Real> kl;  // (C, s)  rotated kl rows of the current chunk (they make P when the chunk ends)
};

// The rows of one decode step for n sequences at once, (n, ·) each; kept between steps so that a step allocates
// nothing (they grow when n does).
template <typename Real>
struct DecodeRows {
    std::vector<Real> x, x_next, xn;  // (n, d)     residual stream in and out, normed
    std::vector<Real> rstd;           // (n)        scalenorm's saved 1/rms, unused here
    std::vector<Real> h, act;         // (n, 2e+s)  input projection, silu(h) = [u | v | z]
    std::vector<Real> o, gated;       // (n, e)     attention output, u ⊙ o
    void size_for(const FlashConfig& c, int n);
};

// Everything the decoder keeps between tokens for one sequence of one model.
template <typename Real>
struct DecodeState {
    FlashConfig cfg;                              // the model's, checked on every call
    int64_t pos = 0;                              // tokens consumed = position of the next token (no upper limit)
    std::vector<DecodeLayerCache<Real>> layers;   // (L)
    std::vector<double> inv_freq;                 // (s/2)  rope_base^(−2i/s), as rope_tables computes it
    // Scratch for one token, kept here so that a step allocates nothing.
    std::vector<double> rope_cos, rope_sin;       // (s/2)  angles of the current position
    std::vector<Real> qq, kq, ql, kl;             // (s)    the four heads of the current token, after RoPE
    DecodeRows<Real> rows;                        // for decode_step (n = 1)

    // Bytes held by the per-layer caches (M and the chunk rows): L · (s·e + C·(2s+e)) · sizeof(Real), constant in t.
    size_t cache_bytes() const;
};

// n independent sequences decoded together (batched decoding): each has its own cache and position, and one step
// feeds one token to each. The products run on (n, ·) rows, so every weight matrix is read once per step for all
// n sequences instead of once per sequence (a one-sequence step is bound by reading the weights: bench_decode).
// Attention stays per sequence, against its own cache, and that part grows with n: each sequence reads its own M and
// chunk rows at every step. With at least as many sequences as threads, the sequences run in parallel.
template <typename Real>
struct DecodeBatch {
    std::vector<DecodeState<Real>> seqs;  // (n)
    DecodeRows<Real> rows;
};

// Sizes the state for model's config and empties it (position 0). A non-causal model is refused: its global sum
// includes future chunks, so it cannot be decoded left to right.
template <typename Real> void decode_init(DecodeState<Real>& state, const FlashModel<Real>& model);

// Feeds tokens[0..n) to the decoder and writes the logits after the last of them to logits_out (V), if not null.
// From position 0 the largest multiple-of-C prefix goes through FlashModel::forward (which overwrites the model's
// activations), and the cache is built from its saved activations: M = M[G−1] + kl[G−1]ᵀ v[G−1] / C; the rest
// goes through decode_step. From any other position every token goes through decode_step.
// Memory: the forward holds activations for the prefix (about 160 KB per token for the small config).
template <typename Real>
void decode_prefill(FlashModel<Real>& model, DecodeState<Real>& state, const int* tokens, int64_t n, Real* logits_out);

// Feeds one token at position state.pos and writes the logits predicting the next token to logits_out (V), if
// not null; advances state.pos.
template <typename Real>
void decode_step(const FlashModel<Real>& model, DecodeState<Real>& state, int token, Real* logits_out);

// Sizes a batch of n sequences for the model, each empty (position 0); a sequence may then be prefilled on its own
// with decode_prefill(model, batch.seqs[i], ...).
template <typename Real> void decode_batch_init(DecodeBatch<Real>& batch, const FlashModel<Real>& model, int n);

// Feeds tokens[i] to sequence i (each at its own position) and writes the logits predicting each one's next token
// to row i of logits_out (n, V), if not null. Computes what n decode_step calls compute (test_decode compares them:
// the products differ only in BLAS's rounding).
template <typename Real>
void decode_batch_step(const FlashModel<Real>& model, DecodeBatch<Real>& batch, const int* tokens, Real* logits_out);

// ---------------------------------------------------------------------------------------------------------------
// Sampling

// The distribution sample_token draws from, over V tokens (probabilities, zeros for the filtered-out tokens):
//   temperature 0: all mass on the argmax (the lowest id among equal maxima);
//   else softmax(logits / temperature), then top_k > 0 keeps the k most probable tokens, then top_p < 1 keeps the
//   smallest set of most probable tokens whose probability (renormalised after top-k) sums to at least top_p;
//   the kept tokens are renormalised. Ties in probability are broken by the lower id, so the result is
//   deterministic. temperature ≥ 0, top_k ≥ 0 (0: off), top_p in (0, 1] (1: off); other values are an error.
template <typename Real>
std::vector<double> sampling_distribution(const Real* logits, int V, double temperature, int top_k, double top_p);

// One token id in [0, V) drawn from sampling_distribution with one rng.uniform() (none when temperature is 0).
template <typename Real>
int sample_token(const Real* logits, int V, double temperature, int top_k, double top_p, Rng& rng);
