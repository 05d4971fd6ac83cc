// tokenizer/bpe.cpp: byte-level BPE: pre-tokenizer, training, encode/decode, tokenizer.json I/O.
#include "tokenizer/bpe.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <unistd.h>
#include <queue>

#include <nlohmann/json.hpp>

#include "common.h"
#include "formats/json_file.h"
#include "tokenizer/unicode_tables.h"

namespace bpe {

// ================================ character classes ===================================================
namespace {

enum CharClass : uint8_t { kLetter, kNumber, kSpace, kOther };

// ASCII is by far the common case: one table lookup.
struct AsciiClasses {
    CharClass c[128];
    constexpr AsciiClasses() : c() {
        for (int i = 0; i < 128; i++) {
            if ((i >= 'a' && i <= 'z') || (i >= 'A' && i <= 'Z')) c[i] = kLetter;
            else if (i >= '0' && i <= '9') c[i] = kNumber;
            else if ((i >= 0x09 && i <= 0x0D) || i == 0x20) c[i] = kSpace;  // \t \n \v \f \r ' '
            else c[i] = kOther;
        }
    }
};
constexpr AsciiClasses kAscii;

template <size_t N>
bool in_ranges(const bpe_unicode::CodepointRange (&table)[N], uint32_t cp) {
    size_t lo = 0, hi = N;  // binary search for the last range with first <= cp
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (table[mid].first <= cp) lo = mid + 1;
        else hi = mid;
    }
    return lo > 0 && cp <= table[lo - 1].last;
}

CharClass classify_codepoint(uint32_t cp) {
    // Unicode White_Space outside ASCII (what \s matches in the regex engines HF tokenizers uses).
    if (cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
        cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000)
        return kSpace;
    if (in_ranges(bpe_unicode::kLetterRanges, cp)) return kLetter;
    if (in_ranges(bpe_unicode::kNumberRanges, cp)) return kNumber;
    return kOther;
}

// Decodes one strictly valid UTF-8 sequence at s[0..n); returns its length, or 0 if the bytes there
// are not valid UTF-8 (the caller then treats the single byte s[0] as an "other" character).
size_t decode_utf8(const unsigned char* s, size_t n, uint32_t& cp) {
    unsigned char b0 = s[0];
    size_t len;
    uint32_t min_cp;
    if (b0 >= 0xC2 && b0 <= 0xDF) { len = 2; cp = b0 & 0x1F; min_cp = 0x80; }
    else if (b0 >= 0xE0 && b0 <= 0xEF) { len = 3; cp = b0 & 0x0F; min_cp = 0x800; }
    else if (b0 >= 0xF0 && b0 <= 0xF4) { len = 4; cp = b0 & 0x07; min_cp = 0x10000; }
    else return 0;  // continuation byte, 0xC0/0xC1 (always overlong), 0xF5.. (beyond U+10FFFF)
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

inline CharClass class_at(const unsigned char* s, size_t n, size_t pos, size_t& len) {
    unsigned char c = s[pos];
    if (c < 0x80) {
        len = 1;
        return kAscii.c[c];
    }
    uint32_t cp;
    len = decode_utf8(s + pos, n - pos, cp);
    if (len == 0) {
        len = 1;
        return kOther;
    }
    return classify_codepoint(cp);
}

// End of the run of characters of class cls that starts at pos.
inline size_t run_end(const unsigned char* s, size_t n, size_t pos, CharClass cls) {
    while (pos < n) {
        size_t len;
        if (class_at(s, n, pos, len) != cls) break;
        pos += len;
    }
    return pos;
}

}  // namespace

size_t next_pretoken(std::string_view text, size_t pos) {
    const unsigned char* s = (const unsigned char*)text.data();
    const size_t n = text.size();
    const unsigned char c0 = s[pos];
    // 's|'t|'re|'ve|'m|'ll|'d  (ASCII apostrophe, lower case only, as in GPT-2)
    if (c0 == '\'' && pos + 1 < n) {
        unsigned char c1 = s[pos + 1];
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return pos + 2;
        if (pos + 2 < n) {
            unsigned char c2 = s[pos + 2];
            if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return pos + 3;
        }
    }
    size_t len;
    CharClass cls = class_at(s, n, pos, len);
    if (cls != kSpace) return run_end(s, n, pos + len, cls);  // \p{L}+ | \p{N}+ | [^\s\p{L}\p{N}]+

    // " ?X+": a single ASCII space glues onto the letters/numbers/others that follow it.
    if (c0 == ' ' && pos + 1 < n) {
        size_t len2;
        CharClass cls2 = class_at(s, n, pos + 1, len2);
        if (cls2 != kSpace) return run_end(s, n, pos + 1 + len2, cls2);
    }
    // \s+(?!\S) | \s+ : a whitespace run. At the end of the text it is taken whole. Before a
    // non-space it gives up its last character (which then starts the next pre-token, e.g. " word"),
    // unless it is a single character, which \s+ then takes alone.
    size_t end = pos, last_start = pos;
    while (end < n) {
        size_t l;
        if (class_at(s, n, end, l) != kSpace) break;
        last_start = end;
        end += l;
    }
    if (end == n) return n;
    return last_start > pos ? last_start : end;
}

std::vector<std::string_view> pretokenize(std::string_view text) {
    std::vector<std::string_view> out;
    for (size_t pos = 0; pos < text.size();) {
        size_t end = next_pretoken(text, pos);
        out.push_back(text.substr(pos, end - pos));
        pos = end;
    }
    return out;
}

// ================================ GPT-2 bytes <-> unicode =============================================
namespace {

struct ByteUnicodeMap {
    uint32_t byte_to_cp[256];
    int16_t cp_to_byte[512];  // every mapped code point is < 0x144
    ByteUnicodeMap() {
        for (int i = 0; i < 512; i++) cp_to_byte[i] = -1;
        uint32_t next_extra = 256;
        for (int b = 0; b < 256; b++) {
            // Printable Latin-1 (except the soft hyphen 0xAD) keeps its own code point; everything else
            // (controls, space, DEL, 0x80-0xA0, 0xAD) gets the next code point from U+0100 on, in byte order.
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            byte_to_cp[b] = printable ? (uint32_t)b : next_extra++;
            cp_to_byte[byte_to_cp[b]] = (int16_t)b;
        }
    }
};
const ByteUnicodeMap& byte_map() {
    static const ByteUnicodeMap m;
    return m;
}

void append_utf8(std::string& out, uint32_t cp) {  // only used for cp < 0x800
    if (cp < 0x80) {
        out.push_back((char)cp);
    } else {
        out.push_back((char)(0xC0 | (cp >> 6)));
        out.push_back((char)(0x80 | (cp & 0x3F)));
    }
}

}  // namespace

std::string bytes_to_unicode(std::string_view bytes) {
    const ByteUnicodeMap& m = byte_map();
    std::string out;
    out.reserve(bytes.size() * 2);
    for (unsigned char b : bytes) append_utf8(out, m.byte_to_cp[b]);
    return out;
}

bool unicode_to_bytes(std::string_view s, std::string& bytes_out) {
    const ByteUnicodeMap& m = byte_map();
    bytes_out.clear();
    const unsigned char* p = (const unsigned char*)s.data();
    for (size_t i = 0; i < s.size();) {
        uint32_t cp;
        size_t len = decode_utf8(p + i, s.size() - i, cp);
        if (p[i] < 0x80) {
            cp = p[i];
            len = 1;
        }
        if (len == 0 || cp >= 512 || m.cp_to_byte[cp] < 0) return false;
        bytes_out.push_back((char)m.cp_to_byte[cp]);
        i += len;
    }
    return true;
}

// ================================ a small string hash table ==========================================
namespace {

inline uint64_t hash_bytes(std::string_view s) {
    // FNV-1a, then a final mix so that the low bits (used for the slot) depend on every byte.
    uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ull;
    h ^= h >> 32;
    return h;
}

// Maps distinct strings to dense indices 0, 1, 2, ... (open addressing, keys in one arena). Used to count
// unique words in training and as encode's word cache. Faster than std::unordered_map<std::string>
// because lookups take a string_view without building a std::string.
class StringIndex {
public:
    StringIndex() { slots_.assign(1024, kEmpty); }
    static constexpr uint32_t kNotFound = UINT32_MAX;

    uint32_t find(std::string_view key, uint64_t h) const {
        size_t mask = slots_.size() - 1;
        for (size_t i = h & mask;; i = (i + 1) & mask) {
            uint32_t e = slots_[i];
            if (e == kEmpty) return kNotFound;
            const Entry& en = entries_[e];
            if (en.hash == h && en.len == key.size() && memcmp(arena_.data() + en.off, key.data(), key.size()) == 0)
                return e;
        }
    }
    // Adds key (which must not be present) and returns its index.
    uint32_t insert(std::string_view key, uint64_t h) {
        if ((entries_.size() + 1) * 2 > slots_.size()) grow();
        uint32_t idx = (uint32_t)entries_.size();
        entries_.push_back({h, arena_.size(), (uint32_t)key.size()});
        arena_.append(key.data(), key.size());
        place(idx);
        return idx;
    }
    size_t size() const { return entries_.size(); }
    std::string_view key(uint32_t idx) const {
        return std::string_view(arena_.data() + entries_[idx].off, entries_[idx].len);
    }
    void clear() {
        entries_.clear();
        arena_.clear();
        slots_.assign(1024, kEmpty);
    }

private:
    static constexpr uint32_t kEmpty = UINT32_MAX;
    struct Entry {
        uint64_t hash;
        size_t off;
        uint32_t len;
    };
    void place(uint32_t idx) {
        size_t mask = slots_.size() - 1;
        size_t i = entries_[idx].hash & mask;
        while (slots_[i] != kEmpty) i = (i + 1) & mask;
        slots_[i] = idx;
    }
    void grow() {
        slots_.assign(slots_.size() * 2, kEmpty);
        for (uint32_t i = 0; i < entries_.size(); i++) place(i);
    }
    std::vector<uint32_t> slots_;
    std::vector<Entry> entries_;
    std::string arena_;
};

inline uint64_t pair_key(uint32_t left, uint32_t right) { return ((uint64_t)left << 32) | right; }

// A special token's text and id.
struct Special {
    std::string_view text;
    uint32_t id;
};

// Calls on_segment(text) for each piece between special-token markers and on_special(id) for each marker (the
// earliest one first; two markers never overlap, as both start with "<|" and end with "|>" with no "|>" inside).
template <class OnSegment, class OnSpecial>
void split_special(std::string_view text, const std::vector<Special>& specials, OnSegment on_segment,
                   OnSpecial on_special) {
    size_t pos = 0;
    for (;;) {
        size_t at = std::string_view::npos;
        const Special* found = nullptr;
        for (const Special& sp : specials) {
            size_t a = text.find(sp.text, pos);
            if (a < at) at = a, found = &sp;
        }
        if (!found) break;
        if (at > pos) on_segment(text.substr(pos, at - pos));
        on_special(found->id);
        pos = at + found->text.size();
    }
    if (pos < text.size()) on_segment(text.substr(pos));
}

}  // namespace

// encode()'s memo: pre-token bytes -> the ids BPE gives it. Real text repeats a few tens of thousands of
// distinct words millions of times, so merging each distinct word once is what makes encoding fast.
class WordCache {
public:
    // Bounds memory on text with unboundedly many distinct words (random bytes, huge whitespace runs).
    static constexpr size_t kMaxWords = 1 << 20, kMaxWordBytes = 256;
    StringIndex index;
    std::vector<std::pair<uint32_t, uint32_t>> spans;  // word index -> (offset, count) in ids
    std::vector<uint32_t> ids;
    void clear() {
        index.clear();
        spans.clear();
        ids.clear();
    }
};

// ================================ the tokenizer =======================================================
Tokenizer::Tokenizer() {
    tokens_.resize(258);
    for (int b = 0; b < 256; b++) {
        tokens_[b] = std::string(1, (char)b);
        byte_to_id_[b] = (uint32_t)b;
    }
    eot_id_ = 256;
    tokens_[eot_id_] = std::string(kEndOfText);
    mask_id_ = 257;
    tokens_[mask_id_] = std::string(kMask);
}

std::vector<uint32_t> Tokenizer::special_ids() const {
    std::vector<uint32_t> ids = {eot_id_};
    if (has_mask()) ids.push_back(mask_id_);
    std::sort(ids.begin(), ids.end());
    return ids;
}

const std::string& Tokenizer::token_bytes(uint32_t id) const {
    FLASH_CHECK(id < tokens_.size(), "token id " << id << " is out of range (vocab size " << tokens_.size() << ")",
                "use ids produced by this tokenizer");
    return tokens_[id];
}

void Tokenizer::build_merge_index() {
    merge_rank_.clear();
    merge_rank_.reserve(merges_.size() * 2);
    for (uint32_t r = 0; r < merges_.size(); r++) {
        bool fresh = merge_rank_.emplace(pair_key(merges_[r].left, merges_[r].right), r).second;
        FLASH_CHECK(fresh, "merge #" << r << " (" << merges_[r].left << ", " << merges_[r].right
                                     << ") repeats an earlier merge of the same pair",
                    "each pair may be merged once; regenerate the tokenizer");
    }
}

// ---- training --------------------------------------------------------------------------------------
// Works on the distinct words (pre-tokens) with their counts instead of the text: ~10 MB of English
// is ~2M words but only ~50K distinct ones. Pair counts are kept up to date incrementally: merging a
// pair only changes the words that contain it, which an index (pair -> words) finds directly. The best
// pair comes from a max-heap with lazy deletion: an entry whose count is stale is re-pushed with the
// current count when popped, and an entry is pushed whenever a pair's count grows, so the top entry,
// once its count is current, is the true maximum.
Tokenizer Tokenizer::train(const std::vector<std::string_view>& texts, uint32_t vocab_size, const Progress& progress) {
    FLASH_CHECK(vocab_size >= 258, "vocab size " << vocab_size << " is too small",
                "it must hold the 256 byte tokens, <|endoftext|> and <|mask|>: use at least 258");
    FLASH_CHECK(vocab_size <= (1u << 30), "vocab size " << vocab_size << " is too large", "use at most 2^30");

    // 1. Distinct words and their counts.
    StringIndex word_index;
    std::vector<uint64_t> word_count;
    for (std::string_view text : texts) {
        split_special(
            text, {{kEndOfText, 0}, {kMask, 0}},
            [&](std::string_view seg) {
                for (size_t pos = 0; pos < seg.size();) {
                    size_t end = next_pretoken(seg, pos);
                    std::string_view w = seg.substr(pos, end - pos);
                    uint64_t h = hash_bytes(w);
                    uint32_t idx = word_index.find(w, h);
                    if (idx == StringIndex::kNotFound) {
                        idx = word_index.insert(w, h);
                        word_count.push_back(0);
                    }
                    word_count[idx]++;
                    pos = end;
                }
            },
            [](uint32_t) {});
    }
    const size_t n_words = word_index.size();

    Tokenizer tok;
    tok.tokens_.resize(256);  // <|endoftext|> and <|mask|> go back at the end, after the merges
    std::vector<std::vector<uint32_t>> words(n_words);
    for (uint32_t w = 0; w < n_words; w++) {
        std::string_view bytes = word_index.key(w);
        words[w].assign((const unsigned char*)bytes.data(), (const unsigned char*)bytes.data() + bytes.size());
    }

    // 2. Initial pair counts (every adjacent pair, overlapping ones too) and the pair -> words index.
    std::unordered_map<uint64_t, int64_t> pair_count;
    std::unordered_map<uint64_t, std::vector<uint32_t>> pair_words;
    pair_count.reserve(1 << 16);
    pair_words.reserve(1 << 16);
    for (uint32_t w = 0; w < n_words; w++) {
        const std::vector<uint32_t>& s = words[w];
        for (size_t i = 0; i + 1 < s.size(); i++) {
            uint64_t k = pair_key(s[i], s[i + 1]);
            pair_count[k] += (int64_t)word_count[w];
            std::vector<uint32_t>& list = pair_words[k];
            if (list.empty() || list.back() != w) list.push_back(w);
        }
    }

    struct HeapItem {
        int64_t count;
        uint64_t key;
        bool operator<(const HeapItem& o) const {  // max count first; ties: smaller pair first
            return count != o.count ? count < o.count : key > o.key;
        }
    };
    std::priority_queue<HeapItem> heap;
    for (const auto& [k, c] : pair_count) heap.push({c, k});

    // Existing token bytes -> id, so that a merge producing bytes that already have a token reuses its
    // id (as HF tokenizers does): vocab strings in tokenizer.json must be unique.
    std::unordered_map<std::string, uint32_t> id_of_bytes;
    for (uint32_t id = 0; id < tok.tokens_.size(); id++) id_of_bytes.emplace(tok.tokens_[id], id);

    const size_t target_tokens = vocab_size - 2;  // everything but <|endoftext|> and <|mask|>
    std::vector<std::pair<uint64_t, int64_t>> deltas;  // this merge's pair-count changes
    while (tok.tokens_.size() < target_tokens && !heap.empty()) {
        HeapItem top = heap.top();
        heap.pop();
        auto it = pair_count.find(top.key);
        int64_t current = it == pair_count.end() ? 0 : it->second;
        if (current != top.count) {
            // Stale. If the count shrank, re-queue it with the true count; if it grew, a newer entry
            // with the true count is already queued.
            if (current > 0 && current < top.count) heap.push({current, top.key});
            continue;
        }
        if (current <= 0) continue;

        const uint32_t left = (uint32_t)(top.key >> 32), right = (uint32_t)top.key;
        std::string merged = tok.tokens_[left] + tok.tokens_[right];
        uint32_t new_id;
        auto found = id_of_bytes.find(merged);
        if (found != id_of_bytes.end()) {
            new_id = found->second;
        } else {
            new_id = (uint32_t)tok.tokens_.size();
            id_of_bytes.emplace(merged, new_id);
            tok.tokens_.push_back(std::move(merged));
        }
        tok.merges_.push_back({left, right, new_id});

        // Rewrite every word that contains the pair: subtract all its pairs, merge, add them back. The
        // unchanged pairs cancel out in the summed deltas.
        std::vector<uint32_t> affected = std::move(pair_words[top.key]);
        pair_words.erase(top.key);
        deltas.clear();
        for (uint32_t w : affected) {
            std::vector<uint32_t>& s = words[w];
            const int64_t f = (int64_t)word_count[w];
            bool has_pair = false;
            for (size_t i = 0; i + 1 < s.size() && !has_pair; i++) has_pair = s[i] == left && s[i + 1] == right;
            if (!has_pair) continue;  // the index may list words that lost the pair to an earlier merge
            for (size_t i = 0; i + 1 < s.size(); i++) deltas.push_back({pair_key(s[i], s[i + 1]), -f});
            size_t out = 0;
            for (size_t i = 0; i < s.size();) {
                if (i + 1 < s.size() && s[i] == left && s[i + 1] == right) {
                    s[out++] = new_id;
                    i += 2;
                } else {
                    s[out++] = s[i++];
                }
            }
            s.resize(out);
            for (size_t i = 0; i + 1 < s.size(); i++) {
                uint64_t k = pair_key(s[i], s[i + 1]);
                deltas.push_back({k, f});
                // Only pairs containing the new token are new to this word; the others are indexed already.
                if (s[i] == new_id || s[i + 1] == new_id) {
                    std::vector<uint32_t>& list = pair_words[k];
                    if (list.empty() || list.back() != w) list.push_back(w);
                }
            }
        }
        std::sort(deltas.begin(), deltas.end());
        for (size_t i = 0; i < deltas.size();) {
            uint64_t k = deltas[i].first;
            int64_t d = 0;
            for (; i < deltas.size() && deltas[i].first == k; i++) d += deltas[i].second;
            if (d == 0) continue;
            int64_t& c = pair_count[k];
            c += d;
            if (d > 0) heap.push({c, k});
        }
        pair_count.erase(top.key);  // every occurrence was merged
        if (progress && (tok.merges_.size() % 256 == 0)) progress(tok.tokens_.size() + 1, vocab_size);
    }

    tok.eot_id_ = (uint32_t)tok.tokens_.size();
    tok.tokens_.push_back(std::string(kEndOfText));
    tok.mask_id_ = (uint32_t)tok.tokens_.size();
    tok.tokens_.push_back(std::string(kMask));
    tok.build_merge_index();
    if (progress) progress(tok.tokens_.size(), vocab_size);
    return tok;
}

// ---- encoding --------------------------------------------------------------------------------------
// Both algorithms apply, over and over, the adjacent pair with the lowest merge rank, leftmost first
// (what HF tokenizers does). A merge creates only pairs with a higher rank than its own (their token
// did not exist before), so this equals "merge every occurrence of the lowest-ranked pair, left to right".

// Short pieces: rescan for the best rank, merge all its occurrences, repeat. O(n * distinct merges).
void Tokenizer::apply_merges_scan(std::vector<uint32_t>& ids) const {
    while (ids.size() >= 2) {
        uint32_t best = UINT32_MAX;
        for (size_t i = 0; i + 1 < ids.size(); i++) {
            auto it = merge_rank_.find(pair_key(ids[i], ids[i + 1]));
            if (it != merge_rank_.end() && it->second < best) best = it->second;
        }
        if (best == UINT32_MAX) return;
        const Merge& m = merges_[best];
        size_t out = 0;
        for (size_t i = 0; i < ids.size();) {
            if (i + 1 < ids.size() && ids[i] == m.left && ids[i + 1] == m.right) {
                ids[out++] = m.result;
                i += 2;
            } else {
                ids[out++] = ids[i++];
            }
        }
        ids.resize(out);
    }
}

// Long pieces (a megabyte of spaces is one pre-token): a min-heap of (rank, position) over a linked
// list of symbols, O(n log n).
void Tokenizer::apply_merges_heap(std::vector<uint32_t>& ids) const {
    const size_t n = ids.size();
    if (n < 2) return;
    constexpr size_t kNone = SIZE_MAX;
    std::vector<size_t> prev(n), next(n);
    std::vector<char> alive(n, 1);
    for (size_t i = 0; i < n; i++) {
        prev[i] = i == 0 ? kNone : i - 1;
        next[i] = i + 1 == n ? kNone : i + 1;
    }
    using Item = std::pair<uint32_t, size_t>;  // (rank, position of the left symbol)
    std::priority_queue<Item, std::vector<Item>, std::greater<Item>> heap;
    auto push_pair = [&](size_t i) {
        if (i == kNone || next[i] == kNone) return;
        auto it = merge_rank_.find(pair_key(ids[i], ids[next[i]]));
        if (it != merge_rank_.end()) heap.push({it->second, i});
    };
    for (size_t i = 0; i + 1 < n; i++) push_pair(i);
    while (!heap.empty()) {
        auto [rank, i] = heap.top();
        heap.pop();
        if (!alive[i] || next[i] == kNone) continue;
        const Merge& m = merges_[rank];
        size_t j = next[i];
        if (ids[i] != m.left || ids[j] != m.right) continue;  // stale: a neighbour changed since
        ids[i] = m.result;
        alive[j] = 0;
        next[i] = next[j];
        if (next[j] != kNone) prev[next[j]] = i;
        push_pair(prev[i]);
        push_pair(i);
    }
    size_t out = 0;
    for (size_t i = 0; i < n; i++)
        if (alive[i]) ids[out++] = ids[i];
    ids.resize(out);
}

std::vector<uint32_t> Tokenizer::encode_piece(std::string_view piece, bool use_heap) const {
    std::vector<uint32_t> ids(piece.size());
    for (size_t i = 0; i < piece.size(); i++) ids[i] = byte_to_id_[(unsigned char)piece[i]];
    if (use_heap) apply_merges_heap(ids);
    else apply_merges_scan(ids);
    return ids;
}

void Tokenizer::encode_segment(std::string_view seg, std::vector<uint32_t>& out, WordCache& cache) const {
    constexpr size_t kHeapFrom = 64;  // symbols; below this the rescanning loop is faster
    std::vector<uint32_t> ids;
    for (size_t pos = 0; pos < seg.size();) {
        size_t end = next_pretoken(seg, pos);
        std::string_view w = seg.substr(pos, end - pos);
        pos = end;
        if (w.size() == 1) {  // a lone byte never merges
            out.push_back(byte_to_id_[(unsigned char)w[0]]);
            continue;
        }
        const bool cacheable = w.size() <= WordCache::kMaxWordBytes;
        uint64_t h = 0;
        if (cacheable) {
            h = hash_bytes(w);
            uint32_t idx = cache.index.find(w, h);
            if (idx != StringIndex::kNotFound) {
                auto [off, cnt] = cache.spans[idx];
                out.insert(out.end(), cache.ids.begin() + off, cache.ids.begin() + off + cnt);
                continue;
            }
        }
        ids.resize(w.size());
        for (size_t i = 0; i < w.size(); i++) ids[i] = byte_to_id_[(unsigned char)w[i]];
        if (ids.size() >= kHeapFrom) apply_merges_heap(ids);
        else apply_merges_scan(ids);
        out.insert(out.end(), ids.begin(), ids.end());
        if (cacheable) {
            if (cache.index.size() >= WordCache::kMaxWords) cache.clear();
            cache.index.insert(w, h);
            cache.spans.push_back({(uint32_t)cache.ids.size(), (uint32_t)ids.size()});
            cache.ids.insert(cache.ids.end(), ids.begin(), ids.end());
        }
    }
}

void Tokenizer::encode_append(std::string_view text, std::vector<uint32_t>& out, bool allow_special,
                              const Progress& progress) const {
    WordCache cache;
    // Long texts go through in ~1 MB slices so that progress can be reported. A slice ends just before
    // a '\n' that follows an ASCII non-space byte: a pre-token always ends there (no run of letters,
    // numbers or others continues into whitespace) and one always starts there (whitespace never joins
    // the token before it), and how the whitespace run is split depends only on what follows it. So the
    // slices give exactly the ids of the whole.
    auto encode_text = [&](std::string_view seg) {
        constexpr size_t kSlice = 1 << 20;
        size_t pos = 0;
        while (pos < seg.size()) {
            size_t end = seg.size();
            if (progress && seg.size() - pos > 2 * kSlice) {
                size_t cut = seg.find('\n', pos + kSlice);
                while (cut != std::string_view::npos && !((unsigned char)seg[cut - 1] < 0x80 &&
                                                          kAscii.c[(unsigned char)seg[cut - 1]] != kSpace))
                    cut = seg.find('\n', cut + 1);
                if (cut != std::string_view::npos) end = cut;
            }
            encode_segment(seg.substr(pos, end - pos), out, cache);
            pos = end;
            if (progress) progress((size_t)(seg.data() + pos - text.data()), text.size());
        }
    };
    std::vector<Special> specials = {{kEndOfText, eot_id_}};
    if (has_mask()) specials.push_back({kMask, mask_id_});
    if (allow_special) split_special(text, specials, encode_text, [&](uint32_t id) { out.push_back(id); });
    else encode_text(text);
    if (progress) progress(text.size(), text.size());
}

std::vector<uint32_t> Tokenizer::encode(std::string_view text, bool allow_special) const {
    std::vector<uint32_t> out;
    out.reserve(text.size() / 3);
    encode_append(text, out, allow_special);
    return out;
}

std::string Tokenizer::decode(const uint32_t* ids, size_t n) const {
    std::string out;
    for (size_t i = 0; i < n; i++) {
        FLASH_CHECK(ids[i] < tokens_.size(), "cannot decode token id " << ids[i] << " at position " << i
                                                 << ": the vocabulary has " << tokens_.size() << " tokens",
                    "decode with the tokenizer that produced the ids");
        out += tokens_[ids[i]];
    }
    return out;
}

// ================================ tokenizer.json ======================================================
std::string Tokenizer::to_json() const {
    using ojson = nlohmann::ordered_json;  // keeps HF's key order, which makes the file easy to read
    ojson vocab = ojson::object();
    {
        // Appends directly to the ordered map's vector: its operator[] searches linearly, which would
        // make writing a large vocabulary quadratic. The keys are unique (checked on load and by train).
        auto& entries = static_cast<ojson::object_t::Container&>(vocab.get_ref<ojson::object_t&>());
        entries.reserve(tokens_.size());
        // The special tokens are listed too (as GPT-2's file does), so that HF gives them these ids for certain.
        for (uint32_t id = 0; id < tokens_.size(); id++) entries.emplace_back(bytes_to_unicode(tokens_[id]), ojson(id));
    }
    ojson merges = ojson::array();
    for (const Merge& m : merges_)
        merges.push_back(bytes_to_unicode(tokens_[m.left]) + " " + bytes_to_unicode(tokens_[m.right]));

    ojson j;
    j["version"] = "1.0";
    j["truncation"] = nullptr;
    j["padding"] = nullptr;
    j["added_tokens"] = ojson::array();
    for (uint32_t id : special_ids())
        j["added_tokens"].push_back(ojson{{"id", id},
                                          {"content", tokens_[id]},
                                          {"single_word", false},
                                          {"lstrip", false},
                                          {"rstrip", false},
                                          {"normalized", false},
                                          {"special", true}});
    j["normalizer"] = nullptr;
    j["pre_tokenizer"] = ojson{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
    j["post_processor"] = nullptr;
    j["decoder"] = ojson{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
    j["model"] = ojson{{"type", "BPE"},
                       {"dropout", nullptr},
                       {"unk_token", nullptr},
                       {"continuing_subword_prefix", nullptr},
                       {"end_of_word_suffix", nullptr},
                       {"fuse_unk", false},
                       {"byte_fallback", false},
                       {"vocab", std::move(vocab)},
                       {"merges", std::move(merges)}};
    return j.dump(1) + "\n";
}

Tokenizer Tokenizer::from_json(std::string_view json_text, const std::string& origin) {
    using nlohmann::json;
    const std::string hint_ours = "write it with `tokenizer/bpe train` (or data/prepare.sh)";
    const json j = parse_json(json_text, origin, "is it a tokenizer.json? " + hint_ours);
    FLASH_CHECK(j.is_object(), origin << ": the top level is not a JSON object", hint_ours);
    // A field that must be null or absent, or hold a given string in "type".
    auto type_of = [&](const char* field) -> std::string {
        if (!j.contains(field) || j[field].is_null()) return "null";
        const json& v = j[field];
        if (!v.is_object() || !v.contains("type") || !v["type"].is_string()) return "(no type)";
        return clip_text(v["type"].get<std::string>());
    };
    FLASH_CHECK(j.contains("model") && j["model"].is_object(), origin << ": no \"model\" object",
                "a tokenizer.json has a model; " << hint_ours);
    const json& model = j["model"];
    FLASH_CHECK(model.contains("type") && model["type"] == "BPE",
                origin << ": model type is " << (model.contains("type") ? json_excerpt(model["type"]) : "missing")
                       << ", only \"BPE\" is supported",
                "this tokenizer reads byte-level BPE files; " << hint_ours);
    FLASH_CHECK(type_of("normalizer") == "null", origin << ": has a normalizer (" << type_of("normalizer") << "), which this tokenizer does not implement",
                "byte-level BPE needs none; " << hint_ours);
    FLASH_CHECK(type_of("pre_tokenizer") == "ByteLevel",
                origin << ": pre_tokenizer is " << type_of("pre_tokenizer") << ", only ByteLevel is supported", hint_ours);
    const json& pre = j["pre_tokenizer"];
    FLASH_CHECK(!pre.contains("add_prefix_space") || pre["add_prefix_space"] == false,
                origin << ": pre_tokenizer add_prefix_space is true, only false is supported", hint_ours);
    FLASH_CHECK(!pre.contains("use_regex") || pre["use_regex"] == true,
                origin << ": pre_tokenizer use_regex is false, only true (the GPT-2 split) is supported", hint_ours);
    std::string dec = type_of("decoder");
    FLASH_CHECK(dec == "ByteLevel" || dec == "null", origin << ": decoder is " << dec << ", only ByteLevel is supported", hint_ours);
    for (const char* field : {"dropout", "continuing_subword_prefix", "end_of_word_suffix"})
        FLASH_CHECK(!model.contains(field) || model[field].is_null(),
                    origin << ": model." << field << " is " << json_excerpt(model[field]) << ", only null is supported", hint_ours);
    FLASH_CHECK(model.contains("vocab") && model["vocab"].is_object(), origin << ": model.vocab is missing or not an object", hint_ours);
    FLASH_CHECK(model.contains("merges") && model["merges"].is_array(), origin << ": model.merges is missing or not an array", hint_ours);

    // Vocabulary: token string -> id, with the special token from added_tokens; ids must be 0..N-1.
    const json& vocab = model["vocab"];
    std::vector<std::string> tokens;
    std::vector<char> assigned;
    std::unordered_map<std::string, uint32_t> id_of_string;  // as spelled in the file
    // Ids must cover 0..N-1 for the N entries, so an id of N or more is wrong; refusing it here also keeps a
    // crafted id from sizing the tables below (a 4-billion-entry vocabulary).
    const size_t n_entries = vocab.size() + (j.contains("added_tokens") ? j["added_tokens"].size() : 0);
    auto assign = [&](uint32_t id, std::string bytes, const std::string& spelled) {
        FLASH_CHECK(id < n_entries, origin << ": token " << clip_text(spelled) << " has id " << id << ", but the file lists only "
                                           << n_entries << " tokens",
                    "ids must be 0..vocab_size-1");
        if (id >= tokens.size()) {
            tokens.resize(id + 1);
            assigned.resize(id + 1, 0);
        }
        FLASH_CHECK(!assigned[id], origin << ": id " << id << " is used by two tokens (" << clip_text(bytes_to_unicode(tokens[id]))
                                          << " and " << clip_text(spelled) << ")", "every id must belong to one token");
        assigned[id] = 1;
        tokens[id] = std::move(bytes);
    };
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
        FLASH_CHECK(it.value().is_number_unsigned(), origin << ": vocab entry \"" << clip_text(it.key()) << "\" has id "
                                                            << json_excerpt(it.value()) << ", not a non-negative integer", hint_ours);
        std::string bytes;
        FLASH_CHECK(unicode_to_bytes(it.key(), bytes) && !bytes.empty(),
                    origin << ": vocab entry \"" << clip_text(it.key()) << "\" is not a string of the GPT-2 byte-level alphabet",
                    "a ByteLevel vocab spells bytes with the bytes-to-unicode mapping (space is \"Ġ\")");
        uint32_t id = it.value().get<uint32_t>();
        assign(id, std::move(bytes), "\"" + it.key() + "\"");
        id_of_string.emplace(it.key(), id);
    }
    FLASH_CHECK(j.contains("added_tokens") && j["added_tokens"].is_array(),
                origin << ": no \"added_tokens\" array", "the file must declare " << kEndOfText << "; " << hint_ours);
    bool have_eot = false;
    uint32_t eot_id = 0, mask_id = kNoToken;
    for (const json& t : j["added_tokens"]) {
        FLASH_CHECK(t.is_object() && t.contains("id") && t["id"].is_number_unsigned() && t.contains("content") &&
                        t["content"].is_string(),
                    origin << ": an added_tokens entry lacks an integer \"id\" or a string \"content\": " << json_excerpt(t), hint_ours);
        std::string content = t["content"];
        uint32_t id = t["id"].get<uint32_t>();
        FLASH_CHECK(content == kEndOfText || content == kMask, origin << ": added token \"" << clip_text(content)
                        << "\" is not supported, only " << kEndOfText << " and " << kMask,
                    "remove other special tokens");
        auto same = id_of_string.find(bytes_to_unicode(content));
        const bool eot = content == kEndOfText;
        FLASH_CHECK(eot ? !have_eot : mask_id == kNoToken, origin << ": " << content << " is listed twice in added_tokens",
                    hint_ours);
        // GPT-2's files (and ours) also list it in the vocab under the same id; then it is assigned already.
        if (same == id_of_string.end() || same->second != id) assign(id, content, content);
        if (eot) {
            have_eot = true;
            eot_id = id;
        } else {
            mask_id = id;
        }
    }
    FLASH_CHECK(have_eot, origin << ": added_tokens lacks " << kEndOfText, "the document separator is required; " << hint_ours);
    for (uint32_t id = 0; id < tokens.size(); id++)
        FLASH_CHECK(assigned[id], origin << ": no token has id " << id << " (ids run up to " << tokens.size() - 1 << ")",
                    "ids must cover 0..vocab_size-1 without gaps");

    Tokenizer tok;
    tok.tokens_ = std::move(tokens);
    tok.eot_id_ = eot_id;
    tok.mask_id_ = mask_id;
    for (int b = 0; b < 256; b++) {
        auto it = id_of_string.find(bytes_to_unicode(std::string(1, (char)b)));
        char hex[8];
        snprintf(hex, sizeof hex, "0x%02X", b);
        FLASH_CHECK(it != id_of_string.end(), origin << ": vocab lacks the token for byte " << hex << " ("
                                                     << bytes_to_unicode(std::string(1, (char)b)) << ")",
                    "a byte-level vocab must contain all 256 bytes");
        tok.byte_to_id_[b] = it->second;
    }

    // Merges: "left right" strings (the classic form) or ["left", "right"] pairs (newer HF versions).
    for (const json& m : model["merges"]) {
        std::string left, right;
        if (m.is_string()) {
            const std::string& s = m.get_ref<const std::string&>();
            size_t sp = s.find(' ');
            FLASH_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < s.size() && s.find(' ', sp + 1) == std::string::npos,
                        origin << ": merge \"" << clip_text(s) << "\" is not two tokens separated by one space", hint_ours);
            left = s.substr(0, sp);
            right = s.substr(sp + 1);
        } else {
            FLASH_CHECK(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(),
                        origin << ": merge " << json_excerpt(m) << " is neither \"a b\" nor [\"a\", \"b\"]", hint_ours);
            left = m[0].get<std::string>();
            right = m[1].get<std::string>();
        }
        auto l = id_of_string.find(left), r = id_of_string.find(right), res = id_of_string.find(left + right);
        FLASH_CHECK(l != id_of_string.end() && r != id_of_string.end(),
                    origin << ": merge \"" << clip_text(left + " " + right) << "\" uses a token that is not in the vocab",
                    "merges may only combine vocab tokens");
        FLASH_CHECK(res != id_of_string.end(),
                    origin << ": merge \"" << clip_text(left + " " + right) << "\" makes \"" << clip_text(left + right) << "\", which is not in the vocab",
                    "every merge result needs a vocab entry");
        tok.merges_.push_back({l->second, r->second, res->second});
    }
    try {
        tok.build_merge_index();
    } catch (const flash_error& e) {
        FLASH_FAIL(origin << ": " << e.what(), hint_ours);
    }
    return tok;
}

void Tokenizer::save(const std::string& path) const {
    std::string text = to_json();
    // Write a temporary file and rename it: an interrupted save never leaves a half-written file under
    // the real name (data/prepare.sh reuses a tokenizer.json that exists).
    std::string tmp = path + "." + std::to_string(getpid()) + ".tmp";  // this process's own: writers never share one
    FILE* f = fopen(tmp.c_str(), "wb");
    FLASH_CHECK(f, "cannot write " << tmp << ": " << strerror(errno), "check that the directory exists and is writable");
    size_t wrote = fwrite(text.data(), 1, text.size(), f);
    int closed = fclose(f);
    FLASH_CHECK(wrote == text.size() && closed == 0, "writing " << tmp << " failed", "check free disk space");
    FLASH_CHECK(rename(tmp.c_str(), path.c_str()) == 0, "cannot rename " << tmp << " to " << path << ": " << strerror(errno),
                "check the directory's permissions");
}

Tokenizer Tokenizer::load(const std::string& path) {
    const std::string text = read_whole_file(path, "tokenizer", "train one with `tokenizer/bpe train` or run data/prepare.sh");
    return from_json(text, path);
}

}  // namespace bpe
