// data/mlm.h: the training objective, and the masked-language-model objective's data side (docs/BASELINES.md §4).
//
//   ar   auto-regressive: a window of T+1 tokens, inputs tokens[0..T), targets tokens[1..T] (data/dataloader.h).
//   mlm  masked LM, for a non-causal model: a window of T tokens, no shift. Each position is chosen with
//        probability 0.15 (at least one per sequence); a chosen position's input becomes <|mask|> with probability
//        0.8, a uniformly random ordinary (not special) token with 0.1, and stays as it is with 0.1. Its target is
//        the original token; every other target is kIgnoreTarget (-1), so the loss is the mean over the chosen.
//        Every position may be chosen, <|endoftext|> too (where a document ends is part of the text to recover).
// The masking of a sequence is a pure function of (seed, step, sequence index): a resumed run masks the same
// tokens. Validation masks each window once and for all with kMlmEvalSeed (step 0, sequence = the window's offset
// in the validation stream), the same at every evaluation, in every run.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/dataloader.h"

namespace flash_data {

enum class Objective { ar, mlm };
Objective parse_objective(const std::string& name);  // "ar" | "mlm"; else a flash_error naming both
const char* objective_name(Objective objective);
// Refuses a model that cannot learn the objective: mlm needs a non-causal one (a causal model never sees the
// tokens after a masked one), ar a causal one (a non-causal model would see the very token it predicts).
void check_objective_fits_model(Objective objective, bool model_causal);

inline constexpr double kMlmChooseRate = 0.15;   // a position is chosen
inline constexpr double kMlmMaskRate = 0.8;      // a chosen position becomes <|mask|>
inline constexpr double kMlmRandomRate = 0.1;    // ... or a random ordinary token (else it stays)
inline constexpr uint64_t kMlmEvalSeed = 0x4D61736B56616Cull;  // validation's one fixed masking

// What the masking needs to know of the tokenizer.
struct MlmVocab {
    uint32_t vocab_size = 0;
    uint32_t mask_id = 0;
    std::vector<uint32_t> special_ids;  // ascending, mask_id among them: never drawn as a random token
};

// The RNG seed of one sequence's masking: a splitmix64 hash chain of (seed, step, sequence).
uint64_t mlm_sequence_seed(uint64_t seed, uint64_t step, uint64_t sequence);
// A uniformly random ordinary token (not in vocab.special_ids).
uint32_t random_ordinary_token(uint64_t& rng_state, const MlmVocab& vocab);

// The masking of one sequence of T tokens (see above): inputs[T] (the masked tokens) and targets[T] (the original
// token where chosen, kIgnoreTarget elsewhere). tokens may alias inputs. Returns the number of chosen positions.
int mlm_mask(uint64_t seed, uint64_t step, uint64_t sequence, const int32_t* tokens, int T, const MlmVocab& vocab,
             int32_t* inputs, int32_t* targets);

// The training batch of `step` under the objective: the loader's next B windows, and for mlm each row b masked with
// (seed, step, b). vocab is used (and needed) for mlm only.
void make_batch(Objective objective, DataLoader& loader, const MlmVocab* vocab, uint64_t seed, uint64_t step,
                std::vector<int32_t>& inputs, std::vector<int32_t>& targets);

}  // namespace flash_data
