// tokenizer/main.cpp: the `tokenizer/bpe` command line (train, encode, decode, info).
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common.h"
#include "data/tokenfile.h"
#include "tokenizer/bpe.h"

namespace {

const char* kUsage =
    "usage:\n"
    "  tokenizer/bpe train  --out tokenizer.json [--vocab-size 4096] FILE...\n"
    "      learn a byte-level BPE vocabulary on the text files (each split on <|endoftext|>)\n"
    "  tokenizer/bpe encode --tokenizer tokenizer.json --out tokens.bin [--no-special] FILE...\n"
    "      encode the files, one after another, into a token file\n"
    "  tokenizer/bpe encode --tokenizer tokenizer.json --text \"some text\"\n"
    "      print the ids of a string\n"
    "  tokenizer/bpe decode --tokenizer tokenizer.json [--out text.txt] tokens.bin\n"
    "  tokenizer/bpe decode --tokenizer tokenizer.json --ids \"15 2 871\"\n"
    "      token file or ids back to text (stdout unless --out)\n"
    "  tokenizer/bpe info   [--tokenizer tokenizer.json] tokens.bin...\n"
    "      token count and vocab size of token files (and documents, given the tokenizer)\n";

struct Args {
    std::string command, out, tokenizer, text, ids;
    bool have_text = false, have_ids = false, no_special = false;
    uint32_t vocab_size = 4096;
    std::vector<std::string> files;
};

Args parse_args(int argc, char** argv) {
    FLASH_CHECK(argc >= 2, "no command given", "run `tokenizer/bpe --help`");
    Args a;
    a.command = argv[1];
    for (int i = 2; i < argc; i++) {
        std::string arg = argv[i];
        auto value = [&]() -> std::string {
            FLASH_CHECK(i + 1 < argc, "option " << arg << " needs a value", "see `tokenizer/bpe --help`");
            return argv[++i];
        };
        if (arg == "--out" || arg == "-o") a.out = value();
        else if (arg == "--tokenizer" || arg == "-t") a.tokenizer = value();
        else if (arg == "--text") { a.text = value(); a.have_text = true; }
        else if (arg == "--ids") { a.ids = value(); a.have_ids = true; }
        else if (arg == "--no-special") a.no_special = true;
        else if (arg == "--vocab-size") {
            std::string v = value();
            char* end = nullptr;
            errno = 0;
            unsigned long n = strtoul(v.c_str(), &end, 10);
            FLASH_CHECK(errno == 0 && end && *end == 0 && !v.empty() && n >= 258 && n <= (1ul << 30),
                        "--vocab-size " << v << " is not a number in [258, 2^30]", "e.g. --vocab-size 4096");
            a.vocab_size = (uint32_t)n;
        } else if (arg.size() > 1 && arg[0] == '-') FLASH_FAIL("unknown option " << arg, "see `tokenizer/bpe --help`");
        else a.files.push_back(arg);
    }
    return a;
}

std::string read_file(const std::string& path) { return read_whole_file(path, "file", "check the path"); }

void write_file(const std::string& path, const std::string& data) {
    FILE* f = path.empty() ? stdout : fopen(path.c_str(), "wb");
    FLASH_CHECK(f, "cannot write " << path << ": " << strerror(errno), "check that the directory exists");
    size_t wrote = fwrite(data.data(), 1, data.size(), f);
    int closed = path.empty() ? fflush(f) : fclose(f);
    FLASH_CHECK(wrote == data.size() && closed == 0, "writing " << (path.empty() ? "stdout" : path) << " failed",
                "check free disk space");
}

// Progress on stderr for long work: redraws one line on a terminal, else prints every 25%.
bpe::Progress progress_printer(std::string what, size_t min_total) {
    const bool tty = isatty(2);
    auto last_quarter = std::make_shared<int>(-1);
    return [what, min_total, tty, last_quarter](size_t done, size_t total) {
        if (total < min_total || total == 0) return;
        int pct = (int)(100.0 * done / total);
        if (tty) {
            fprintf(stderr, "\r  %s: %3d%% (%zu / %zu)%s", what.c_str(), pct, done, total, done >= total ? "\n" : "");
        } else if (pct / 25 > *last_quarter) {
            *last_quarter = pct / 25;
            fprintf(stderr, "  %s: %d%% (%zu / %zu)\n", what.c_str(), pct, done, total);
        }
    };
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int cmd_train(const Args& a) {
    FLASH_CHECK(!a.out.empty(), "train needs --out tokenizer.json", "e.g. tokenizer/bpe train --out data/tokenizer.json data/train.txt");
    FLASH_CHECK(!a.files.empty(), "train needs at least one input text file", "e.g. tokenizer/bpe train --out tok.json corpus.txt");
    std::vector<std::string> texts;
    size_t bytes = 0;
    for (const std::string& f : a.files) {
        texts.push_back(read_file(f));
        bytes += texts.back().size();
    }
    std::vector<std::string_view> views(texts.begin(), texts.end());
    auto t0 = std::chrono::steady_clock::now();
    bpe::Tokenizer tok = bpe::Tokenizer::train(views, a.vocab_size, progress_printer("train (vocab)", 1024));
    double secs = seconds_since(t0);
    tok.save(a.out);
    fprintf(stderr, "trained %u tokens (%zu merges) on %zu bytes in %.2f s -> %s\n", tok.vocab_size(), tok.merges().size(),
            bytes, secs, a.out.c_str());
    if (tok.vocab_size() < a.vocab_size)
        fprintf(stderr, "note: the text ran out of pairs to merge before reaching vocab size %u\n", a.vocab_size);
    return 0;
}

std::string join_ids(const std::vector<uint32_t>& ids) {
    std::string s;
    for (size_t i = 0; i < ids.size(); i++) s += (i ? " " : "") + std::to_string(ids[i]);
    return s;
}

int cmd_encode(const Args& a) {
    FLASH_CHECK(!a.tokenizer.empty(), "encode needs --tokenizer tokenizer.json", "train one first, or run data/prepare.sh");
    bpe::Tokenizer tok = bpe::Tokenizer::load(a.tokenizer);
    if (a.have_text) {
        printf("%s\n", join_ids(tok.encode(a.text, !a.no_special)).c_str());
        return 0;
    }
    FLASH_CHECK(!a.out.empty(), "encode needs --out tokens.bin (or --text)", "see `tokenizer/bpe --help`");
    FLASH_CHECK(!a.files.empty(), "encode needs at least one input text file", "see `tokenizer/bpe --help`");
    std::vector<uint32_t> ids;
    size_t bytes = 0;
    auto t0 = std::chrono::steady_clock::now();
    for (const std::string& f : a.files) {
        std::string text = read_file(f);
        bytes += text.size();
        tok.encode_append(text, ids, !a.no_special, progress_printer("encode " + f, 4u << 20));
    }
    double secs = seconds_since(t0);
    flash_data::save_token_file(a.out, ids, tok.vocab_size());
    size_t docs = 0;
    for (uint32_t id : ids) docs += id == tok.eot_id();
    fprintf(stderr, "encoded %zu bytes into %zu tokens (%.2f bytes/token, %zu <|endoftext|>) in %.2f s (%.1f MB/s) -> %s\n",
            bytes, ids.size(), ids.empty() ? 0.0 : (double)bytes / ids.size(), docs, secs, bytes / 1e6 / (secs > 0 ? secs : 1e-9),
            a.out.c_str());
    return 0;
}

int cmd_decode(const Args& a) {
    FLASH_CHECK(!a.tokenizer.empty(), "decode needs --tokenizer tokenizer.json", "use the tokenizer that made the tokens");
    bpe::Tokenizer tok = bpe::Tokenizer::load(a.tokenizer);
    std::vector<uint32_t> ids;
    if (a.have_ids) {
        const char* p = a.ids.c_str();
        for (;;) {
            while (*p == ' ' || *p == ',' || *p == '\n' || *p == '\t') p++;
            if (!*p) break;
            char* end = nullptr;
            errno = 0;
            unsigned long v = strtoul(p, &end, 10);
            FLASH_CHECK(end != p && errno == 0 && v <= UINT32_MAX, "--ids: \"" << p << "\" does not start with a token id",
                        "pass ids separated by spaces, e.g. --ids \"15 2 871\"");
            ids.push_back((uint32_t)v);
            p = end;
        }
    } else {
        FLASH_CHECK(a.files.size() == 1, "decode needs exactly one token file (or --ids)", "see `tokenizer/bpe --help`");
        ids = flash_data::load_token_file(a.files[0], tok.vocab_size()).tokens;
    }
    write_file(a.out, tok.decode(ids));
    return 0;
}

int cmd_info(const Args& a) {
    FLASH_CHECK(!a.files.empty(), "info needs token files", "e.g. tokenizer/bpe info data/train.bin");
    std::unique_ptr<bpe::Tokenizer> tok;
    if (!a.tokenizer.empty()) tok = std::make_unique<bpe::Tokenizer>(bpe::Tokenizer::load(a.tokenizer));
    for (const std::string& f : a.files) {
        if (tok) {
            flash_data::TokenFile tf = flash_data::load_token_file(f, tok->vocab_size());
            size_t docs = 0;
            for (uint32_t id : tf.tokens) docs += id == tok->eot_id();
            printf("%s: %zu tokens, vocab %u, %zu documents\n", f.c_str(), tf.tokens.size(), tf.vocab_size, docs);
        } else {
            flash_data::TokenFileInfo info = flash_data::read_token_file_info(f);
            printf("%s: %llu tokens, vocab %u\n", f.c_str(), (unsigned long long)info.token_count, info.vocab_size);
        }
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(kUsage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    try {
        Args a = parse_args(argc, argv);
        if (a.command == "train") return cmd_train(a);
        if (a.command == "encode") return cmd_encode(a);
        if (a.command == "decode") return cmd_decode(a);
        if (a.command == "info") return cmd_info(a);
        FLASH_FAIL("unknown command '" << a.command << "'", "use train, encode, decode or info");
    } catch (const std::exception& e) {
        fprintf(stderr, "tokenizer/bpe: error: %s\n", e.what());
        return 1;
    }
}
