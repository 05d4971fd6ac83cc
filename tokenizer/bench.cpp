// tokenizer/bench.cpp: how fast the tokenizer trains and encodes, on one core.
//   build/bench_tokenizer [TEXT_FILE] [--vocab-size 4096]
// TEXT_FILE defaults to data/train.txt (made by data/prepare.sh). Everything here is single-threaded.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"
#include "tokenizer/bpe.h"

namespace {

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string read_file(const std::string& path) {
    std::string text = read_whole_file(
        path, "text file", "run data/prepare.sh first (it writes data/train.txt) or pass a text file: build/bench_tokenizer FILE");
    FLASH_CHECK(!text.empty(), path << " is empty", "pass a text file with some text in it");
    return text;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        std::string path = "data/train.txt";
        uint32_t vocab_size = 4096;
        for (int i = 1; i < argc; i++) {
            std::string a = argv[i];
            if (a == "--vocab-size" && i + 1 < argc) vocab_size = (uint32_t)strtoul(argv[++i], nullptr, 10);
            else if (a == "-h" || a == "--help") {
                printf("usage: build/bench_tokenizer [TEXT_FILE (default data/train.txt)] [--vocab-size 4096]\n");
                return 0;
            } else path = a;
        }
        const std::string text = read_file(path);
        const double mb = text.size() / 1e6;
        printf("bench_tokenizer: %s, %.2f MB, vocab size %u, 1 thread\n", path.c_str(), mb, vocab_size);

        double t0 = now_s();
        bpe::Tokenizer tok = bpe::Tokenizer::train({text}, vocab_size);
        double train_s = now_s() - t0;
        printf("  train:  %.3f s for %zu merges (%u tokens)           target < 5 s: %s\n", train_s, tok.merges().size(),
               tok.vocab_size(), train_s < 5.0 ? "ok" : "MISSED");

        // Encode a few times and keep the best: the first run also pays for page faults.
        std::vector<uint32_t> ids;
        double best_encode = 1e30;
        for (int rep = 0; rep < 3; rep++) {
            double t = now_s();
            ids = tok.encode(text);
            best_encode = std::min(best_encode, now_s() - t);
        }
        printf("  encode: %.3f s, %.1f MB/s, %zu tokens, %.2f bytes/token   target >= 10 MB/s: %s\n", best_encode,
               mb / best_encode, ids.size(), (double)text.size() / ids.size(), mb / best_encode >= 10 ? "ok" : "MISSED");

        double t = now_s();
        std::string back = tok.decode(ids);
        double decode_s = now_s() - t;
        printf("  decode: %.3f s, %.1f MB/s, round trip %s\n", decode_s, mb / decode_s, back == text ? "exact" : "DIFFERS");
        return back == text ? 0 : 1;
    } catch (const std::exception& e) {
        fprintf(stderr, "bench_tokenizer: error: %s\n", e.what());
        return 1;
    }
}
