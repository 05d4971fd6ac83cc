// eval.h: the validation loss, on the whole validation set or on a fixed sample of it, in nats per token and in
// bits per byte, with the number of tokens (and bytes) it was measured on.
//
// A window at offset o of the token stream is one batch row: inputs tokens[o .. o+T), targets tokens[o+1 .. o+T].
//   Whole set   windows at 0, T, 2T, ... while a full window fits; if targets remain after them, one last window
//               that ends at the last token, with the targets an earlier window scored ignored (kIgnoreTarget).
//               So each of the N-1 targets (tokens 1..N-1; token 0 is never a target) is scored exactly once.
//               Example, N = 12, T = 4: windows at 0 and 4 score tokens 1..8; the last at 7 scores 9..11 (its
//               first target, token 8, is ignored).
//   Sample      the whole set's full windows cut into K equal strata (K = --eval-batches × --batch), one window
//               drawn from each with a fixed seed: spread over the whole file, the same windows at every
//               evaluation and in every run on the same data (the training seed does not change them).
// Bits per byte = total nats / ln 2 / the bytes of exactly the text scored: the summed byte lengths of the scored
// target tokens (each id's bytes in the tokenizer; <|endoftext|> counts its 13).
//
// The masked-LM objective (data/mlm.h) scores windows of T tokens with no shift: the whole set's windows are T
// apart from 0 (and one that ends at the last token, its positions before first_scored never chosen), so every
// token is in exactly one window's scored part; each window is masked once and for all (kMlmEvalSeed, its offset),
// and the scored tokens are the chosen ones (about 15%), their bytes the bits per byte's divisor.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/mlm.h"

namespace bpe {
class Tokenizer;
}

struct EvalWindow {
    uint64_t offset = 0;   // first input token
    int first_scored = 0;  // targets at positions t < first_scored were scored by another window: ignored
};

inline constexpr uint64_t kEvalSampleSeed = 0x5EED0E7A1ull;

// The windows that score every target of an n_tokens stream exactly once (see above). Needs n_tokens >= T+1.
// For mlm: windows of T tokens whose scored parts cover every token once.
std::vector<EvalWindow> whole_set_windows(size_t n_tokens, int T,
                                          flash_data::Objective objective = flash_data::Objective::ar);
// `count` full windows, one per stratum of the whole set's full windows, in file order; all of them (fewer than
// count) when the file has no more.
std::vector<EvalWindow> sample_windows(size_t n_tokens, int T, int count, uint64_t seed = kEvalSampleSeed);

// The bytes each token id stands for: token_bytes[id] = its byte length in the tokenizer.
std::vector<uint32_t> token_byte_lengths(const bpe::Tokenizer& tok);

struct EvalResult {
    double nats = 0;       // loss summed over the scored targets
    uint64_t tokens = 0;   // scored targets
    uint64_t bytes = 0;    // bytes of the scored targets' text
    double loss() const { return tokens ? nats / (double)tokens : 0.0; }  // nats per token
    double bits_per_byte() const;
};
double bits_per_byte(double nats, uint64_t bytes);  // nats / ln 2 / bytes

// The model's forward as the evaluation calls it: (inputs, targets, B, T) -> the mean loss over the scored
// targets (FlashModel::forward, or the GPU model's).
using EvalForward = std::function<double(const int* inputs, const int* targets, int B, int T)>;

// Scores the windows in batches of B rows (the last batch padded with rows whose targets are all ignored, so the
// model always sees B rows). Sums in window order, in double. With mlm (not null), each window is a masked-LM row
// under validation's fixed masking (see above); else an auto-regressive one.
EvalResult evaluate_windows(const EvalForward& forward, const std::vector<uint32_t>& tokens,
                            const std::vector<EvalWindow>& windows, const std::vector<uint32_t>& token_bytes, int B,
                            int T, const flash_data::MlmVocab* mlm = nullptr);

// One line for logs: "val loss 4.5500 nats/token | 1.5660 bits/byte | 282153 tokens, 1181857 bytes".
std::string format_eval(const EvalResult& r);
