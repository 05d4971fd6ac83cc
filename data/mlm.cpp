// data/mlm.cpp: the objective, and the masking of the masked-LM objective. Read data/mlm.h first.
#include "data/mlm.h"

#include "common.h"
#include "ops.h"  // kIgnoreTarget
#include "rng.h"

namespace flash_data {

Objective parse_objective(const std::string& name) {
    if (name == "ar") return Objective::ar;
    if (name == "mlm") return Objective::mlm;
    FLASH_FAIL("unknown objective '" << name << "'", "use ar (auto-regressive) or mlm (masked LM)");
}

const char* objective_name(Objective objective) { return objective == Objective::mlm ? "mlm" : "ar"; }

void check_objective_fits_model(Objective objective, bool model_causal) {
    FLASH_CHECK(objective != Objective::mlm || !model_causal,
                "--objective mlm needs a non-causal model, and this model config is causal",
                "give a model config file with \"causal\": false (--model FILE.json)");
    FLASH_CHECK(objective != Objective::ar || model_causal,
                "--objective ar needs a causal model, and this model config has \"causal\": false (the model would see "
                "the token it predicts)",
                "use --objective mlm for a non-causal model, or a config with \"causal\": true");
}

uint64_t mlm_sequence_seed(uint64_t seed, uint64_t step, uint64_t sequence) {
    uint64_t s = seed;
    s = splitmix64_next(s) ^ step;
    s = splitmix64_next(s) ^ sequence;
    return splitmix64_next(s);
}

uint32_t random_ordinary_token(uint64_t& rng_state, const MlmVocab& vocab) {
    const uint64_t ordinary = vocab.vocab_size - vocab.special_ids.size();
    uint32_t id = (uint32_t)random_below(rng_state, ordinary);
    // The id-th ordinary token: step over each special id at or below it (ascending, so each shift is final).
    for (uint32_t special : vocab.special_ids)
        if (id >= special) id++;
    return id;
}

int mlm_mask(uint64_t seed, uint64_t step, uint64_t sequence, const int32_t* tokens, int T, const MlmVocab& vocab,
             int32_t* inputs, int32_t* targets) {
    FLASH_CHECK(T >= 1 && vocab.vocab_size > vocab.special_ids.size(),
                "masking needs T >= 1 and an ordinary token, got T=" << T << ", vocab " << vocab.vocab_size, "");
    Rng rng(mlm_sequence_seed(seed, step, sequence));
    // A chosen position: its target is the original token; its input is masked, replaced or kept (80/10/10).
    auto choose = [&](int t) {
        targets[t] = tokens[t];
        const double u = rng.uniform();
        if (u < kMlmMaskRate) inputs[t] = (int32_t)vocab.mask_id;
        else if (u < kMlmMaskRate + kMlmRandomRate) inputs[t] = (int32_t)random_ordinary_token(rng.state, vocab);
    };
    int chosen = 0;
    for (int t = 0; t < T; t++) {
        inputs[t] = tokens[t];
        targets[t] = kIgnoreTarget;
        if (rng.uniform() < kMlmChooseRate) {
            choose(t);
            chosen++;
        }
    }
    if (chosen == 0) {  // at least one per sequence, so every row has a loss
        choose((int)random_below(rng.state, (uint64_t)T));
        chosen = 1;
    }
    return chosen;
}

void make_batch(Objective objective, DataLoader& loader, const MlmVocab* vocab, uint64_t seed, uint64_t step,
                std::vector<int32_t>& inputs, std::vector<int32_t>& targets) {
    loader.next_batch(inputs, targets);
    if (objective == Objective::ar) return;
    FLASH_CHECK(vocab, "make_batch: the mlm objective needs the vocabulary's mask and special ids", "pass an MlmVocab");
    const int T = loader.T();
    // The window's first T tokens are the sequence (its last token, the AR target, is not used); masked in place.
    // The sequence index is the row of the GLOBAL batch, so data-parallel ranks (dist.h) mask as one process does.
    for (int b = 0; b < loader.B(); b++) {
        int32_t* row = inputs.data() + (size_t)b * T;
        mlm_mask(seed, step, loader.first_row() + (uint64_t)b, row, T, *vocab, row, targets.data() + (size_t)b * T);
    }
}

}  // namespace flash_data
