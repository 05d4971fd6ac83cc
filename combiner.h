// combiner.h: Combiner-Fixed attention (Ren et al. 2021), the attention of the Combiner baseline, CPU reference.
//
// The method is BASELINES.md §3 (in the project's shared method texts); this file and combiner.cpp implement it
// exactly, as forward/backward ops on already rotated q, k and v (RoPE with positions from 0 is the caller's step,
// done before the max pooling). Per sequence and head, the T positions form n = T/c spans of c = `block` rows;
// span s holds rows s·c .. s·c+c−1. Each query row attends in ONE softmax to the keys of its own span (the direct
// keys; causal: only j ≤ i) and to one summary key k̂ per other span (causal: only earlier spans), whose value is
// the span's summary value v̂.
//
// Layout, shared with Transformer++'s attention: q, k, v are (B·T, d) row-major with row stride ld (ld = d for
// separate buffers, 3d for the fused [q | k | v] projection), d = H·h, head i in columns i·h .. (i+1)·h. The output
// o is (B·T, d), heads concatenated.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common.h"

// What the forward saves for the backward, as named pointers into one caller-provided buffer of
// combiner_saved_count(...) elements (view_combiner_saved lays it out). n = T/c spans per sequence and head.
template <typename Real>
struct CombinerSaved {
    Real* p;      // (B, H, T, c+n)  row i: [P_S (c) | P_G (n)], the probabilities of its one softmax; 0 where masked
    Real* q_hat;  // (B, H, n, h)    q̂[s] = max_{j∈s} q[j], elementwise
    Real* k_hat;  // (B, H, n, h)    k̂[s] = max_{j∈s} k[j]
    Real* rho;    // (B, H, n, c)    ρ[s,j] = softmax_{j∈s}(q̂[s]·k[j]/√h)
    Real* v_hat;  // (B, H, n, h)    v̂[s] = Σ_j ρ[s,j] v[j]
};

// Throws, naming the problem, unless B, T, H, h, c > 0 and T is a multiple of c (every op below checks this).
void combiner_check_sizes(int B, int T, int H, int h, int c);
// Elements of the saved buffer: B·H·(T·(c+n) + n·(3h + c)).
size_t combiner_saved_count(int B, int T, int H, int h, int c);
template <typename Real>
CombinerSaved<Real> view_combiner_saved(Real* base, int B, int T, int H, int h, int c);

// Forward FLOPs of the attention per token (one layer): 4·d·(c + n + 1), n = T/c (BASELINES.md §3). The c×c block
// counts in full (as FLASH.md §4 counts FLASH's), so does the c×n summary block; the "+1" is the span summaries
// (c logits K_s q̂ and ρᵀ V_s per span). Transformer++'s attention is 4·d·T.
double combiner_attention_flops_per_token(int d, int T, int c);

// o = Combiner-Fixed attention of q, k, v (BASELINES.md §3).
// o (B·T, d); saved: see CombinerSaved; q, k, v (B·T, d) with row stride ld; c = block; T a multiple of c.
template <typename Real>
void combiner_attention_forward(Real* o, const CombinerSaved<Real>& saved, const Real* q, const Real* k, const Real* v,
                                int ld, int B, int T, int H, int h, int c, bool causal);
// Accumulates (+=) into dq, dk, dv (B·T, d) with row stride ldd (one buffer [dq | dk | dv] when ldd = 3d).
// d_o (B·T, d); saved, q, k, v: as the forward left them.
template <typename Real>
void combiner_attention_backward(Real* dq, Real* dk, Real* dv, int ldd, const Real* d_o, const CombinerSaved<Real>& saved,
                                 const Real* q, const Real* k, const Real* v, int ld, int B, int T, int H, int h, int c,
                                 bool causal);

// ----------------------------------------------------------------------------------------------------------------
// Cached decoding (BASELINES.md §3, last paragraph): one rotated q, k, v row in, that row's causal attention out,
// equal to the full causal forward's row at the same position. Per head it keeps k̂ and v̂ of every finished span
// and the q, k, v rows of the current one; when a span fills, its summaries are computed and its rows dropped.
// Cost per token O(d·(c + t/c)); memory O(d·(3c + 2t/c)). Any number of tokens (no multiple of c needed).
template <typename Real>
struct CombinerCache {
    int H = 0, h = 0, c = 0;
    int64_t pos = 0;              // tokens consumed = position of the next one
    std::vector<Real> q, k, v;    // (H, c, h) rows of the current span; rows 0 .. pos mod c − 1 are valid
    std::vector<Real> k_hat;      // (spans, H, h) summaries of the finished spans, in span order
    std::vector<Real> v_hat;      // (spans, H, h)
    std::vector<Real> p, q_hat, rho;  // scratch: one row's probabilities (c + spans), (h), (c)

    CombinerCache(int H, int h, int c);
    // o (d) = attention output of the row (q, k, v: (d) each, rotated at position pos); then pos advances.
    void step(Real* o, const Real* q_row, const Real* k_row, const Real* v_row);
    int64_t finished_spans() const { return pos / c; }
};
