// tokenizer/bpe.h: a byte-level BPE tokenizer (GPT-2 style), trained, used and saved from C++.
//
//   text --split on <|endoftext|>--> segments --pre-tokenize (GPT-2 regex, by hand)--> words
//        --bytes--> initial ids --apply merges by rank--> token ids
//
// Token ids: the 256 single bytes, then one token per learned merge, then <|endoftext|>, then <|mask|> last.
// A tokenizer.json from before <|mask|> existed (no mask in added_tokens) still loads, with has_mask() false:
// it serves auto-regressive training as before; the masked-LM objective needs the mask token.
// A trained tokenizer gives byte b the id b; a loaded tokenizer.json may number tokens any way it
// likes (every id in [0, vocab_size) used once), so the code never assumes "id < 256 means a byte".
//
// The file format is Hugging Face tokenizers' tokenizer.json (BPE model, ByteLevel pre-tokenizer and
// decoder, GPT-2 bytes-to-unicode vocab strings), so that library encodes text to the same ids.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace bpe {

// The special tokens; encode() turns each one's text into one id. <|endoftext|> separates documents; <|mask|> is
// what the masked-LM objective puts in place of a hidden token (data/mlm.h).
inline constexpr std::string_view kEndOfText = "<|endoftext|>";
inline constexpr std::string_view kMask = "<|mask|>";
inline constexpr uint32_t kNoToken = UINT32_MAX;  // mask_id() of a tokenizer without <|mask|>

// ---- pre-tokenizer ---------------------------------------------------------------------------------
// GPT-2's pattern, implemented by hand (no regex engine, so it is fast and has no dependency):
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Characters are classified by decoding UTF-8: \p{L} and \p{N} are the Unicode general categories
// L* and N* (tables in unicode_tables.h), \s is the Unicode White_Space property. A byte that does not
// start a valid UTF-8 sequence (stray continuation byte, overlong form, surrogate, > U+10FFFF,
// truncated sequence) counts as one character of class "other" (like punctuation), so invalid input
// still splits into pieces that cover every byte exactly once.
//
// Returns the end (exclusive) of the pre-token that starts at pos (pos < text.size()).
size_t next_pretoken(std::string_view text, size_t pos);
// All pre-tokens of text, in order; their concatenation is text. (Convenience for tests and tools.)
std::vector<std::string_view> pretokenize(std::string_view text);

// ---- GPT-2 bytes-to-unicode mapping (how tokenizer.json spells byte strings) --------------------------
// Printable bytes map to themselves, the others (controls, space, 0x7F-0xA0, 0xAD) to U+0100 upwards,
// so that every token is a printable string without spaces: ' ' is 'Ġ' (U+0120), '\n' is 'Ċ' (U+010A).
std::string bytes_to_unicode(std::string_view bytes);
// The inverse; returns false if s holds a character outside the 256 mapped ones (or is not UTF-8).
bool unicode_to_bytes(std::string_view s, std::string& bytes_out);

// Called now and then during long work with (units done, units total).
using Progress = std::function<void(size_t done, size_t total)>;

class WordCache;  // encode's word -> ids memo (bpe.cpp)

class Tokenizer {
public:
    struct Merge {
        uint32_t left, right;  // the pair of ids that merges
        uint32_t result;       // the id it becomes
    };

    // The untrained tokenizer: the 256 byte tokens, <|endoftext|> and <|mask|> (vocab_size 258).
    Tokenizer();

    // Learns merges on texts until the vocabulary (bytes + merges + <|endoftext|> + <|mask|>) has vocab_size
    // tokens, or no pair occurs any more (then it is smaller: check vocab_size()). Each text is split on the
    // special tokens first; they are never part of a merge. Ties between equally frequent
    // pairs go to the pair with the smaller (left id, right id), so training is deterministic.
    static Tokenizer train(const std::vector<std::string_view>& texts, uint32_t vocab_size,
                           const Progress& progress = nullptr);

    // Text to ids. With allow_special, each "<|endoftext|>" in text becomes eot_id() (and "<|mask|>" mask_id(),
    // when the tokenizer has it, as HF does); without, they are encoded as ordinary text. Any byte string is accepted (invalid UTF-8, NUL bytes, empty).
    std::vector<uint32_t> encode(std::string_view text, bool allow_special = true) const;
    // Same, appending to out; progress gets (bytes done, bytes total) about every megabyte.
    void encode_append(std::string_view text, std::vector<uint32_t>& out, bool allow_special = true,
                       const Progress& progress = nullptr) const;
    // The ids of one pre-token (no special-token handling). use_heap picks the O(n log n) algorithm
    // that encode() uses for long pieces; both give the same ids (tests compare them).
    std::vector<uint32_t> encode_piece(std::string_view piece, bool use_heap) const;

    // Ids to bytes: the concatenation of the tokens' bytes. decode(encode(x)) == x for every x.
    // An id >= vocab_size() is an error (flash_error).
    std::string decode(const uint32_t* ids, size_t n) const;
    std::string decode(const std::vector<uint32_t>& ids) const { return decode(ids.data(), ids.size()); }

    uint32_t vocab_size() const { return (uint32_t)tokens_.size(); }
    uint32_t eot_id() const { return eot_id_; }
    bool has_mask() const { return mask_id_ != kNoToken; }
    uint32_t mask_id() const { return mask_id_; }  // kNoToken when !has_mask()
    // The special tokens' ids, ascending: what is never an "ordinary" token.
    std::vector<uint32_t> special_ids() const;
    const std::vector<Merge>& merges() const { return merges_; }  // in rank order (first learned first)
    const std::string& token_bytes(uint32_t id) const;             // a token's bytes ("<|endoftext|>" for eot)
    uint32_t byte_id(uint8_t b) const { return byte_to_id_[b]; }

    // tokenizer.json text (Hugging Face format) and back. from_json refuses, with a flash_error naming
    // the problem, anything this class cannot reproduce exactly: not JSON, not a BPE model, another
    // pre-tokenizer or a normalizer, vocab strings outside the byte alphabet, missing byte tokens,
    // duplicate or missing ids, merges of unknown tokens, added tokens other than <|endoftext|> and
    // <|mask|> (<|endoftext|> is required, <|mask|> optional).
    std::string to_json() const;
    static Tokenizer from_json(std::string_view json_text, const std::string& origin = "tokenizer.json");
    void save(const std::string& path) const;
    static Tokenizer load(const std::string& path);

private:
    void build_merge_index();  // merge_rank_ from merges_; refuses duplicate pairs
    void apply_merges_scan(std::vector<uint32_t>& ids) const;
    void apply_merges_heap(std::vector<uint32_t>& ids) const;
    void encode_segment(std::string_view segment, std::vector<uint32_t>& out, WordCache& cache) const;

    std::vector<std::string> tokens_;  // id -> bytes
    std::vector<Merge> merges_;        // rank -> merge
    uint32_t byte_to_id_[256];
    uint32_t eot_id_ = 256;
    uint32_t mask_id_ = 257;
    std::unordered_map<uint64_t, uint32_t> merge_rank_;  // (left << 32 | right) -> rank
};

}  // namespace bpe
