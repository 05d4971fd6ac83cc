// options.h: the one option parser of ./train, ./sample and ./train --debug-state.
//
// A program lists its options once, each with the field it sets, a help line and (for numbers) the range it
// accepts; the same table then parses the command line (--name value, or --name alone for a flag), a JSON options
// file (the same names as keys), prints --help and the option values. Numbers are parsed whole and never wrap:
// "12x", "1.5" for an integer, "4294967297" for an int, "-1" for a seed are errors, and every error names the option
// and the value it got.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common.h"

class OptionTable {
public:
    void add(const char* name, std::string& field, const char* help);
    void add_flag(const char* name, bool& field, const char* help);    // --name alone sets it; JSON true/false
    void add(const char* name, int& field, const char* help, long long min, long long max);
    void add(const char* name, long long& field, const char* help, long long min, long long max);
    void add(const char* name, uint64_t& field, const char* help);     // 0 .. 2^64−1
    void add(const char* name, double& field, const char* help, double min, double max);

    // Sets one option from command-line text, or from a JSON value. Throws flash_error naming option and value.
    void set(const std::string& name, const std::string& text);
    void set_json(const std::string& name, const nlohmann::json& value);
    // Every key of a JSON object (an options file; `origin` names it in errors).
    void set_all_json(const nlohmann::json& object, const std::string& origin);
    // argv[1..argc): --name value pairs and flags. Options named in `skip` take a value and are passed over (the
    // caller handled them, as train does with --options FILE).
    void parse(int argc, char** argv, const std::vector<std::string>& skip = {});

    std::string help() const;            // one line per option: --name, help, (default value)
    nlohmann::json to_json() const;      // every option's current value under its name

    // Checks its text for an integer in [min, max] (whole string, no wrapping). Public for the tests.
    static long long parse_integer(const std::string& option, const std::string& text, long long min, long long max);
    static uint64_t parse_unsigned(const std::string& option, const std::string& text);
    static double parse_number(const std::string& option, const std::string& text, double min, double max);

private:
    struct Option {
        std::string name, help;
        bool flag = false;
        std::function<void(const std::string&)> set_text;
        std::function<void(const nlohmann::json&)> set_json;
        std::function<nlohmann::json()> get;
    };
    std::vector<Option> options_;
    Option& find(const std::string& name);
};
