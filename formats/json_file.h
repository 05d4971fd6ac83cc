// formats/json_file.h: the one way this project turns text into JSON. Every JSON file it reads (model configs,
// options files, tokenizer.json) and every JSON text inside a file (safetensors headers, checkpoint metadata) goes
// through parse_json, so a rule for all of them (a size or nesting bound, say) goes here, once.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "common.h"

// Parses text; a syntax error throws flash_error "<what>: not valid JSON (<details>) (hint: <hint>)".
inline nlohmann::json parse_json(const std::string& text, const std::string& what, const std::string& hint) {
    try {
        return nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& ex) {
        FLASH_FAIL(what << ": not valid JSON (" << ex.what() << ")", hint);
    }
}

// The JSON content of a file. `what` names the file in errors ("model config", "options file"), and hint says what
// to do about it.
inline nlohmann::json read_json_file(const std::string& path, const std::string& what, const std::string& hint) {
    const std::string text = read_whole_file(path, what, hint);
    return parse_json(text, what + " '" + path + "'", hint);
}
