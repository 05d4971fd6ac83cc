// test_fuzz.cpp: every loader against mutated input. It writes a real checkpoint, tokenizer.json, token file
// and model config, then mutates each many times (bit flips, random and special bytes, cuts, repeated and
// deleted slices, deep nesting, extreme numbers) and runs its loader on the result. Each input must be either
// accepted or refused with a flash_error: a short message naming the file. A crash, a hang, any other
// exception (std::bad_alloc, a JSON library error) fails the test, with the iteration that made it.
//
// Seeded and reproducible: FLASH_FUZZ_SEED (default 1) and FLASH_FUZZ_ITERATIONS (per file kind, default
// 1000: the test command's share) choose the run; e.g. FLASH_FUZZ_ITERATIONS=100000 build/test_fuzz.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include "data/tokenfile.h"
#include "tokenizer/bpe.h"
#include "trainer.h"
#include "transformer.h"

namespace fs = std::filesystem;

namespace {

uint64_t env_or(const char* name, uint64_t fallback) {
    const char* v = std::getenv(name);
    return v && *v ? std::strtoull(v, nullptr, 10) : fallback;
}

const std::string& work_dir() {
    static const std::string dir = [] {
        std::string d = "/tmp/flash_test_fuzz_" + std::to_string(getpid());
        fs::create_directories(d);
        return d;
    }();
    return dir;
}

std::string read_bytes(const std::string& path) { return read_whole_file(path, "file", ""); }
void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// One random change to the bytes; the kinds are those that reach different checks of a loader.
void mutate_once(std::string& b, Rng& rng) {
    const auto at = [&]() -> size_t { return b.empty() ? 0 : (size_t)(rng.next_u64() % b.size()); };
    switch (rng.below(9)) {
        case 0:  // flip one bit
            if (!b.empty()) b[at()] ^= (char)(1 << rng.below(8));
            break;
        case 1:  // a random byte
            if (!b.empty()) b[at()] = (char)rng.below(256);
            break;
        case 2: {  // a byte that means something to a parser or a length field
            const char special[] = {'\0', '\xff', '\x7f', '\x80', '[', ']', '{', '}', '"', '\\', ',', ':', '-', '9', 'e', ' '};
            if (!b.empty()) b[at()] = special[rng.below(sizeof special)];
            break;
        }
        case 3:  // cut the end off
            b.resize(at());
            break;
        case 4: {  // delete a slice
            const size_t p = at(), n = std::min<size_t>(b.size() - p, 1 + rng.below(64));
            b.erase(p, n);
            break;
        }
        case 5: {  // repeat a slice
            const size_t p = at(), n = std::min<size_t>(b.size() - p, 1 + rng.below(64));
            b.insert(p, b.substr(p, n));
            break;
        }
        case 6: {  // deep nesting, sometimes far beyond any stack
            const int depth = rng.below(2) ? 60 + rng.below(20) : 1000 + rng.below(100000);
            const char open = rng.below(2) ? '[' : '{';
            b.insert(at(), std::string(depth, open) + (open == '[' ? std::string(depth, ']') : ""));
            break;
        }
        case 7: {  // an extreme number in place of a digit run
            const char* numbers[] = {"4294967295", "4294967296", "18446744073709551615", "-1", "2147483648", "1e308",
                                     "-0", "99999999999999999999999", "0", "65536", "1073741824", "nan"};
            size_t p = at();
            while (p < b.size() && !std::isdigit((unsigned char)b[p])) p++;
            size_t q = p;
            while (q < b.size() && std::isdigit((unsigned char)b[q])) q++;
            if (p < b.size()) b.replace(p, q - p, numbers[rng.below(12)]);
            break;
        }
        default: {  // 8 bytes of a little-endian length field, set to something large
            if (b.size() >= 8) {
                const size_t p = rng.below(2) ? 0 : at() & ~(size_t)7;
                const uint64_t v = rng.below(2) ? rng.next_u64() : (uint64_t)b.size() + rng.below(64) - 32;
                for (int i = 0; i < 8 && p + i < b.size(); i++) b[p + i] = (char)(v >> (8 * i));
            }
        }
    }
}

std::string mutate(const std::string& original, Rng& rng) {
    std::string b = original;
    const int n = 1 + rng.below(4);
    for (int i = 0; i < n; i++) mutate_once(b, rng);
    return b;
}

struct Outcome {
    int accepted = 0, refused = 0;
    std::map<std::string, int> messages;  // what the refusals said (text after "file:line: ", cut at the path)
};

// Runs `load` on `iterations` mutations of `original` (written to path first), seeded by seed. Every refusal
// must be a flash_error of bounded length that names the input (`name`); anything else fails.
Outcome fuzz(const std::string& kind, const std::string& original, const std::string& path, const std::string& name,
             const std::function<void(const std::string&)>& load) {
    const uint64_t seed = env_or("FLASH_FUZZ_SEED", 1), iterations = env_or("FLASH_FUZZ_ITERATIONS", 1000);
    Outcome out;
    for (uint64_t it = 0; it < iterations; it++) {
        Rng rng(seed * 0x9E3779B97F4A7C15ull + it * 7919 + std::hash<std::string>{}(kind));
        const std::string bytes = mutate(original, rng);
        write_bytes(path, bytes);
        try {
            load(bytes);
            out.accepted++;
        } catch (const flash_error& e) {
            out.refused++;
            const std::string msg = e.what();
            INFO(kind << " iteration " << it << " (FLASH_FUZZ_SEED=" << seed << "): " << msg.substr(0, 300));
            CHECK(msg.size() < 1500);                        // bounded: no value printed whole
            CHECK(msg.find(name) != std::string::npos);      // names the file
            const size_t colon = msg.find(": ");                // "file:line: " (common.h's FLASH_FAIL)
            CHECK((colon != std::string::npos && colon > 0 && std::isdigit((unsigned char)msg[colon - 1])));
            const size_t start = std::min(msg.size(), msg.find(name) + name.size());
            out.messages[msg.substr(start, 50)]++;
        } catch (const std::exception& e) {
            FAIL(kind << " iteration " << it << " (FLASH_FUZZ_SEED=" << seed << ") threw " << typeid(e).name() << ", not "
                      << "a flash_error: " << std::string(e.what()).substr(0, 300));
        }
    }
    MESSAGE(kind << ": " << iterations << " mutations, " << out.accepted << " accepted, " << out.refused << " refused, "
                 << out.messages.size() << " distinct messages");
    return out;
}

FlashConfig fuzz_config() {
    FlashConfig c = config_preset("tiny");
    return c;
}

TEST_CASE("fuzz: checkpoints (safetensors header, config, train state, tensors, values)") {
    const std::string dir = work_dir() + "/run";
    FlashModel<float> m(fuzz_config());
    m.init_weights(3);
    for (size_t i = 0; i < m.adam_v.size(); i++) m.adam_v[i] = 1e-4f * (float)(i % 7);
    const std::string written = save_checkpoint(dir, m, TrainState{7, 123, 4});
    const std::string original = read_bytes(written), path = work_dir() + "/fuzzed.safetensors";
    FlashModel<float> target(fuzz_config());
    const Outcome o = fuzz("checkpoint", original, path, "fuzzed.safetensors", [&](const std::string&) {
        load_checkpoint(path, target);
    });
    CHECK(o.refused > o.accepted);  // most mutations break something the loader checks
}

// The baselines are not made by make_model yet (model.h), so their checkpoints do not go through
// formats/checkpoint; ./sample reads their weights with transformer.h's load_weights, fuzzed here. A Performer's
// file holds every kind of tensor a baseline has (its random features Ω too).
TEST_CASE("fuzz: baseline weights (Performer: config with arch, trained tensors, random features)") {
    const TransformerConfig cfg = transformer_preset("tiny", "performer");
    TransformerModel<float> m(cfg);
    m.init_weights(3);
    const std::string path = work_dir() + "/fuzzed_performer.safetensors";
    save_weights(path, m);
    const std::string original = read_bytes(path);
    TransformerModel<float> target(cfg);
    const Outcome o = fuzz("performer weights", original, path, "fuzzed_performer.safetensors",
                           [&](const std::string&) { load_weights(path, target); });
    CHECK(o.refused > o.accepted);
}

TEST_CASE("fuzz: tokenizer.json") {
    std::string text;
    for (int i = 0; i < 200; i++) text += "the cat sees the white whale; a dog finds the house " + std::to_string(i) + ".\n";
    const bpe::Tokenizer tok = bpe::Tokenizer::train({text}, 300);
    const std::string original = tok.to_json(), path = work_dir() + "/fuzzed_tokenizer.json";
    const Outcome o = fuzz("tokenizer.json", original, path, "fuzzed_tokenizer.json", [&](const std::string&) {
        const bpe::Tokenizer t = bpe::Tokenizer::load(path);
        // An accepted tokenizer must also work.
        const std::vector<uint32_t> ids = t.encode("the cat sees a whale <|endoftext|> 42.");
        CHECK(t.decode(ids) == "the cat sees a whale <|endoftext|> 42.");
    });
    CHECK(o.refused > 0);
}

TEST_CASE("fuzz: token files") {
    std::vector<uint32_t> ids;
    Rng rng(5);
    for (int i = 0; i < 2000; i++) ids.push_back((uint32_t)rng.below(300));
    const std::string path = work_dir() + "/fuzzed.bin";
    flash_data::save_token_file(path, ids, 300);
    const std::string original = read_bytes(path);
    const Outcome o = fuzz("token file", original, path, "fuzzed.bin", [&](const std::string&) {
        const flash_data::TokenFile f = flash_data::load_token_file(path);
        for (uint32_t id : f.tokens) REQUIRE(id < f.vocab_size);
    });
    CHECK(o.refused > 0);
}

TEST_CASE("fuzz: model configs") {
    const std::string original = config_to_json(fuzz_config()).dump(1), path = work_dir() + "/fuzzed_config.json";
    const Outcome o = fuzz("model config", original, path, "fuzzed_config.json", [&](const std::string&) {
        const FlashConfig c = config_from_json(load_model_config_json(path));  // the fuzzed file is a FLASH config
        config_validate(c);
        // An accepted config of a reasonable size must also build a model (huge ones are refused by size).
        if (param_count(c) < 5000000) FlashModel<float> m(c);
    });
    CHECK(o.refused > 0);
    fs::remove_all(work_dir());
}

}  // namespace
