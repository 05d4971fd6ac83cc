// test/corpus.h: a tiny corpus with a tokenizer and token files, written once per test process (test_train,
// test_dist).
#pragma once
#include <unistd.h>

#include <filesystem>
#include <string>

#include "data/tokenfile.h"
#include "rng.h"
#include "tokenizer/bpe.h"

// A tiny corpus with structure a small model can learn: sentences from a small grammar.
inline std::string make_text(uint64_t seed, int sentences) {
    const char* subjects[] = {"the cat", "a dog", "the old man", "my sister", "the ship"};
    const char* verbs[] = {"sees", "likes", "follows", "finds"};
    const char* objects[] = {"the sea.", "a red ball.", "the white whale.", "the house."};
    Rng rng(seed);
    std::string text;
    for (int i = 0; i < sentences; i++) {
        text += subjects[rng.below(5)];
        text += " ";
        text += verbs[rng.below(4)];
        text += " ";
        text += objects[rng.below(4)];
        text += (i % 7 == 6) ? "\n" : " ";
    }
    return text;
}

// data dir with tokenizer.json, train.bin, val.bin
inline std::string make_data_dir() {
    static std::string dir;
    if (!dir.empty()) return dir;
    dir = "/tmp/flash_test_train_" + std::to_string(getpid());
    std::filesystem::create_directories(dir);
    const std::string train_text = make_text(1, 3000), val_text = make_text(2, 300);
    bpe::Tokenizer tok = bpe::Tokenizer::train({train_text}, 300);
    tok.save(dir + "/tokenizer.json");
    flash_data::save_token_file(dir + "/train.bin", tok.encode(train_text), tok.vocab_size());
    flash_data::save_token_file(dir + "/val.bin", tok.encode(val_text), tok.vocab_size());
    return dir;
}

