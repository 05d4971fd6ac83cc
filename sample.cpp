// sample.cpp: the `./sample` command: generate text from a FLASH checkpoint, streaming it as it comes.
//
//   checkpoint (safetensors, FLASH.md §7) --> FlashModel<float>
//   prompt --tokenizer--> ids --decode_prefill (chunked forward, then cached steps)--> logits
//   repeat: sample_token (temperature, top-k, top-p, seeded) --> print its bytes --> decode_step --> logits
//
// Each generated token costs the same whatever its position (FLASH.md §3), so --length can be as long as you like.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "decode.h"
#include "tokenizer/bpe.h"

namespace {

const char* kUsage =
    "usage: ./sample --checkpoint PATH [options]\n"
    "  generate text from a FLASH checkpoint, printed as it is generated\n"
    "options:\n"
    "  --checkpoint PATH    safetensors file with the weights and the model config (required)\n"
    "  --tokenizer PATH     tokenizer.json the model was trained with (default data/tokenizer.json)\n"
    "  --prompt TEXT        text to continue (default: empty, which starts a new document at <|endoftext|>)\n"
    "  --length N           number of tokens to generate (default 256)\n"
    "  --temperature T      0 = greedy; 1 = the model's distribution (default 1.0)\n"
    "  --top-k K            sample among the K most probable tokens; 0 = off (default 0)\n"
    "  --top-p P            sample among the most probable tokens holding mass P; 1 = off (default 1.0)\n"
    "  --seed S             random seed; the same seed gives the same text (default 1)\n"
    "  --ignore-eot         keep going after <|endoftext|> instead of stopping there\n"
    "  --quiet              print only the generated text, not the prompt and the statistics\n"
    "  --help               this text\n";

struct Options {
    std::string checkpoint, tokenizer = "data/tokenizer.json", prompt;
    long long length = 256;
    double temperature = 1.0, top_p = 1.0;
    long long top_k = 0;
    unsigned long long seed = 1;
    bool ignore_eot = false, quiet = false, help = false;
};

// Whole-string number parsing: "12x" or "" is an error, not 12 or 0.
double parse_double(const std::string& opt, const std::string& text) {
    size_t used = 0;
    double v = 0;
    try {
        v = std::stod(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    FLASH_CHECK(used == text.size() && used > 0, "option " << opt << " needs a number, got '" << text << "'", "");
    return v;
}
long long parse_int(const std::string& opt, const std::string& text) {
    size_t used = 0;
    long long v = 0;
    try {
        v = std::stoll(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    FLASH_CHECK(used == text.size() && used > 0, "option " << opt << " needs an integer, got '" << text << "'", "");
    return v;
}

Options parse_options(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; i++) {
        const std::string arg = argv[i];
        if (arg == "--ignore-eot") { o.ignore_eot = true; continue; }
        if (arg == "--quiet") { o.quiet = true; continue; }
        if (arg == "--help" || arg == "-h") { o.help = true; return o; }
        FLASH_CHECK(arg.rfind("--", 0) == 0, "unexpected argument '" << arg << "'", "see ./sample --help");
        FLASH_CHECK(i + 1 < argc, "option " << arg << " needs a value", "see ./sample --help");
        const std::string value = argv[++i];
        if (arg == "--checkpoint") o.checkpoint = value;
        else if (arg == "--tokenizer") o.tokenizer = value;
        else if (arg == "--prompt") o.prompt = value;
        else if (arg == "--length") o.length = parse_int(arg, value);
        else if (arg == "--temperature") o.temperature = parse_double(arg, value);
        else if (arg == "--top-k") o.top_k = parse_int(arg, value);
        else if (arg == "--top-p") o.top_p = parse_double(arg, value);
        else if (arg == "--seed") {
            FLASH_CHECK(!value.empty() && value[0] != '-', "option --seed needs a non-negative integer, got '" << value << "'", "");
            o.seed = (unsigned long long)parse_int(arg, value);
        } else FLASH_FAIL("unknown option '" << arg << "'", "see ./sample --help");
    }
    FLASH_CHECK(!o.checkpoint.empty(), "no checkpoint given", "pass --checkpoint PATH (a safetensors file written by train)");
    FLASH_CHECK(o.length >= 0, "--length must be >= 0, got " << o.length, "");
    FLASH_CHECK(o.temperature >= 0, "--temperature must be >= 0, got " << o.temperature, "0 is greedy");
    FLASH_CHECK(o.top_k >= 0 && o.top_k <= (1 << 30), "--top-k must be >= 0, got " << o.top_k, "0 switches it off");
    FLASH_CHECK(o.top_p > 0 && o.top_p <= 1, "--top-p must be in (0, 1], got " << o.top_p, "1 switches it off");
    return o;
}

// Writes bytes to stdout now. A character whose UTF-8 bytes span two tokens is completed by the next write.
void emit(const std::string& bytes) {
    std::fwrite(bytes.data(), 1, bytes.size(), stdout);
    std::fflush(stdout);
}

int run(const Options& o) {
    using clock = std::chrono::steady_clock;
    // The model: config from the checkpoint's metadata, then the weights from the same (once read) file.
    SafeTensorsFile file = safetensors_read(o.checkpoint);
    const FlashConfig cfg = checkpoint_config(file, o.checkpoint);
    FlashModel<float> model(cfg);
    load_param_tensors(model, model.params, file, "", o.checkpoint);
    file = SafeTensorsFile{};  // the weights are in the model now
    DecodeState<float> state;
    decode_init(state, model);  // refuses a non-causal model

    const bpe::Tokenizer tok = bpe::Tokenizer::load(o.tokenizer);
    const int V = cfg.vocab_size;
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
    decode_prefill(model, state, prompt.data(), (int64_t)prompt.size(), logits.data());
    release_activations(model);  // the prefill's forward buffers: generation only needs the cache
    const auto t1 = clock::now();

    Rng rng(o.seed);
    long long generated = 0;
    for (; generated < o.length; generated++) {
        const int next = sample_token(logits.data(), V_sample, o.temperature, (int)o.top_k, o.top_p, rng);
        if (next == (int)tok.eot_id() && !o.ignore_eot) break;
        const uint32_t id = (uint32_t)next;
        emit(tok.decode(&id, 1));
        if (generated + 1 < o.length) decode_step(model, state, next, logits.data());
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
                     state.cache_bytes() / 1e6);
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        const Options o = parse_options(argc, argv);
        if (o.help) {
            std::fputs(kUsage, stdout);
            return 0;
        }
        return run(o);
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
