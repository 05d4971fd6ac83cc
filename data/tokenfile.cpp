// data/tokenfile.cpp: writing and validating token files (format in tokenfile.h).
#include "data/tokenfile.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <unistd.h>

#include "common.h"

namespace flash_data {
namespace {

const char* kRemake = "regenerate it with data/prepare.sh (or `tokenizer/bpe encode`)";

// The format is little-endian; this code reads and writes host order, so it refuses big-endian hosts.
bool host_is_little_endian() {
    const uint32_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    return first == 1;
}

struct Header {
    char magic[8];
    uint32_t version;
    uint32_t vocab_size;
    uint32_t bytes_per_token;
    uint32_t reserved;
    uint64_t token_count;
};
static_assert(sizeof(Header) == kTokenFileHeaderBytes, "token file header must be 32 bytes");

// RAII so that every early FLASH_FAIL closes the file.
struct File {
    FILE* f = nullptr;
    ~File() {
        if (f) fclose(f);
    }
};

// Opens path and reads + validates the header; leaves the file positioned after it.
Header read_header(const std::string& path, File& file, uint64_t& file_size) {
    FLASH_CHECK(host_is_little_endian(), "token files are little-endian and this machine is not", "run on x86-64 or ARM64");
    file.f = fopen(path.c_str(), "rb");
    FLASH_CHECK(file.f, "cannot open token file " << path << ": " << strerror(errno), "create it with data/prepare.sh");
    FLASH_CHECK(fseek(file.f, 0, SEEK_END) == 0, "cannot seek in " << path << ": " << strerror(errno), "is it a regular file?");
    long size = ftell(file.f);
    FLASH_CHECK(size >= 0, "cannot tell the size of " << path << ": " << strerror(errno), "is it a regular file?");
    FLASH_CHECK(fseek(file.f, 0, SEEK_SET) == 0, "cannot seek in " << path << ": " << strerror(errno), "is it a regular file?");
    file_size = (uint64_t)size;
    FLASH_CHECK(file_size >= kTokenFileHeaderBytes,
                "token file " << path << " is truncated: " << file_size << " bytes, shorter than the "
                              << kTokenFileHeaderBytes << "-byte header",
                kRemake);
    Header h;
    FLASH_CHECK(fread(&h, sizeof h, 1, file.f) == 1, "cannot read the header of " << path, kRemake);
    FLASH_CHECK(memcmp(h.magic, kTokenFileMagic, 8) == 0,
                path << " is not a token file (bad magic: expected \"FLASHTOK\")",
                "pass a .bin written by `tokenizer/bpe encode`; " << kRemake);
    FLASH_CHECK(h.version == kTokenFileVersion,
                "token file " << path << " has version " << h.version << ", this program reads version " << kTokenFileVersion,
                kRemake);
    FLASH_CHECK(h.vocab_size > 0, "token file " << path << " says its vocab size is 0", kRemake);
    FLASH_CHECK(h.bytes_per_token == token_bytes_for_vocab(h.vocab_size),
                "token file " << path << " stores " << h.bytes_per_token << " bytes per token, but vocab size "
                              << h.vocab_size << " needs " << token_bytes_for_vocab(h.vocab_size),
                "the header is corrupt; " << kRemake);
    const uint64_t data_bytes = file_size - kTokenFileHeaderBytes;
    // Compare by division first: a corrupt count times the width could overflow 64 bits.
    FLASH_CHECK(h.token_count <= data_bytes / h.bytes_per_token,
                "token file " << path << " is truncated: the header promises " << h.token_count << " tokens of "
                              << h.bytes_per_token << " bytes but only " << data_bytes << " bytes of ids follow",
                "the file was cut short (interrupted copy or write?); " << kRemake);
    const uint64_t expect_bytes = h.token_count * h.bytes_per_token;
    FLASH_CHECK(data_bytes == expect_bytes,
                "token file " << path << " has " << data_bytes - expect_bytes << " unexpected bytes after its "
                              << h.token_count << " tokens",
                "the header's token count is wrong or data was appended; " << kRemake);
    return h;
}

}  // namespace

void save_token_file(const std::string& path, const uint32_t* tokens, size_t count, uint32_t vocab_size) {
    FLASH_CHECK(host_is_little_endian(), "token files are little-endian and this machine is not", "run on x86-64 or ARM64");
    FLASH_CHECK(vocab_size > 0, "cannot write token file " << path << " with vocab size 0", "pass the tokenizer's vocab size");
    for (size_t i = 0; i < count; i++)
        FLASH_CHECK(tokens[i] < vocab_size, "cannot write token file " << path << ": token " << i << " is id " << tokens[i]
                                                                      << ", not below the vocab size " << vocab_size,
                    "encode with the tokenizer whose vocab size you pass");
    Header h;
    memcpy(h.magic, kTokenFileMagic, 8);
    h.version = kTokenFileVersion;
    h.vocab_size = vocab_size;
    h.bytes_per_token = token_bytes_for_vocab(vocab_size);
    h.reserved = 0;
    h.token_count = count;

    // Write to a temporary name and rename, so that an interrupted run never leaves a half file under
    // the real name (data/prepare.sh reuses files that exist).
    std::string tmp = path + "." + std::to_string(getpid()) + ".tmp";  // this process's own: writers never share one
    File file;
    file.f = fopen(tmp.c_str(), "wb");
    FLASH_CHECK(file.f, "cannot write " << tmp << ": " << strerror(errno), "check that the directory exists and is writable");
    FLASH_CHECK(fwrite(&h, sizeof h, 1, file.f) == 1, "writing the header of " << tmp << " failed", "check free disk space");
    constexpr size_t kChunk = 1 << 16;
    std::vector<uint16_t> narrow;
    for (size_t at = 0; at < count; at += kChunk) {
        size_t n = std::min(kChunk, count - at);
        size_t wrote;
        if (h.bytes_per_token == 2) {
            narrow.assign(tokens + at, tokens + at + n);  // ids < 65536 here, checked above
            wrote = fwrite(narrow.data(), 2, n, file.f);
        } else {
            wrote = fwrite(tokens + at, 4, n, file.f);
        }
        FLASH_CHECK(wrote == n, "writing the tokens of " << tmp << " failed", "check free disk space");
    }
    FILE* f = file.f;
    file.f = nullptr;
    FLASH_CHECK(fclose(f) == 0, "closing " << tmp << " failed", "check free disk space");
    FLASH_CHECK(rename(tmp.c_str(), path.c_str()) == 0, "cannot rename " << tmp << " to " << path << ": " << strerror(errno),
                "check the directory's permissions");
}

TokenFileInfo read_token_file_info(const std::string& path) {
    File file;
    uint64_t size;
    Header h = read_header(path, file, size);
    return {h.vocab_size, h.token_count};
}

TokenFile load_token_file(const std::string& path, uint32_t expected_vocab_size) {
    File file;
    uint64_t size;
    Header h = read_header(path, file, size);
    FLASH_CHECK(expected_vocab_size == 0 || h.vocab_size == expected_vocab_size,
                "token file " << path << " was made with a vocab of " << h.vocab_size << " tokens, but the tokenizer has "
                              << expected_vocab_size,
                "use the tokenizer.json that made it, or re-encode with data/prepare.sh");
    TokenFile out;
    out.vocab_size = h.vocab_size;
    out.tokens.resize(h.token_count);
    if (h.bytes_per_token == 4) {
        FLASH_CHECK(fread(out.tokens.data(), 4, h.token_count, file.f) == h.token_count, "reading the tokens of " << path << " failed",
                    kRemake);
    } else {
        std::vector<uint16_t> narrow(h.token_count);
        FLASH_CHECK(fread(narrow.data(), 2, h.token_count, file.f) == h.token_count, "reading the tokens of " << path << " failed",
                    kRemake);
        for (size_t i = 0; i < narrow.size(); i++) out.tokens[i] = narrow[i];
    }
    for (size_t i = 0; i < out.tokens.size(); i++)
        FLASH_CHECK(out.tokens[i] < h.vocab_size, "token file " << path << " holds id " << out.tokens[i] << " at position " << i
                                                               << ", out of range for its vocab size " << h.vocab_size,
                    "the file is corrupt; " << kRemake);
    return out;
}

}  // namespace flash_data
