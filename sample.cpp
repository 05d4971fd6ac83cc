// sample.cpp: the `./sample` command: generate text from a checkpoint of any arch, streaming it as it comes.
//
//   checkpoint (safetensors, FLASH.md §7, BASELINES.md §6) --open_text_decoder (decoder.h), by its arch--> a cached decoder
//   prompt --tokenizer--> ids --prefill (a forward over the prompt, then cached steps)--> logits
//   repeat: sample_token (temperature, top-k, top-p, seeded) --> print its bytes --> step --> logits
//
// FLASH's tokens cost the same whatever their position (FLASH.md §3), so --length can be as long as you like;
// Transformer++'s cost and cache grow with the position, Performer's are constant, the Combiner's grow as t/c.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "decode.h"  // sample_token
#include "decoder.h"
#include "options.h"
#include "tokenizer/bpe.h"

namespace {

struct Options {
    std::string checkpoint, tokenizer = "data/tokenizer.json", prompt;
    long long length = 256;
    double temperature = 1.0, top_p = 1.0;
    int top_k = 0;
    uint64_t seed = 1;
    bool ignore_eot = false, quiet = false;
};

OptionTable option_table(Options& o) {
    OptionTable t;
    t.add("checkpoint", o.checkpoint, "safetensors file with the weights and the model config (required)");
    t.add("tokenizer", o.tokenizer, "tokenizer.json the model was trained with");
    t.add("prompt", o.prompt, "text to continue (empty: start a new document at <|endoftext|>)");
    t.add("length", o.length, "number of tokens to generate", 0, (1ll << 62));
    t.add("temperature", o.temperature, "0 = greedy; 1 = the model's distribution", 0, 1e300);
    t.add("top-k", o.top_k, "sample among the K most probable tokens; 0 = off", 0, 1 << 30);
    t.add("top-p", o.top_p, "sample among the most probable tokens holding mass P; 1 = off", 1e-300, 1);
    t.add("seed", o.seed, "random seed; the same seed gives the same text");
    t.add_flag("ignore-eot", o.ignore_eot, "keep going after <|endoftext|> instead of stopping there");
    t.add_flag("quiet", o.quiet, "print only the generated text, not the prompt and the statistics");
    return t;
}

std::string usage() {
    Options defaults;
    return "usage: ./sample --checkpoint PATH [options]\n"
           "  generate text from a checkpoint (flash, transformer++, performer, combiner), printed as it is generated\n"
           "options:\n" +
           option_table(defaults).help() + "  --help              this text\n";
}

Options parse_options(int argc, char** argv) {
    Options o;
    option_table(o).parse(argc, argv);
    FLASH_CHECK(!o.checkpoint.empty(), "no checkpoint given", "pass --checkpoint PATH (a safetensors file written by train)");
    return o;
}

// Writes bytes to stdout now. A character whose UTF-8 bytes span two tokens is completed by the next write.
void emit(const std::string& bytes) {
    std::fwrite(bytes.data(), 1, bytes.size(), stdout);
    std::fflush(stdout);
}

int run(const Options& o) {
    using clock = std::chrono::steady_clock;
    std::unique_ptr<TextDecoder> decoder = open_text_decoder(o.checkpoint);

    const bpe::Tokenizer tok = bpe::Tokenizer::load(o.tokenizer);
    const int V = decoder->vocab_size();
    // Sample only ids both sides know: a model may have a vocabulary padded beyond the tokenizer's.
    const int V_sample = std::min<int>(V, (int)tok.vocab_size());
    if ((int)tok.vocab_size() != V && !o.quiet)
        std::fprintf(stderr, "note: the tokenizer has %u tokens and the model %d; sampling among the first %d\n",
                     tok.vocab_size(), V, V_sample);

    std::vector<int> prompt;
    for (uint32_t id : tok.encode(o.prompt, /*allow_special=*/true)) {
        FLASH_CHECK((int64_t)id < V, "prompt token id " << id << " is out of range for the model's vocab_size " << V,
                    "this tokenizer is not the model's; pass the one it was trained with via --tokenizer");
        prompt.push_back((int)id);
    }
    if (prompt.empty()) {  // nothing to condition on: start a fresh document, as training data does after a separator
        FLASH_CHECK((int64_t)tok.eot_id() < V, "the empty prompt starts at <|endoftext|> (id " << tok.eot_id()
                                                   << "), which the model's vocab_size " << V << " lacks",
                    "give a --prompt");
        prompt.push_back((int)tok.eot_id());
    }

    if (!o.quiet) emit(o.prompt);
    std::vector<float> logits(V);
    const auto t0 = clock::now();
    decoder->prefill(prompt.data(), (int64_t)prompt.size(), logits.data());
    const auto t1 = clock::now();

    Rng rng(o.seed);
    long long generated = 0;
    for (; generated < o.length; generated++) {
        const int next = sample_token(logits.data(), V_sample, o.temperature, o.top_k, o.top_p, rng);
        if (next == (int)tok.eot_id() && !o.ignore_eot) break;
        const uint32_t id = (uint32_t)next;
        emit(tok.decode(&id, 1));
        if (generated + 1 < o.length) decoder->step(next, logits.data());
    }
    const auto t2 = clock::now();
    emit("\n");
    std::fflush(stdout);  // the text before the statistics, which go to stderr
    if (!o.quiet) {
        const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
        const double gen_s = std::chrono::duration<double>(t2 - t1).count();
        std::fprintf(stderr,
                     "[sample] prompt %zu tokens in %.3f s; generated %lld tokens in %.3f s (%.2f ms/token); "
                     "cache %.2f MB\n",
                     prompt.size(), prefill_s, generated, gen_s, generated ? 1e3 * gen_s / generated : 0.0,
                     decoder->cache_bytes() / 1e6);
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        for (int i = 1; i < argc; i++)
            if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
                std::fputs(usage().c_str(), stdout);
                return 0;
            }
        return run(parse_options(argc, argv));
    } catch (const std::bad_alloc&) {
        std::fflush(stdout);
        std::fprintf(stderr, "sample: error: out of memory (hint: a smaller model, or a machine with more memory)\n");
        return 1;
    } catch (const std::exception& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "sample: error: %s\n", e.what());
        return 1;
    }
}
