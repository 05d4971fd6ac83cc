// formats/json_file.h: the one way this project turns text into JSON. Every JSON file it reads (model configs,
// options files, tokenizer.json, run state) and every JSON text inside a file (safetensors headers, checkpoint
// metadata) goes through parse_json, so a rule for all of them goes here, once: the nesting is bounded, and every
// value an error message shows goes through json_excerpt. nlohmann::json parses and prints (dump) by recursion,
// so a value nested a million levels deep would overflow the stack; bounding the nesting before parsing, and
// never printing more than a short excerpt, turns such a file into a clear error instead of a crash.
#pragma once
#include <algorithm>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common.h"

// Deeper than anything this project writes (a checkpoint header is 3 levels, a tokenizer.json 4).
constexpr int kMaxJsonDepth = 64;

// The deepest nesting of [ and { in a JSON text, skipping string literals (and the escapes in them). It scans
// without recursion and stops counting at limit + 1.
inline int json_nesting_depth(std::string_view text, int limit) {
    int depth = 0, deepest = 0;
    bool in_string = false;
    for (size_t i = 0; i < text.size(); i++) {
        const char c = text[i];
        if (in_string) {
            if (c == '\\') i++;
            else if (c == '"') in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            deepest = std::max(deepest, ++depth);
            if (deepest > limit) return deepest;
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return deepest;
}

// At most max_chars of a string, with "..." and the full length when cut.
inline std::string clip_text(const std::string& s, size_t max_chars = 80) {
    if (s.size() <= max_chars) return s;
    return s.substr(0, max_chars) + "... (" + std::to_string(s.size()) + " characters)";
}

// A short description of a value for an error message: scalars as written (clipped), arrays and objects by
// their size, never their contents (which could be deep or huge).
inline std::string json_excerpt(const nlohmann::json& v) {
    if (v.is_array()) return "an array of " + std::to_string(v.size()) + " elements";
    if (v.is_object()) return "an object of " + std::to_string(v.size()) + " keys";
    return clip_text(v.dump(), 60);
}

// Parses text; `what` names it in errors ("options file 'x.json'", "'ckpt.safetensors': the header"). Throws
// flash_error "<what> is not valid JSON: <details> (hint: <hint>)", or for nesting deeper than kMaxJsonDepth,
// with a message of bounded size.
inline nlohmann::json parse_json(std::string_view text, const std::string& what, const std::string& hint) {
    const int depth = json_nesting_depth(text, kMaxJsonDepth);
    FLASH_CHECK(depth <= kMaxJsonDepth, what << " nests JSON arrays or objects more than " << kMaxJsonDepth << " levels deep",
                hint);
    try {
        return nlohmann::json::parse(text.begin(), text.end());
    } catch (const nlohmann::json::exception& ex) {
        // nlohmann's message quotes the last token read, which can be a whole (long) string: clip it.
        FLASH_FAIL(what << " is not valid JSON: " << clip_text(ex.what(), 200), hint);
    }
}

// The JSON content of a file. `what` names the file in errors ("model config", "options file"), and hint says what
// to do about it.
inline nlohmann::json read_json_file(const std::string& path, const std::string& what, const std::string& hint) {
    const std::string text = read_whole_file(path, what, hint);
    return parse_json(text, what + " '" + path + "'", hint);
}
