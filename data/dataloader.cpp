// data/dataloader.cpp: random (train) and sequential (val) windows over a token stream.
#include "data/dataloader.h"

#include "common.h"

namespace flash_data {

uint64_t random_below(uint64_t& state, uint64_t n) {
    FLASH_CHECK(n > 0, "random_below(0) has no valid result", "pass n >= 1");
    // Accept draws below the largest multiple of n that fits in 2^64, so every residue is equally likely.
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    for (;;) {
        uint64_t x = splitmix64_next(state);
        if (x < limit) return x % n;
    }
}

uint64_t train_window_offset(uint64_t seed, uint64_t batch, uint64_t row, size_t n_tokens, int T) {
    // Three chained splitmix64 steps key the stream by seed, then batch, then row; each xor feeds a fresh state.
    uint64_t state = seed;
    state = splitmix64_next(state) ^ batch;
    state = splitmix64_next(state) ^ row;
    state = splitmix64_next(state);
    return random_below(state, n_tokens - T);  // start + T + 1 <= n
}

DataLoader::DataLoader(const std::vector<uint32_t>& tokens, int B, int T, LoaderMode mode, uint64_t seed,
                       uint64_t first_row)
    : tokens_(tokens.data()), n_(tokens.size()), B_(B), T_(T), mode_(mode), seed_(seed), first_row_(first_row) {
    FLASH_CHECK(B >= 1 && T >= 1, "data loader needs B >= 1 and T >= 1, got B=" << B << " T=" << T, "check the batch settings");
    FLASH_CHECK(n_ >= (size_t)T + 1, "the token stream has " << n_ << " tokens, too few for one window of T+1 = " << T + 1,
                "use a smaller sequence length T or more data");
    offsets_.resize(B);
    reset();
}

void DataLoader::reset() {
    state_ = DataLoaderState{};
    state_.rng_state = seed_;
}

void DataLoader::restore(const DataLoaderState& s) {
    FLASH_CHECK(s.position + T_ + 1 <= n_ || s.position == 0,
                "data loader state points at offset " << s.position << ", beyond the " << n_ << "-token stream",
                "restore a state saved from a loader over the same token file");
    state_ = s;
}

uint64_t DataLoader::batches_per_epoch() const {
    if (mode_ == LoaderMode::kValSequential) return ((n_ - 1) / T_) / B_;  // windows T apart, T+1 long
    return n_ / ((uint64_t)B_ * T_);
}

void DataLoader::next_batch(int32_t* inputs, int32_t* targets) {
    for (int b = 0; b < B_; b++) {
        uint64_t start;
        if (mode_ == LoaderMode::kTrainRandom) {
            start = train_window_offset(seed_, state_.batches, first_row_ + b, n_, T_);
        } else {
            if (state_.position + T_ + 1 > n_) state_.position = 0;  // end of the pass: wrap
            start = state_.position;
            state_.position += T_;
        }
        offsets_[b] = start;
        const uint32_t* w = tokens_ + start;
        for (int t = 0; t < T_; t++) {
            inputs[(size_t)b * T_ + t] = (int32_t)w[t];
            targets[(size_t)b * T_ + t] = (int32_t)w[t + 1];
        }
    }
    // Wrap as soon as the pass is over, so that a saved state never points past the last full window.
    if (mode_ == LoaderMode::kValSequential && state_.position + T_ + 1 > n_) state_.position = 0;
    state_.batches++;
}

void DataLoader::next_batch(std::vector<int32_t>& inputs, std::vector<int32_t>& targets) {
    inputs.resize((size_t)B_ * T_);
    targets.resize((size_t)B_ * T_);
    next_batch(inputs.data(), targets.data());
}

}  // namespace flash_data
