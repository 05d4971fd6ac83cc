// formats/config.cpp: the model config as JSON. Read formats/config.h first.
#include "formats/config.h"

#include <algorithm>
#include <limits>
#include <sstream>

#include "formats/json_file.h"
#include "model.h"

using json = nlohmann::json;

// ----------------------------------------------------------------------------------------------------
// What every arch's reader does with a field: refuse a key that is not the arch's, and read a key that is present
// (an absent one keeps dst, the default), refusing a value of the wrong kind.

namespace {

void check_fields_belong(const json& j, const std::string& arch, const std::vector<std::string>& known) {
    for (auto it = j.begin(); it != j.end(); ++it) {
        if (std::find(known.begin(), known.end(), it.key()) != known.end()) continue;
        std::string list;
        for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
        FLASH_FAIL("config field '" << clip_text(it.key()) << "' does not belong to arch " << clip_text(arch),
                   "remove it; the fields of " << clip_text(arch) << " are " << list);
    }
}

void read_int(const json& j, const char* k, int& dst) {
    if (!j.contains(k)) return;
    const json& v = j[k];
    FLASH_CHECK(v.is_number_integer(), "config field '" << k << "' must be an integer, got " << json_excerpt(v),
                "write e.g. \"" << k << "\": " << dst);
    long long x = v.get<long long>();
    FLASH_CHECK(x >= std::numeric_limits<int>::min() && x <= std::numeric_limits<int>::max(),
                "config field '" << k << "' is out of range: " << x, "fix '" << k << "'");
    dst = (int)x;
}

void read_double(const json& j, const char* k, double& dst) {
    if (!j.contains(k)) return;
    const json& v = j[k];
    FLASH_CHECK(v.is_number(), "config field '" << k << "' must be a number, got " << json_excerpt(v),
                "write e.g. \"" << k << "\": " << dst);
    dst = v.get<double>();
}

void read_bool(const json& j, const char* k, bool& dst) {
    if (!j.contains(k)) return;
    const json& v = j[k];
    FLASH_CHECK(v.is_boolean(), "config field '" << k << "' must be true or false, got " << json_excerpt(v),
                "write \"" << k << "\": true");
    dst = v.get<bool>();
}

}  // namespace

// ----------------------------------------------------------------------------------------------------
// FLASH (FLASH.md §5)

FlashConfig config_from_json(const json& j) {
    FLASH_CHECK(j.is_object(), "model config must be a JSON object, got " << j.type_name(),
                "write {\"d\": 256, ...} with the keys of FLASH.md section 5");
    FlashConfig c;
    // "arch" names the architecture (model.h: make_model); a FLASH config may say so, or leave it out.
    if (j.contains("arch"))
        FLASH_CHECK(j["arch"] == "flash", "model config field 'arch' is " << json_excerpt(j["arch"]) << ", not \"flash\"",
                    "this is a FLASH config reader; make_model picks the reader for each arch");
    check_fields_belong(j, "flash", {"arch", "vocab_size", "d", "e", "s", "n_layers", "chunk", "seq_len", "causal",
                                     "eps", "rope_base"});
    read_int(j, "vocab_size", c.vocab_size);
    read_int(j, "d", c.d);
    read_int(j, "e", c.e);
    read_int(j, "s", c.s);
    read_int(j, "n_layers", c.n_layers);
    read_int(j, "chunk", c.chunk);
    read_int(j, "seq_len", c.seq_len);
    read_bool(j, "causal", c.causal);
    read_double(j, "eps", c.eps);
    read_double(j, "rope_base", c.rope_base);
    config_validate(c);
    return c;
}

json config_to_json(const FlashConfig& c) {
    return json{{"arch", "flash"}, {"vocab_size", c.vocab_size}, {"d", c.d}, {"e", c.e}, {"s", c.s}, {"n_layers", c.n_layers},
                {"chunk", c.chunk}, {"seq_len", c.seq_len}, {"causal", c.causal}, {"eps", c.eps},
                {"rope_base", c.rope_base}};
}

std::string config_shape_mismatch(const FlashConfig& a, const FlashConfig& b) {
    std::ostringstream os;
    auto cmp = [&](const char* k, double x, double y) {
        if (x != y) os << (os.tellp() > 0 ? ", " : "") << k << ": " << x << " vs " << y;
    };
    cmp("vocab_size", a.vocab_size, b.vocab_size);
    cmp("d", a.d, b.d);
    cmp("e", a.e, b.e);
    cmp("s", a.s, b.s);
    cmp("n_layers", a.n_layers, b.n_layers);
    cmp("chunk", a.chunk, b.chunk);
    cmp("causal", a.causal, b.causal);
    cmp("eps", a.eps, b.eps);
    cmp("rope_base", a.rope_base, b.rope_base);
    return os.str();
}

// ----------------------------------------------------------------------------------------------------
// The baselines (BASELINES.md §6)

TransformerConfig transformer_config_from_json(const json& j) {
    FLASH_CHECK(j.is_object(), "model config must be a JSON object, got " << j.type_name(),
                "write {\"arch\": \"transformer++\", \"d\": 256, ...} with the keys of BASELINES.md section 6");
    TransformerConfig c;
    if (j.contains("arch")) {
        FLASH_CHECK(j["arch"].is_string(), "config field 'arch' must be a string, got " << json_excerpt(j["arch"]),
                    "write \"arch\": \"performer\"");
        c.arch = j["arch"].get<std::string>();
    }
    transformer_config_validate(TransformerConfig{c.arch});  // a clear error for an unknown arch first
    std::vector<std::string> known = {"arch", "vocab_size", "d", "n_layers", "n_heads", "ffn", "seq_len", "causal",
                                      "eps", "rope_base"};
    if (c.performer()) known.push_back("features");
    if (c.combiner()) known.push_back("block");
    check_fields_belong(j, c.arch, known);
    read_int(j, "vocab_size", c.vocab_size);
    read_int(j, "d", c.d);
    // BASELINES.md §1's defaults follow d unless given: H = d/64 where 64 divides d (else 1), f = 3d, m = 4h.
    c.n_heads = (c.d % 64 == 0) ? c.d / 64 : 1;
    c.ffn = 3 * c.d;
    read_int(j, "n_heads", c.n_heads);
    read_int(j, "ffn", c.ffn);
    if (c.n_heads > 0 && c.d % c.n_heads == 0) c.features = 4 * c.head_dim();
    read_int(j, "features", c.features);
    read_int(j, "block", c.block);
    read_int(j, "n_layers", c.n_layers);
    read_int(j, "seq_len", c.seq_len);
    read_bool(j, "causal", c.causal);
    read_double(j, "eps", c.eps);
    read_double(j, "rope_base", c.rope_base);
    transformer_config_validate(c);
    return c;
}

json transformer_config_to_json(const TransformerConfig& c) {
    json j{{"arch", c.arch}, {"vocab_size", c.vocab_size}, {"d", c.d}, {"n_layers", c.n_layers},
           {"n_heads", c.n_heads}, {"ffn", c.ffn}, {"seq_len", c.seq_len}, {"causal", c.causal}, {"eps", c.eps},
           {"rope_base", c.rope_base}};
    if (c.performer()) j["features"] = c.features;
    if (c.combiner()) j["block"] = c.block;
    return j;
}

std::string transformer_shape_mismatch(const TransformerConfig& a, const TransformerConfig& b) {
    std::ostringstream os;
    auto sep = [&]() { return os.tellp() > 0 ? ", " : ""; };
    if (a.arch != b.arch) os << sep() << "arch: " << a.arch << " vs " << b.arch;
    auto cmp = [&](const char* k, double x, double y) {
        if (x != y) os << sep() << k << ": " << x << " vs " << y;
    };
    cmp("vocab_size", a.vocab_size, b.vocab_size);
    cmp("d", a.d, b.d);
    cmp("n_layers", a.n_layers, b.n_layers);
    cmp("n_heads", a.n_heads, b.n_heads);
    cmp("ffn", a.ffn, b.ffn);
    if (a.performer() && b.performer()) cmp("features", a.features, b.features);
    if (a.combiner() && b.combiner()) cmp("block", a.block, b.block);
    cmp("causal", a.causal, b.causal);
    cmp("eps", a.eps, b.eps);
    cmp("rope_base", a.rope_base, b.rope_base);
    return os.str();
}

// ----------------------------------------------------------------------------------------------------
// Any arch

json normalized_model_config(const json& j) {
    FLASH_CHECK(j.is_object(), "model config must be a JSON object, got " << j.type_name(),
                "write {\"arch\": \"flash\", \"d\": 256, ...}");
    const std::string arch = model_arch(j);
    if (arch == "flash") return config_to_json(config_from_json(j));
    if (is_transformer_arch(arch)) return transformer_config_to_json(transformer_config_from_json(j));
    FLASH_FAIL("unknown model architecture '" << clip_text(arch) << "'",
               "\"arch\" is one of flash (the default), transformer++, performer, combiner");
}

const std::vector<std::string>& model_preset_names() {
    static const std::vector<std::string> names = {
        "tiny", "small", "base", "transformer++-tiny", "transformer++-small", "performer-tiny", "performer-small",
        "combiner-tiny", "combiner-small"};
    return names;
}

json load_model_config_json(const std::string& name) {
    if (name == "tiny" || name == "small" || name == "base") return config_to_json(config_preset(name));
    for (const char* arch : {"transformer++", "performer", "combiner"})
        for (const char* size : {"tiny", "small"})
            if (name == std::string(arch) + "-" + size)
                return transformer_config_to_json(transformer_preset(size, arch));
    std::string names;
    for (const std::string& n : model_preset_names()) names += (names.empty() ? "" : ", ") + n;
    const json j = read_json_file(name, "model config", "give a preset (" + names + ") or a path to a JSON model config");
    try {
        return normalized_model_config(j);
    } catch (const flash_error& ex) {
        FLASH_FAIL("model config '" << clip_text(name) << "': " << ex.what(), "fix the file");
    }
}
