// options.cpp: the one option parser. Read options.h first.
#include "options.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "formats/json_file.h"

using json = nlohmann::json;

// ----------------------------------------------------------------------------------------------------
// Numbers: the whole text, or an error naming the option and the text.

long long OptionTable::parse_integer(const std::string& option, const std::string& text, long long min,
                                     long long max) {
    long long v = 0;
    const char *first = text.data(), *last = text.data() + text.size();
    const auto [end, err] = std::from_chars(first, last, v);
    FLASH_CHECK(!text.empty() && end == last && err != std::errc::invalid_argument,
                "option --" << option << ": '" << clip_text(text) << "' is not an integer", "give an integer in " << min << ".." << max);
    FLASH_CHECK(err != std::errc::result_out_of_range && v >= min && v <= max,
                "option --" << option << ": " << clip_text(text) << " is out of range", "give an integer in " << min << ".." << max);
    return v;
}

uint64_t OptionTable::parse_unsigned(const std::string& option, const std::string& text) {
    unsigned long long v = 0;
    const char *first = text.data(), *last = text.data() + text.size();
    const auto [end, err] = std::from_chars(first, last, v);  // no sign accepted: "-1" is not a number here
    FLASH_CHECK(!text.empty() && end == last && err != std::errc::invalid_argument,
                "option --" << option << ": '" << clip_text(text) << "' is not a non-negative integer",
                "give an integer in 0..18446744073709551615");
    FLASH_CHECK(err != std::errc::result_out_of_range, "option --" << option << ": " << clip_text(text) << " is out of range",
                "give an integer in 0..18446744073709551615");
    return (uint64_t)v;
}

double OptionTable::parse_number(const std::string& option, const std::string& text, double min, double max) {
    char* end = nullptr;
    const double v = text.empty() ? 0.0 : std::strtod(text.c_str(), &end);
    FLASH_CHECK(!text.empty() && end == text.c_str() + text.size() && std::isfinite(v),
                "option --" << option << ": '" << clip_text(text) << "' is not a number", "give a number in " << min << ".." << max);
    FLASH_CHECK(v >= min && v <= max, "option --" << option << ": " << clip_text(text) << " is out of range",
                "give a number in " << min << ".." << max);
    return v;
}

// ----------------------------------------------------------------------------------------------------
// The table

void OptionTable::add(const char* name, std::string& field, const char* help) {
    Option o;
    o.name = name;
    o.help = help;
    o.set_text = [&field](const std::string& text) { field = text; };
    o.set_json = [&field, name](const json& j) {
        FLASH_CHECK(j.is_string(), "option '" << name << "' must be a string, got " << json_excerpt(j),
                    "write \"" << name << "\": \"...\"");
        field = j.get<std::string>();
    };
    o.get = [&field]() { return json(field); };
    options_.push_back(std::move(o));
}

void OptionTable::add_flag(const char* name, bool& field, const char* help) {
    Option o;
    o.name = name;
    o.help = help;
    o.flag = true;
    o.set_text = [&field](const std::string&) { field = true; };
    o.set_json = [&field, name](const json& j) {
        FLASH_CHECK(j.is_boolean(), "option '" << name << "' must be true or false, got " << json_excerpt(j),
                    "write \"" << name << "\": true");
        field = j.get<bool>();
    };
    o.get = [&field]() { return json(field); };
    options_.push_back(std::move(o));
}

// An integer from JSON: an integer value, checked by the same text rule (so it cannot wrap either).
static std::string json_integer_text(const char* name, const json& j) {
    FLASH_CHECK(j.is_number_integer(), "option '" << name << "' must be an integer, got " << json_excerpt(j),
                "write \"" << name << "\": 1");
    return j.dump();
}

void OptionTable::add(const char* name, int& field, const char* help, long long min, long long max) {
    Option o;
    o.name = name;
    o.help = help;
    o.set_text = [&field, name, min, max](const std::string& text) { field = (int)parse_integer(name, text, min, max); };
    o.set_json = [set = o.set_text, name](const json& j) { set(json_integer_text(name, j)); };
    o.get = [&field]() { return json(field); };
    options_.push_back(std::move(o));
}

void OptionTable::add(const char* name, long long& field, const char* help, long long min, long long max) {
    Option o;
    o.name = name;
    o.help = help;
    o.set_text = [&field, name, min, max](const std::string& text) { field = parse_integer(name, text, min, max); };
    o.set_json = [set = o.set_text, name](const json& j) { set(json_integer_text(name, j)); };
    o.get = [&field]() { return json(field); };
    options_.push_back(std::move(o));
}

void OptionTable::add(const char* name, uint64_t& field, const char* help) {
    Option o;
    o.name = name;
    o.help = help;
    o.set_text = [&field, name](const std::string& text) { field = parse_unsigned(name, text); };
    o.set_json = [set = o.set_text, name](const json& j) { set(json_integer_text(name, j)); };
    o.get = [&field]() { return json(field); };
    options_.push_back(std::move(o));
}

void OptionTable::add(const char* name, double& field, const char* help, double min, double max) {
    Option o;
    o.name = name;
    o.help = help;
    o.set_text = [&field, name, min, max](const std::string& text) { field = parse_number(name, text, min, max); };
    o.set_json = [&field, name, min, max](const json& j) {
        FLASH_CHECK(j.is_number(), "option '" << name << "' must be a number, got " << json_excerpt(j),
                    "write \"" << name << "\": 0.5");
        const double v = j.get<double>();
        FLASH_CHECK(v >= min && v <= max, "option '" << name << "': " << json_excerpt(j) << " is out of range",
                    "give a number in " << min << ".." << max);
        field = v;
    };
    o.get = [&field]() { return json(field); };
    options_.push_back(std::move(o));
}

OptionTable::Option& OptionTable::find(const std::string& name) {
    for (Option& o : options_)
        if (o.name == name) return o;
    FLASH_FAIL("unknown option '--" << clip_text(name) << "'", "see --help for the options");
}

void OptionTable::set(const std::string& name, const std::string& text) { find(name).set_text(text); }
void OptionTable::set_json(const std::string& name, const json& value) { find(name).set_json(value); }

void OptionTable::set_all_json(const json& object, const std::string& origin) {
    FLASH_CHECK(object.is_object(), origin << " must hold a JSON object", "write {\"name\": value, ...}");
    for (auto it = object.begin(); it != object.end(); ++it) set_json(it.key(), *it);
}

void OptionTable::parse(int argc, char** argv, const std::vector<std::string>& skip) {
    for (int i = 1; i < argc; i++) {
        const std::string arg = argv[i];
        FLASH_CHECK(arg.size() > 2 && arg.compare(0, 2, "--") == 0, "unexpected argument '" << arg << "'",
                    "options are --name value; see --help");
        const std::string name = arg.substr(2);
        bool skipped = false;
        for (const std::string& s : skip) skipped = skipped || s == name;
        if (skipped) {
            i++;
            continue;
        }
        Option& o = find(name);
        if (o.flag) {
            o.set_text("");
            continue;
        }
        FLASH_CHECK(i + 1 < argc, "option --" << name << " needs a value", "see --help");
        o.set_text(argv[++i]);
    }
}

std::string OptionTable::help() const {
    std::ostringstream os;
    for (const Option& o : options_) {
        char line[512];
        if (o.flag) std::snprintf(line, sizeof line, "  --%-16s %s\n", o.name.c_str(), o.help.c_str());
        else std::snprintf(line, sizeof line, "  --%-16s %-56s (default %s)\n", o.name.c_str(), o.help.c_str(),
                           o.get().dump().c_str());
        os << line;
    }
    return os.str();
}

json OptionTable::to_json() const {
    json j = json::object();
    for (const Option& o : options_) j[o.name] = o.get();
    return j;
}
