// decoder.h: cached decoding for every architecture behind one interface, for ./sample and the trainer's text
// samples. FLASH's decoder is decode.h (docs/FLASH.md §3); the baselines' is decode_baselines.h (BASELINES.md §1-§3).
// This file only picks one by the model's "arch" and holds it with a float copy of the weights.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "model.h"

struct TextDecoder {
    virtual ~TextDecoder() = default;
    virtual int vocab_size() const = 0;
    // The logits (vocab_size) after the n tokens of a prompt; frees the prompt forward's activations afterwards.
    virtual void prefill(const int* tokens, int64_t n, float* logits) = 0;
    virtual void step(int token, float* logits) = 0;  // the logits after one more token
    virtual size_t cache_bytes() const = 0;
};

// A decoder on a host copy of the model's weights (the model may be on the GPU; its own activations stay as they
// are). A non-causal model cannot decode: a clear error.
std::unique_ptr<TextDecoder> make_text_decoder(const Model<float>& model);
// A decoder for a checkpoint file of any arch (its config's "arch", "flash" when absent).
std::unique_ptr<TextDecoder> open_text_decoder(const std::string& checkpoint_path);
