// test/test_tokenizer.cpp: the byte-level BPE tokenizer (tokenizer/bpe.h). No network: the tests make
// their own text.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <unistd.h>
#include <vector>

#include "common.h"
#include "rng.h"
#include "tokenizer/bpe.h"

using bpe::Tokenizer;
using json = nlohmann::json;
using Ids = std::vector<uint32_t>;
using Pieces = std::vector<std::string>;

namespace {

Pieces split(std::string_view text) {
    Pieces out;
    for (std::string_view p : bpe::pretokenize(text)) out.emplace_back(p);
    return out;
}


// English-ish text made up on the spot: a fixed list of real words plus a lexicon of invented ones
// (syllables), drawn with a skew so that some are frequent. Enough variety for BPE to learn ~1000 merges.
std::string make_corpus(size_t words, uint64_t seed) {
    static const char* fixed[] = {"the", "of", "and", "to", "in", "a", "that", "is", "was", "he", "for", "it",
                                  "with", "as", "his", "on", "be", "at", "by", "I", "whale", "ship", "sea",
                                  "Congress", "nation", "people", "government", "États", "naïve", "Москва", "1776",
                                  "42", "don't", "we're", "it's", "—", "“quoted”", "$100", "3.14", "\t", "\n"};
    static const char* syllables[] = {"ka", "ro", "mi", "ten", "sa", "lo", "ver", "dan", "qui", "pe", "ul", "str",
                                      "on", "ex", "ta", "bri", "gu", "fo", "ne", "zy"};
    Rng lex_rng{12345};
    std::vector<std::string> lexicon(std::begin(fixed), std::end(fixed));
    for (int i = 0; i < 3000; i++) {
        std::string w = lex_rng.below(5) == 0 ? "Z" : "";
        for (size_t k = 0, n = 1 + lex_rng.below(4); k < n; k++) w += syllables[lex_rng.below(20)];
        lexicon.push_back(w);
    }
    Rng rng{seed};
    std::string s;
    for (size_t i = 0; i < words; i++) {
        // min of two draws: low indices (the real words first) come up more often
        size_t idx = std::min(rng.below(lexicon.size()), rng.below(lexicon.size()));
        s += lexicon[idx];
        size_t r = rng.below(20);
        s += r < 14 ? " " : r < 16 ? ", " : r < 17 ? ". " : r < 18 ? "\n\n" : r < 19 ? "  " : "!\n";
    }
    return s;
}

std::string random_bytes(Rng& rng, size_t len) {
    // Biased towards bytes that matter to the pre-tokenizer: letters, spaces, apostrophes, UTF-8 lead
    // and continuation bytes, NUL, and fragments of the special token.
    static const std::string alphabet = std::string("aZ 9'\n\t\xc3\xa9\x80\xbf\xe2\xff\xf0") + std::string(1, '\0') + "<|>ste";
    std::string s;
    for (size_t i = 0; i < len; i++) s += rng.below(4) == 0 ? (char)rng.below(256) : alphabet[rng.below(alphabet.size())];
    return s;
}

std::string temp_path(const std::string& name) {
    return (std::filesystem::temp_directory_path() / ("flash_test_tokenizer_" + std::to_string(::getpid()) + "_" + name)).string();
}

const Tokenizer& trained() {  // one tokenizer for the tests that only need "some trained tokenizer"
    static const Tokenizer tok = [] {
        std::string corpus = make_corpus(20000, 1);
        return Tokenizer::train({corpus}, 600);
    }();
    return tok;
}

}  // namespace

// ---- pre-tokenizer -------------------------------------------------------------------------------------
TEST_CASE("pre-tokenizer splits like GPT-2's regex") {
    CHECK(split("Hello world") == Pieces{"Hello", " world"});
    CHECK(split("Hello, world!") == Pieces{"Hello", ",", " world", "!"});
    // contractions, lower case only; other apostrophes are punctuation
    CHECK(split("I'm sure it's what we're doing, don't") ==
          Pieces{"I", "'m", " sure", " it", "'s", " what", " we", "'re", " doing", ",", " don", "'t"});
    CHECK(split("IT'S they'll you've he'd") == Pieces{"IT", "'", "S", " they", "'ll", " you", "'ve", " he", "'d"});
    CHECK(split("'x ''s") == Pieces{"'", "x", " ''", "s"});
    // numbers are their own runs, a space glues onto the run after it
    CHECK(split("in 1776 and 2024.") == Pieces{"in", " 1776", " and", " 2024", "."});
    CHECK(split("abc123def") == Pieces{"abc", "123", "def"});
    CHECK(split("$100.50!!") == Pieces{"$", "100", ".", "50", "!!"});
    // whitespace runs: the last space before a word goes with the word, a run at the end stays whole
    CHECK(split("a  b") == Pieces{"a", " ", " b"});
    CHECK(split("a   b") == Pieces{"a", "  ", " b"});
    CHECK(split("a   ") == Pieces{"a", "   "});
    CHECK(split("  a") == Pieces{" ", " a"});
    CHECK(split("a\n\nb") == Pieces{"a", "\n", "\n", "b"});
    CHECK(split("a\n\n\nb") == Pieces{"a", "\n\n", "\n", "b"});
    CHECK(split("a \nb") == Pieces{"a", " ", "\n", "b"});
    CHECK(split("a\t b") == Pieces{"a", "\t", " b"});
    CHECK(split("x \n") == Pieces{"x", " \n"});
    CHECK(split(" ") == Pieces{" "});
    CHECK(split("") == Pieces{});
    // Unicode: letters, numbers and spaces by category; invalid bytes are "other" characters
    CHECK(split("naïve café Москва") == Pieces{"naïve", " café", " Москва"});
    CHECK(split("ago\xE2\x80\x94never") == Pieces{"ago", "\xE2\x80\x94", "never"});  // em dash is punctuation
    CHECK(split("x\xC2\xA0y") == Pieces{"x", "\xC2\xA0", "y"});                      // no-break space is \s
    CHECK(split("\xC2\xBD and \xD9\xA3") == Pieces{"\xC2\xBD", " and", " \xD9\xA3"});  // ½ and Arabic-Indic 3 are \p{N}
    CHECK(split("ab\xFF\xFE" "cd") == Pieces{"ab", "\xFF\xFE", "cd"});
    CHECK(split(std::string("a\0b", 3)) == Pieces{"a", std::string(1, '\0'), "b"});
    CHECK(split("\xC3") == Pieces{"\xC3"});  // truncated sequence
}

TEST_CASE("pre-tokens cover every byte exactly once, for any bytes") {
    Rng rng{42};
    for (int i = 0; i < 2000; i++) {
        std::string s = random_bytes(rng, rng.below(60));
        std::string joined;
        for (std::string_view p : bpe::pretokenize(s)) {
            CHECK(!p.empty());
            joined += p;
        }
        CHECK(joined == s);
    }
}

// ---- bytes <-> unicode -----------------------------------------------------------------------------------
TEST_CASE("GPT-2 bytes-to-unicode mapping") {
    CHECK(bpe::bytes_to_unicode(" ") == "\xC4\xA0");   // Ġ U+0120
    CHECK(bpe::bytes_to_unicode("\n") == "\xC4\x8A");  // Ċ U+010A
    CHECK(bpe::bytes_to_unicode(std::string(1, '\0')) == "\xC4\x80");  // Ā U+0100
    CHECK(bpe::bytes_to_unicode("a!~") == "a!~");
    CHECK(bpe::bytes_to_unicode("\xE9") == "\xC3\xA9");  // byte 0xE9 is printable Latin-1: é
    CHECK(bpe::bytes_to_unicode("\xAD") == "\xC5\x83");  // soft hyphen is remapped: Ń U+0143, the last one
    std::string all;
    for (int b = 0; b < 256; b++) all += (char)b;
    std::string back;
    REQUIRE(bpe::unicode_to_bytes(bpe::bytes_to_unicode(all), back));
    CHECK(back == all);
    CHECK_FALSE(bpe::unicode_to_bytes("a\xE2\x82\xAC", back));  // € is not in the alphabet
    CHECK_FALSE(bpe::unicode_to_bytes(" ", back));              // a raw space is not either (it is spelled Ġ)
    CHECK_FALSE(bpe::unicode_to_bytes("\xFF", back));           // not UTF-8
}

// ---- training: worked examples ---------------------------------------------------------------------------
TEST_CASE("worked BPE example: aaabdaaabac") {
    // One pre-token. Pair counts: aa 4 (overlapping), ab 2, others 1 -> "aa"=256.
    // Then [aa a b d aa a b a c]: (aa,a)=2 and (a,b)=2 tie -> the smaller pair (97,98) "ab"=257.
    // Then [aa ab d aa ab a c]: (aa,ab)=2 -> "aaab"=258. Then all pairs count 1 -> smallest (97,99) "ac"=259.
    Tokenizer tok = Tokenizer::train({"aaabdaaabac"}, 262);  // 4 merges + <|endoftext|> + <|mask|>
    REQUIRE(tok.vocab_size() == 262);
    REQUIRE(tok.merges().size() == 4);
    CHECK(tok.merges()[0].left == 'a');
    CHECK(tok.merges()[0].right == 'a');
    CHECK(tok.merges()[1].left == 'a');
    CHECK(tok.merges()[1].right == 'b');
    CHECK(tok.merges()[2].left == 256);
    CHECK(tok.merges()[2].right == 257);
    CHECK(tok.merges()[3].left == 'a');
    CHECK(tok.merges()[3].right == 'c');
    CHECK(tok.token_bytes(256) == "aa");
    CHECK(tok.token_bytes(257) == "ab");
    CHECK(tok.token_bytes(258) == "aaab");
    CHECK(tok.token_bytes(259) == "ac");
    CHECK(tok.eot_id() == 260);
    CHECK(tok.token_bytes(260) == "<|endoftext|>");
    CHECK(tok.mask_id() == 261);
    CHECK(tok.token_bytes(261) == "<|mask|>");
    CHECK(tok.encode("aaabdaaabac") == Ids{258, 'd', 258, 259});
    CHECK(tok.encode("aaaa") == Ids{256, 256});
    CHECK(tok.encode("aaa") == Ids{256, 'a'});
    CHECK(tok.encode("ba") == Ids{'b', 'a'});
    CHECK(tok.encode("aaab aaab") == Ids{258, ' ', 258});  // " aaab" is one pre-token, but " a" never merged
    CHECK(tok.decode(Ids{258, 'd', 259}) == "aaabdac");
}

TEST_CASE("worked BPE example with several words: ab ab ab cd") {
    // Pre-tokens: "ab", " ab" x2, " cd". Pairs: (a,b) 3, (' ',a) 2, (' ',c) 1, (c,d) 1.
    // 256 = "ab"; then " ab" is [' ', 256] x2 -> 257 = " ab"; then (' ',c) and (c,d) tie at 1 ->
    // (32,99) first: 258 = " c"; then 259 = " cd".
    Tokenizer tok = Tokenizer::train({"ab ab ab cd"}, 262);
    REQUIRE(tok.merges().size() == 4);
    CHECK(tok.token_bytes(256) == "ab");
    CHECK(tok.token_bytes(257) == " ab");
    CHECK(tok.token_bytes(258) == " c");
    CHECK(tok.token_bytes(259) == " cd");
    CHECK(tok.encode("ab ab cd") == Ids{256, 257, 259});
    CHECK(tok.encode("cd ab") == Ids{'c', 'd', 257});
    // Asking for more than the text offers stops when no pair is left.
    Tokenizer more = Tokenizer::train({"ab ab ab cd"}, 1000);
    CHECK(more.vocab_size() == 262);
}

TEST_CASE("training is deterministic and reaches the requested vocab size") {
    std::string corpus = make_corpus(30000, 7);
    Tokenizer a = Tokenizer::train({corpus}, 700);
    Tokenizer b = Tokenizer::train({corpus}, 700);
    CHECK(a.vocab_size() == 700);
    CHECK(a.eot_id() == 698);
    CHECK(a.mask_id() == 699);
    CHECK(a.to_json() == b.to_json());
    // Learned merges compress: fewer tokens than bytes.
    CHECK(a.encode(corpus).size() * 2 < corpus.size());
}

TEST_CASE("training never merges across or into <|endoftext|>") {
    // Without the special-token split, "xy<|endoftext|>xy" would offer pairs like (y,<).
    Tokenizer tok = Tokenizer::train({"xy<|endoftext|>xy<|endoftext|>xy"}, 300);
    REQUIRE(tok.merges().size() == 1);
    CHECK(tok.token_bytes(256) == "xy");
    CHECK(tok.encode("xy<|endoftext|>xy") == Ids{256, tok.eot_id(), 256});
    // Empty training text: just bytes and the special token.
    Tokenizer empty = Tokenizer::train({""}, 4096);
    CHECK(empty.vocab_size() == 258);
    CHECK(empty.eot_id() == 256);
    CHECK(empty.mask_id() == 257);
    CHECK_THROWS_WITH_AS(Tokenizer::train({"abc"}, 100), doctest::Contains("vocab size 100 is too small"), flash_error);
}

// ---- encode / decode -------------------------------------------------------------------------------------
TEST_CASE("special token: one id with allow_special, plain text without") {
    const Tokenizer& tok = trained();
    Ids the = tok.encode("the nation");
    REQUIRE(the.size() >= 2);
    Ids expect = the;
    expect.push_back(tok.eot_id());
    expect.insert(expect.end(), the.begin(), the.end());
    CHECK(tok.encode("the nation<|endoftext|>the nation") == expect);
    Ids plain = tok.encode("<|endoftext|>", false);
    CHECK(plain.size() > 1);
    for (uint32_t id : plain) CHECK(id != tok.eot_id());
    CHECK(tok.decode(plain) == "<|endoftext|>");
    CHECK(tok.encode("<|endoftext|><|endoftext|>") == Ids{tok.eot_id(), tok.eot_id()});
    CHECK(tok.decode(Ids{tok.eot_id()}) == "<|endoftext|>");
}

TEST_CASE("decode(encode(x)) == x on edge cases") {
    const Tokenizer& tok = trained();
    const std::vector<std::string> cases = {
        "",
        std::string(1, '\0'),
        std::string("a\0\0b\0", 5),
        "\xFF",
        "\xC3",                      // truncated 2-byte sequence
        "\xC0\xAF",                  // overlong '/'
        "\xED\xA0\x80",              // UTF-16 surrogate
        "\xF4\x90\x80\x80",          // beyond U+10FFFF
        "\x80\x80\x80 the",          // stray continuation bytes
        "<|endoftext",               // fragments of the special token
        "<|endoftext|",
        "x<|endoftext|>y<|endoftext|>",
        std::string(100000, ' '),    // one long pre-token: the heap merge path
        std::string(70000, 'a') + "\n",
        "the whale's \t\r\n  nation  \n\n\n",
        "naïve États Москва 中文 😀 ½ \xC2\xA0 \xE2\x80\x94",
    };
    for (const std::string& s : cases) {
        CHECK(tok.decode(tok.encode(s)) == s);
        CHECK(tok.decode(tok.encode(s, false)) == s);
    }
    CHECK(tok.encode("").empty());
}

TEST_CASE("decode(encode(x)) == x on random byte strings") {
    const Tokenizer& tok = trained();
    Rng rng{123};
    for (int i = 0; i < 3000; i++) {
        std::string s = random_bytes(rng, rng.below(80));
        REQUIRE(tok.decode(tok.encode(s)) == s);
        REQUIRE(tok.decode(tok.encode(s, false)) == s);
    }
}

TEST_CASE("both merge algorithms give the same ids") {
    const Tokenizer& tok = trained();
    std::string corpus = make_corpus(3000, 99);
    Rng rng{5};
    for (std::string_view piece : bpe::pretokenize(corpus)) CHECK(tok.encode_piece(piece, true) == tok.encode_piece(piece, false));
    for (int i = 0; i < 300; i++) {
        // long pieces with much to merge: repeated words without spaces
        std::string s;
        size_t n = 1 + rng.below(40);
        for (size_t k = 0; k < n; k++) s += rng.below(2) ? "the" : "whale";
        CHECK(tok.encode_piece(s, true) == tok.encode_piece(s, false));
    }
}

TEST_CASE("encoding with progress (in slices) gives the same ids as in one piece") {
    const Tokenizer& tok = trained();
    std::string big = make_corpus(700000, 3);  // several MB, so encode_append slices it
    REQUIRE(big.size() > (3u << 20));
    size_t calls = 0, last_done = 0;
    Ids sliced;
    tok.encode_append(big, sliced, true, [&](size_t done, size_t total) {
        calls++;
        CHECK(done >= last_done);
        CHECK(total == big.size());
        last_done = done;
    });
    CHECK(calls >= 3);
    CHECK(last_done == big.size());
    CHECK(sliced == tok.encode(big));
}

TEST_CASE("decode refuses ids outside the vocabulary") {
    const Tokenizer& tok = trained();
    CHECK_THROWS_WITH_AS(tok.decode(Ids{1, tok.vocab_size()}), doctest::Contains("cannot decode token id 600 at position 1"),
                         flash_error);
}

// ---- tokenizer.json --------------------------------------------------------------------------------------
TEST_CASE("tokenizer.json has the Hugging Face layout") {
    Tokenizer tok = Tokenizer::train({"ab ab ab cd"}, 262);
    json j = json::parse(tok.to_json());
    CHECK(j["version"] == "1.0");
    CHECK(j["normalizer"].is_null());
    CHECK(j["pre_tokenizer"]["type"] == "ByteLevel");
    CHECK(j["pre_tokenizer"]["add_prefix_space"] == false);
    CHECK(j["pre_tokenizer"]["use_regex"] == true);
    CHECK(j["decoder"]["type"] == "ByteLevel");
    CHECK(j["model"]["type"] == "BPE");
    CHECK(j["model"]["vocab"].size() == 262);
    CHECK(j["model"]["vocab"]["\xC4\xA0"] == 32);               // "Ġ" is the space byte
    CHECK(j["model"]["vocab"]["\xC4\xA0" "cd"] == 259);         // " cd"
    CHECK(j["model"]["merges"] == json::array({"a b", "\xC4\xA0 ab", "\xC4\xA0 c", "\xC4\xA0" "c d"}));
    REQUIRE(j["added_tokens"].size() == 2);
    CHECK(j["added_tokens"][0]["id"] == 260);
    CHECK(j["added_tokens"][0]["content"] == "<|endoftext|>");
    CHECK(j["added_tokens"][0]["special"] == true);
    CHECK(j["added_tokens"][0]["normalized"] == false);
    CHECK(j["added_tokens"][1]["id"] == 261);
    CHECK(j["added_tokens"][1]["content"] == "<|mask|>");
    CHECK(j["added_tokens"][1]["special"] == true);
    CHECK(j["model"]["vocab"]["<|mask|>"] == 261);
}

TEST_CASE("tokenizer.json save/load round trip") {
    const Tokenizer& tok = trained();
    std::string path = temp_path("roundtrip.json");
    tok.save(path);
    Tokenizer back = Tokenizer::load(path);
    std::filesystem::remove(path);
    CHECK(back.vocab_size() == tok.vocab_size());
    CHECK(back.eot_id() == tok.eot_id());
    REQUIRE(back.merges().size() == tok.merges().size());
    for (size_t i = 0; i < tok.merges().size(); i++) {
        CHECK(back.merges()[i].left == tok.merges()[i].left);
        CHECK(back.merges()[i].right == tok.merges()[i].right);
        CHECK(back.merges()[i].result == tok.merges()[i].result);
    }
    for (uint32_t id = 0; id < tok.vocab_size(); id++) CHECK(back.token_bytes(id) == tok.token_bytes(id));
    CHECK(back.to_json() == tok.to_json());
    std::string text = make_corpus(2000, 11) + "<|endoftext|>\xFF\x00 end";
    CHECK(back.encode(text) == tok.encode(text));
}

TEST_CASE("tokenizer.json with other ids and merges written as pairs (as newer HF files do)") {
    // Byte b gets id (b + 100) % 256; merge "a b" -> "ab" id 256; eot 257 only in added_tokens.
    json vocab = json::object();
    for (int b = 0; b < 256; b++) vocab[bpe::bytes_to_unicode(std::string(1, (char)b))] = (b + 100) % 256;
    vocab["ab"] = 256;
    json j = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({json::array({"a", "b"})})}}},
              {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
              {"added_tokens", json::array({{{"id", 257}, {"content", "<|endoftext|>"}}})}};
    Tokenizer tok = Tokenizer::from_json(j.dump());
    CHECK(tok.vocab_size() == 258);
    CHECK(tok.eot_id() == 257);
    CHECK(tok.byte_id('a') == ('a' + 100) % 256);
    CHECK(tok.encode("ab") == Ids{256});
    CHECK(tok.encode("ba<|endoftext|>") == Ids{('b' + 100) % 256, ('a' + 100) % 256, 257});
    CHECK(tok.decode(tok.encode("ba ab\xFF")) == "ba ab\xFF");
}

TEST_CASE("<|mask|>: one id in text, and a tokenizer.json from before it existed still loads") {
    Tokenizer tok = Tokenizer::train({"ab ab ab cd"}, 262);
    REQUIRE(tok.has_mask());
    CHECK(tok.special_ids() == Ids{260, 261});
    CHECK(tok.encode("ab<|mask|> cd<|endoftext|>") == Ids{256, 261, 259, 260});
    CHECK(tok.encode("<|mask|>", false).size() > 1);  // without allow_special: plain text
    CHECK(tok.decode(Ids{261}) == "<|mask|>");
    // The old file: no <|mask|> in added_tokens nor in the vocab. Same ids for everything else.
    json old = json::parse(tok.to_json());
    old["added_tokens"].erase(1);
    old["model"]["vocab"].erase("<|mask|>");
    Tokenizer before = Tokenizer::from_json(old.dump(), "old.json");
    CHECK_FALSE(before.has_mask());
    CHECK(before.mask_id() == bpe::kNoToken);
    CHECK(before.vocab_size() == 261);
    CHECK(before.eot_id() == 260);
    CHECK(before.special_ids() == Ids{260});
    CHECK(before.encode("ab cd<|endoftext|>") == tok.encode("ab cd<|endoftext|>"));
    const Ids plain = before.encode("<|mask|>");  // HF does the same with that file: ordinary text
    CHECK(plain.size() > 1);
    CHECK(before.decode(plain) == "<|mask|>");
    CHECK(json::parse(before.to_json())["added_tokens"].size() == 1);  // saved as it was
    // <|mask|> twice is refused.
    json twice = json::parse(tok.to_json());
    twice["added_tokens"].push_back(twice["added_tokens"][1]);
    CHECK_THROWS_WITH_AS(Tokenizer::from_json(twice.dump(), "t.json"),
                         doctest::Contains("<|mask|> is listed twice in added_tokens"), flash_error);
}

TEST_CASE("malformed or foreign tokenizer.json files are refused, each with its own message") {
    const std::string good = Tokenizer::train({"ab ab ab cd"}, 262).to_json();
    auto with = [&](auto mutate) {
        json j = json::parse(good);
        mutate(j);
        return j.dump();
    };
    auto load = [](const std::string& text) { return Tokenizer::from_json(text, "t.json"); };
    CHECK_NOTHROW(load(good));

    CHECK_THROWS_WITH_AS(load("{\"model\": "), doctest::Contains("t.json is not valid JSON"), flash_error);
    CHECK_THROWS_WITH_AS(load("[1, 2]"), doctest::Contains("top level is not a JSON object"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j.erase("model"); })), doctest::Contains("no \"model\" object"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["model"]["type"] = "WordPiece"; })),
                         doctest::Contains("model type is \"WordPiece\", only \"BPE\" is supported"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["normalizer"] = {{"type", "NFC"}}; })),
                         doctest::Contains("has a normalizer (NFC)"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; })),
                         doctest::Contains("pre_tokenizer is Whitespace, only ByteLevel"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["pre_tokenizer"]["add_prefix_space"] = true; })),
                         doctest::Contains("add_prefix_space is true"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["pre_tokenizer"]["use_regex"] = false; })),
                         doctest::Contains("use_regex is false"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["decoder"] = {{"type", "WordPiece"}}; })),
                         doctest::Contains("decoder is WordPiece"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["model"]["dropout"] = 0.1; })),
                         doctest::Contains("model.dropout is 0.1"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["model"].erase("vocab"); })),
                         doctest::Contains("model.vocab is missing"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["model"]["merges"] = "a b"; })),
                         doctest::Contains("model.merges is missing or not an array"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["model"]["vocab"]["a"] = -3; })),
                         doctest::Contains("vocab entry \"a\" has id -3"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["model"]["vocab"]["a b"] = 261; })),
                         doctest::Contains("vocab entry \"a b\" is not a string of the GPT-2 byte-level alphabet"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["model"]["vocab"]["ab"] = 257; })),
                         doctest::Contains("is used by two tokens"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["model"]["vocab"].erase("\xC4\xA0" "cd"); })),
                         doctest::Contains("no token has id 259"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["model"]["vocab"]["qq"] = 900; })),
                         doctest::Contains("token \"qq\" has id 900, but the file lists only 265 tokens"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) {
                             j["model"]["vocab"].erase("Z");
                             j["model"]["vocab"]["ZZ"] = 'Z';
                         })),
                         doctest::Contains("vocab lacks the token for byte 0x5A (Z)"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j.erase("added_tokens"); })), doctest::Contains("no \"added_tokens\" array"),
                         flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["added_tokens"] = json::array(); })),
                         doctest::Contains("added_tokens lacks <|endoftext|>"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["added_tokens"][0]["content"] = "[CLS]"; })),
                         doctest::Contains("added token \"[CLS]\" is not supported"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["added_tokens"][0].erase("id"); })),
                         doctest::Contains("lacks an integer \"id\""), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["model"]["merges"][1] = "\xC4\xA0" "ab"; })),
                         doctest::Contains("is not two tokens separated by one space"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["model"]["merges"][1] = json::array({"x"}); })),
                         doctest::Contains("is neither \"a b\" nor [\"a\", \"b\"]"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["model"]["merges"][1] = "a qq"; })),
                         doctest::Contains("merge \"a qq\" uses a token that is not in the vocab"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["model"]["merges"][1] = "b a"; })),
                         doctest::Contains("makes \"ba\", which is not in the vocab"), flash_error);
    CHECK_THROWS_WITH_AS(load(with([](json& j) { j["model"]["merges"][1] = "a b"; })),
                         doctest::Contains("repeats an earlier merge of the same pair"), flash_error);
    CHECK_THROWS_WITH_AS(Tokenizer::load(temp_path("does_not_exist.json")), doctest::Contains("cannot open tokenizer"),
                         flash_error);
}
