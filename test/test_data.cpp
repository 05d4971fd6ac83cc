// test/test_data.cpp: token files (data/tokenfile.h) and the data loader (data/dataloader.h).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common.h"
#include "data/dataloader.h"
#include "data/tokenfile.h"
#include "tokenizer/bpe.h"

using namespace flash_data;
using Ids = std::vector<uint32_t>;

namespace {

std::string temp_path(const std::string& name) {
    return (std::filesystem::temp_directory_path() / ("flash_test_data_" + std::to_string(::getpid()) + "_" + name)).string();
}

std::string read_all(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
}

void write_all(const std::string& path, const std::string& bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), (std::streamsize)bytes.size());
}

template <class T>
void poke(std::string& bytes, size_t offset, T value) {
    memcpy(&bytes[offset], &value, sizeof value);
}

// A valid token file's bytes: ids 0..n-1 modulo vocab.
std::string valid_file_bytes(uint32_t vocab, size_t n) {
    Ids ids(n);
    for (size_t i = 0; i < n; i++) ids[i] = (uint32_t)(i % vocab);
    std::string path = temp_path("valid.bin");
    save_token_file(path, ids, vocab);
    std::string bytes = read_all(path);
    std::filesystem::remove(path);
    return bytes;
}

Ids iota_tokens(size_t n) {
    Ids t(n);
    for (size_t i = 0; i < n; i++) t[i] = (uint32_t)i;
    return t;
}

}  // namespace

// ---- token files -----------------------------------------------------------------------------------------
TEST_CASE("token file round trip, 2-byte ids") {
    Ids ids = {0, 1, 4095, 17, 4095, 0, 300};
    std::string path = temp_path("u16.bin");
    save_token_file(path, ids, 4096);
    CHECK(std::filesystem::file_size(path) == 32 + 2 * ids.size());
    std::string bytes = read_all(path);
    CHECK(bytes.substr(0, 8) == "FLASHTOK");
    TokenFile tf = load_token_file(path, 4096);
    CHECK(tf.vocab_size == 4096);
    CHECK(tf.tokens == ids);
    TokenFileInfo info = read_token_file_info(path);
    CHECK(info.vocab_size == 4096);
    CHECK(info.token_count == ids.size());
    std::filesystem::remove(path);
}

TEST_CASE("token file round trip, 4-byte ids when the vocab needs them") {
    CHECK(token_bytes_for_vocab(65536) == 2);
    CHECK(token_bytes_for_vocab(65537) == 4);
    Ids ids = {0, 65535, 65536, 69999, 12};
    std::string path = temp_path("u32.bin");
    save_token_file(path, ids, 70000);
    CHECK(std::filesystem::file_size(path) == 32 + 4 * ids.size());
    CHECK(load_token_file(path).tokens == ids);
    // empty files are fine too
    save_token_file(path, Ids{}, 70000);
    CHECK(load_token_file(path).tokens.empty());
    std::filesystem::remove(path);
}

TEST_CASE("token files from the tokenizer decode back to the text") {
    std::string text = "<|endoftext|>One document.<|endoftext|>Another one, \xFF with odd bytes.";
    bpe::Tokenizer tok = bpe::Tokenizer::train({text}, 300);
    std::string path = temp_path("text.bin");
    save_token_file(path, tok.encode(text), tok.vocab_size());
    TokenFile tf = load_token_file(path, tok.vocab_size());
    CHECK(tok.decode(tf.tokens) == text);
    CHECK(tf.tokens[0] == tok.eot_id());
    std::filesystem::remove(path);
}

TEST_CASE("the token file loader rejects each kind of corruption with its own error") {
    const std::string good = valid_file_bytes(1000, 50);
    const std::string path = temp_path("corrupt.bin");
    auto load_bytes = [&](const std::string& bytes, uint32_t expected_vocab = 0) {
        write_all(path, bytes);
        return load_token_file(path, expected_vocab);
    };
    write_all(path, good);
    CHECK(load_token_file(path).tokens.size() == 50);

    CHECK_THROWS_WITH_AS(load_token_file(temp_path("missing.bin")), doctest::Contains("cannot open token file"), flash_error);
    CHECK_THROWS_WITH_AS(load_bytes(good.substr(0, 20)), doctest::Contains("shorter than the 32-byte header"), flash_error);
    CHECK_THROWS_WITH_AS(load_bytes(""), doctest::Contains("is truncated: 0 bytes"), flash_error);
    {
        std::string b = good;
        b[0] = 'X';
        CHECK_THROWS_WITH_AS(load_bytes(b), doctest::Contains("is not a token file (bad magic"), flash_error);
        CHECK_THROWS_WITH_AS(load_bytes("{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\"}}"),
                             doctest::Contains("bad magic"), flash_error);
    }
    {
        std::string b = good;
        poke<uint32_t>(b, 8, 2);
        CHECK_THROWS_WITH_AS(load_bytes(b), doctest::Contains("has version 2, this program reads version 1"), flash_error);
    }
    {
        std::string b = good;
        poke<uint32_t>(b, 12, 0);
        CHECK_THROWS_WITH_AS(load_bytes(b), doctest::Contains("says its vocab size is 0"), flash_error);
    }
    {
        std::string b = good;
        poke<uint32_t>(b, 16, 4);
        CHECK_THROWS_WITH_AS(load_bytes(b), doctest::Contains("stores 4 bytes per token, but vocab size 1000 needs 2"),
                             flash_error);
    }
    CHECK_THROWS_WITH_AS(load_bytes(good.substr(0, good.size() - 3)),
                         doctest::Contains("is truncated: the header promises 50 tokens of 2 bytes but only 97 bytes"),
                         flash_error);
    {
        std::string b = good;
        poke<uint64_t>(b, 24, UINT64_MAX / 2);  // absurd count: must not overflow into "fits"
        CHECK_THROWS_WITH_AS(load_bytes(b), doctest::Contains("is truncated: the header promises"), flash_error);
    }
    CHECK_THROWS_WITH_AS(load_bytes(good + "xyz"), doctest::Contains("has 3 unexpected bytes after its 50 tokens"), flash_error);
    {
        std::string b = good;
        poke<uint16_t>(b, 32 + 2 * 7, 1000);  // id == vocab size
        CHECK_THROWS_WITH_AS(load_bytes(b), doctest::Contains("holds id 1000 at position 7, out of range for its vocab size 1000"),
                             flash_error);
    }
    CHECK_THROWS_WITH_AS(load_bytes(good, 4096), doctest::Contains("was made with a vocab of 1000 tokens, but the tokenizer has 4096"),
                         flash_error);
    std::filesystem::remove(path);
}

TEST_CASE("writing a token file refuses ids outside the vocab and bad paths") {
    CHECK_THROWS_WITH_AS(save_token_file(temp_path("bad.bin"), Ids{1, 2, 300}, 300),
                         doctest::Contains("token 2 is id 300, not below the vocab size 300"), flash_error);
    CHECK_FALSE(std::filesystem::exists(temp_path("bad.bin")));
    CHECK_THROWS_WITH_AS(save_token_file("/nonexistent-dir/x.bin", Ids{1}, 300), doctest::Contains("cannot write"), flash_error);
    CHECK_THROWS_WITH_AS(save_token_file(temp_path("v0.bin"), Ids{}, 0), doctest::Contains("vocab size 0"), flash_error);
}

// ---- RNG -------------------------------------------------------------------------------------------------
TEST_CASE("splitmix64 gives the reference sequence, random_below is unbiased enough") {
    uint64_t s = 0;
    CHECK(splitmix64_next(s) == 0xE220A8397B1DCDAFull);  // the published first outputs for seed 0
    CHECK(splitmix64_next(s) == 0x6E789E6AA1B965F4ull);
    uint64_t r = 99;
    int counts[10] = {0};
    for (int i = 0; i < 100000; i++) counts[random_below(r, 10)]++;
    for (int c : counts) {
        CHECK(c > 9500);
        CHECK(c < 10500);
    }
    CHECK_THROWS_AS(random_below(r, 0), flash_error);
}

// ---- data loader -----------------------------------------------------------------------------------------
TEST_CASE("train loader returns exactly the tokens at the offsets it reports") {
    // tokens[i] = i * 7 % 5003, so each value pins its position (5003 is prime, > N).
    const size_t N = 5000;
    Ids tokens(N);
    for (size_t i = 0; i < N; i++) tokens[i] = (uint32_t)(i * 7 % 5003);
    const int B = 4, T = 32;
    DataLoader dl(tokens, B, T, LoaderMode::kTrainRandom, 42);
    std::vector<int32_t> x, y;
    std::vector<uint64_t> seen;
    for (int step = 0; step < 200; step++) {
        dl.next_batch(x, y);
        REQUIRE(x.size() == (size_t)B * T);
        REQUIRE(dl.last_offsets().size() == (size_t)B);
        for (int b = 0; b < B; b++) {
            uint64_t off = dl.last_offsets()[b];
            REQUIRE(off + T + 1 <= N);
            seen.push_back(off);
            for (int t = 0; t < T; t++) {
                REQUIRE(x[b * T + t] == (int32_t)tokens[off + t]);
                REQUIRE(y[b * T + t] == (int32_t)tokens[off + t + 1]);
            }
        }
    }
    CHECK(dl.state().batches == 200);
    // random offsets: spread over the whole range, not stuck
    uint64_t lo = *std::min_element(seen.begin(), seen.end()), hi = *std::max_element(seen.begin(), seen.end());
    CHECK(lo < 100);
    CHECK(hi > N - T - 1 - 100);
    // the last possible window is reachable: N - T - 1 is the largest offset
    Ids short_stream = iota_tokens(T + 1);
    DataLoader tight(short_stream, 1, T, LoaderMode::kTrainRandom, 1);
    tight.next_batch(x, y);
    CHECK(tight.last_offsets()[0] == 0);
    CHECK(y[T - 1] == T);
}

TEST_CASE("a restored loader continues the same sequence; seeds and reset behave") {
    Ids tokens = iota_tokens(10000);
    const int B = 3, T = 16;
    std::vector<int32_t> x, y, x2, y2;
    DataLoader a(tokens, B, T, LoaderMode::kTrainRandom, 7);
    for (int i = 0; i < 3; i++) a.next_batch(x, y);
    DataLoaderState saved = a.state();
    std::vector<std::vector<uint64_t>> expected;
    for (int i = 0; i < 5; i++) {
        a.next_batch(x, y);
        expected.push_back(a.last_offsets());
    }
    DataLoader b(tokens, B, T, LoaderMode::kTrainRandom, 7);
    b.restore(saved);
    CHECK(b.state().batches == 3);
    for (int i = 0; i < 5; i++) {
        b.next_batch(x2, y2);
        CHECK(b.last_offsets() == expected[i]);
    }
    CHECK(x2 == x);
    CHECK(y2 == y);

    // the same seed gives the same first batch, another seed another; reset() starts over
    DataLoader c(tokens, B, T, LoaderMode::kTrainRandom, 7), d(tokens, B, T, LoaderMode::kTrainRandom, 8);
    c.next_batch(x, y);
    d.next_batch(x2, y2);
    CHECK(x != x2);
    std::vector<uint64_t> first = c.last_offsets();
    c.next_batch(x, y);
    c.reset();
    c.next_batch(x, y);
    CHECK(c.last_offsets() == first);
    CHECK(c.state().batches == 1);
}

TEST_CASE("train rows are a function of (seed, batch, row): R loaders of B/R rows serve one loader's batches") {
    Ids tokens = iota_tokens(10000);
    const int B = 6, T = 16;
    std::vector<int32_t> x, y, xr, yr;
    DataLoader whole(tokens, B, T, LoaderMode::kTrainRandom, 7);
    for (int R : {2, 3, 6}) {
        // R ranks, rank r serving global rows r*B/R .. (r+1)*B/R-1; every batch's rows together are whole's rows
        std::vector<DataLoader> parts;
        for (int r = 0; r < R; r++) parts.emplace_back(tokens, B / R, T, LoaderMode::kTrainRandom, 7, r * B / R);
        whole.reset();
        for (int batch = 0; batch < 4; batch++) {
            whole.next_batch(x, y);
            std::vector<uint64_t> joined;
            std::vector<int32_t> xj;
            for (DataLoader& p : parts) {
                p.next_batch(xr, yr);
                joined.insert(joined.end(), p.last_offsets().begin(), p.last_offsets().end());
                xj.insert(xj.end(), xr.begin(), xr.end());
            }
            CHECK(joined == whole.last_offsets());
            CHECK(xj == x);
            for (int b = 0; b < B; b++)
                CHECK(whole.last_offsets()[b] == train_window_offset(7, batch, b, tokens.size(), T));
        }
    }
    // A loader restored at batch k with another split serves batch k's rows (resume with another number of ranks).
    DataLoaderState at3 = whole.state();
    at3.batches = 3;
    DataLoader half(tokens, B / 2, T, LoaderMode::kTrainRandom, 7, B / 2);
    half.restore(at3);
    half.next_batch(xr, yr);
    for (int b = 0; b < B / 2; b++)
        CHECK(half.last_offsets()[b] == train_window_offset(7, 3, B / 2 + b, tokens.size(), T));
    // distinct rows and batches draw distinct windows (here: all 6 × 4 of them differ)
    std::vector<uint64_t> all;
    for (int batch = 0; batch < 4; batch++)
        for (int b = 0; b < B; b++) all.push_back(train_window_offset(7, batch, b, tokens.size(), T));
    std::sort(all.begin(), all.end());
    CHECK(std::unique(all.begin(), all.end()) == all.end());
}

TEST_CASE("validation loader walks the stream in order and wraps") {
    // N = 100, T = 10: windows start at 0, 10, ..., 80 (80 + 11 <= 100; 90 + 11 > 100): 9 windows,
    // so with B = 3 there are 3 batches per pass.
    Ids tokens = iota_tokens(100);
    DataLoader v(tokens, 3, 10, LoaderMode::kValSequential);
    CHECK(v.batches_per_epoch() == 3);
    std::vector<int32_t> x, y;
    std::vector<uint64_t> offsets;
    for (int i = 0; i < 3; i++) {
        v.next_batch(x, y);
        offsets.insert(offsets.end(), v.last_offsets().begin(), v.last_offsets().end());
        for (int b = 0; b < 3; b++)
            for (int t = 0; t < 10; t++) {
                CHECK(x[b * 10 + t] == (int32_t)(v.last_offsets()[b] + t));
                CHECK(y[b * 10 + t] == (int32_t)(v.last_offsets()[b] + t + 1));
            }
    }
    CHECK(offsets == std::vector<uint64_t>{0, 10, 20, 30, 40, 50, 60, 70, 80});
    v.next_batch(x, y);  // the next pass starts over
    CHECK(v.last_offsets() == std::vector<uint64_t>{0, 10, 20});
    // a saved position continues; reset() goes back to 0
    DataLoaderState s = v.state();
    CHECK(s.position == 30);
    DataLoader w(tokens, 3, 10, LoaderMode::kValSequential);
    w.restore(s);
    w.next_batch(x, y);
    CHECK(w.last_offsets() == std::vector<uint64_t>{30, 40, 50});
    w.reset();
    w.next_batch(x, y);
    CHECK(w.last_offsets() == std::vector<uint64_t>{0, 10, 20});
}

TEST_CASE("data loader refuses impossible settings") {
    Ids tokens = iota_tokens(16);
    CHECK_THROWS_WITH_AS(DataLoader(tokens, 1, 16, LoaderMode::kTrainRandom), doctest::Contains("has 16 tokens, too few for one window of T+1 = 17"),
                         flash_error);
    CHECK_THROWS_WITH_AS(DataLoader(tokens, 0, 4, LoaderMode::kValSequential), doctest::Contains("needs B >= 1 and T >= 1, got B=0 T=4"),
                         flash_error);
    DataLoader ok(tokens, 1, 4, LoaderMode::kValSequential);
    DataLoaderState far;
    far.position = 1000;
    CHECK_THROWS_WITH_AS(ok.restore(far), doctest::Contains("points at offset 1000, beyond the 16-token stream"), flash_error);
}
