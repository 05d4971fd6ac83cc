// json_util.h: JSON read from files and command lines, made safe against crafted input. Every JSON text this
// project parses goes through parse_json_bounded, and every value an error message shows goes through
// json_excerpt: nlohmann::json prints (dump) by recursion, so a value nested a million levels deep would
// overflow the stack inside an error message. Bounding the nesting before parsing, and never printing more
// than a short excerpt, turns such a file into a clear error instead of a crash.
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

// Parses JSON text; `what` names it in errors ("options file 'x.json'", "'ckpt.safetensors': header").
// Throws flash_error for nesting deeper than kMaxJsonDepth or invalid JSON, with a message of bounded size.
inline nlohmann::json parse_json_bounded(std::string_view text, const std::string& what, const std::string& hint) {
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
