// data/tokenfile.h: token files, the tokenized corpus that training reads.
//
// Layout (little-endian), 32-byte header then the ids:
//   offset  0  char[8]  magic "FLASHTOK"
//   offset  8  uint32   version (1)
//   offset 12  uint32   vocab_size        every id is < vocab_size
//   offset 16  uint32   bytes_per_token   2 (uint16 ids) if vocab_size <= 65536, else 4 (uint32 ids)
//   offset 20  uint32   reserved, 0
//   offset 24  uint64   token_count
//   offset 32  token_count ids of bytes_per_token bytes each, nothing after them
// Documents are separated by the tokenizer's <|endoftext|> id (data/prepare.sh puts one before each).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace flash_data {

inline constexpr char kTokenFileMagic[8] = {'F', 'L', 'A', 'S', 'H', 'T', 'O', 'K'};
inline constexpr uint32_t kTokenFileVersion = 1;
inline constexpr size_t kTokenFileHeaderBytes = 32;

// The width a vocabulary needs: 2 bytes per id up to 65536 tokens, else 4.
inline uint32_t token_bytes_for_vocab(uint32_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

struct TokenFile {
    uint32_t vocab_size = 0;
    std::vector<uint32_t> tokens;  // widened to uint32 in memory whatever the width on disk
};

// Writes tokens; refuses (flash_error) an id >= vocab_size or an unwritable path.
void save_token_file(const std::string& path, const uint32_t* tokens, size_t count, uint32_t vocab_size);
inline void save_token_file(const std::string& path, const std::vector<uint32_t>& tokens, uint32_t vocab_size) {
    save_token_file(path, tokens.data(), tokens.size(), vocab_size);
}

// Reads and validates a token file. Each problem gets its own flash_error: missing file, shorter than
// a header, bad magic, unknown version, zero vocab, width that does not match the vocab, truncated ids,
// bytes after the ids, an id >= vocab_size. If expected_vocab_size is not 0 the file's vocab size
// must equal it (a token file made with another tokenizer is refused).
TokenFile load_token_file(const std::string& path, uint32_t expected_vocab_size = 0);

// Just the header (cheap: does not read the ids), validated like load_token_file does.
struct TokenFileInfo {
    uint32_t vocab_size = 0;
    uint64_t token_count = 0;
};
TokenFileInfo read_token_file_info(const std::string& path);

}  // namespace flash_data
