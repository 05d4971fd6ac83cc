// data/dataloader.h: batches of (inputs, targets) windows from a token stream, for training and eval.
//
// A window of T+1 consecutive tokens starting at offset i gives one row:
//   inputs[t]  = tokens[i + t]       t = 0..T-1
//   targets[t] = tokens[i + t + 1]   (the next token: what the model must predict at t)
// Train mode draws each window's offset uniformly at random from [0, N-T-1] with splitmix64 (our own RNG, so the
// sequence is the same on every platform and compiler). The offset of global row r of batch k is a pure function
// of (seed, k, r), train_window_offset: so data-parallel ranks (dist.h), each serving its own rows first_row ..
// first_row+B-1 of a global batch, together serve exactly the rows one process serves, and a resume with another
// number of ranks serves the same global batches, split differently. Validation mode walks
// the stream in order, windows T apart, so each target token is served at most once per pass (the last
// (N-1) mod T are never served; eval.h's whole-set windows score every one, and are what ./train evaluates with).
// The whole position (RNG state or cursor) is a small POD, DataLoaderState, that a checkpoint stores.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "rng.h"  // splitmix64_next

namespace flash_data {

// Uniform in [0, n) without modulo bias (rejects the few draws above the largest multiple of n). n > 0.
uint64_t random_below(uint64_t& state, uint64_t n);

enum class LoaderMode { kTrainRandom, kValSequential };

// The start of the window of global row `row` in train batch `batch` (counting from 0) for this seed: uniform in
// [0, n_tokens-T-1].
uint64_t train_window_offset(uint64_t seed, uint64_t batch, uint64_t row, size_t n_tokens, int T);

// Everything needed to continue a loader's sequence exactly: save it with a checkpoint, restore() it.
struct DataLoaderState {
    uint64_t rng_state = 0;  // train mode: the seed (the offsets are a function of seed, batches and row)
    uint64_t position = 0;   // val mode: offset of the next window
    uint64_t batches = 0;    // batches served since construction or reset() (for logs)
};

class DataLoader {
public:
    // tokens must outlive the loader (it keeps a pointer, not a copy). Needs B, T >= 1 and at least T+1
    // tokens; otherwise throws flash_error naming the sizes. Train mode: this loader serves the global rows
    // first_row .. first_row+B-1 of each batch (0 for one process; rank·B for a rank of a data-parallel run).
    DataLoader(const std::vector<uint32_t>& tokens, int B, int T, LoaderMode mode, uint64_t seed = 1337,
               uint64_t first_row = 0);
    // A temporary vector would dangle at once: refuse it at compile time.
    DataLoader(std::vector<uint32_t>&& tokens, int B, int T, LoaderMode mode, uint64_t seed = 1337,
               uint64_t first_row = 0) = delete;

    // Fills inputs[B*T] and targets[B*T], row-major (row b is window b).
    void next_batch(int32_t* inputs, int32_t* targets);
    void next_batch(std::vector<int32_t>& inputs, std::vector<int32_t>& targets);

    // The start offsets of the windows of the last batch (B of them).
    const std::vector<uint64_t>& last_offsets() const { return offsets_; }

    DataLoaderState state() const { return state_; }
    void restore(const DataLoaderState& s);  // continue exactly where the saved loader was
    void reset();                            // train: back to the seed's first batch; val: to offset 0

    // Val mode: full batches in one pass before the cursor wraps to 0. Train mode: N / (B*T), a
    // nominal "epoch" for logging.
    uint64_t batches_per_epoch() const;
    int B() const { return B_; }
    uint64_t first_row() const { return first_row_; }  // this loader's first row of the global batch
    int T() const { return T_; }
    size_t num_tokens() const { return n_; }
    LoaderMode mode() const { return mode_; }

private:
    const uint32_t* tokens_;
    size_t n_;
    int B_, T_;
    LoaderMode mode_;
    uint64_t seed_;
    uint64_t first_row_;
    DataLoaderState state_;
    std::vector<uint64_t> offsets_;
};

}  // namespace flash_data
