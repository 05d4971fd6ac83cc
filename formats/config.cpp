// formats/config.cpp: the model config as JSON. Read formats/config.h first.
#include "formats/config.h"

#include <limits>
#include <sstream>

#include "formats/json_file.h"

using json = nlohmann::json;

FlashConfig config_from_json(const json& j) {
    FLASH_CHECK(j.is_object(), "model config must be a JSON object, got " << j.type_name(),
                "write {\"d\": 256, ...} with the keys of FLASH.md section 5");
    FlashConfig c;
    // "arch" names the architecture (model.h: make_model); a FLASH config may say so, or leave it out.
    if (j.contains("arch"))
        FLASH_CHECK(j["arch"] == "flash", "model config field 'arch' is " << json_excerpt(j["arch"]) << ", not \"flash\"",
                    "this is a FLASH config reader; make_model picks the reader for each arch");
    static const char* known[] = {"arch", "vocab_size", "d", "e", "s", "n_layers", "chunk", "seq_len", "causal", "eps",
                                  "rope_base"};
    for (auto it = j.begin(); it != j.end(); ++it) {
        bool ok = false;
        for (const char* k : known) ok = ok || it.key() == k;
        FLASH_CHECK(ok, "unknown model config field '" << clip_text(it.key()) << "'",
                    "the fields are vocab_size, d, e, s, n_layers, chunk, seq_len, causal, eps, rope_base");
    }
    auto get_int = [&](const char* k, int& dst) {
        if (!j.contains(k)) return;
        const json& v = j[k];
        FLASH_CHECK(v.is_number_integer(), "config field '" << k << "' must be an integer, got " << json_excerpt(v),
                    "write e.g. \"" << k << "\": " << dst);
        long long x = v.get<long long>();
        FLASH_CHECK(x >= std::numeric_limits<int>::min() && x <= std::numeric_limits<int>::max(),
                    "config field '" << k << "' is out of range: " << x, "fix '" << k << "'");
        dst = (int)x;
    };
    auto get_double = [&](const char* k, double& dst) {
        if (!j.contains(k)) return;
        const json& v = j[k];
        FLASH_CHECK(v.is_number(), "config field '" << k << "' must be a number, got " << json_excerpt(v),
                    "write e.g. \"" << k << "\": " << dst);
        dst = v.get<double>();
    };
    get_int("vocab_size", c.vocab_size);
    get_int("d", c.d);
    get_int("e", c.e);
    get_int("s", c.s);
    get_int("n_layers", c.n_layers);
    get_int("chunk", c.chunk);
    get_int("seq_len", c.seq_len);
    if (j.contains("causal")) {
        FLASH_CHECK(j["causal"].is_boolean(), "config field 'causal' must be true or false, got " << json_excerpt(j["causal"]),
                    "write \"causal\": true");
        c.causal = j["causal"].get<bool>();
    }
    get_double("eps", c.eps);
    get_double("rope_base", c.rope_base);
    config_validate(c);
    return c;
}

json config_to_json(const FlashConfig& c) {
    return json{{"vocab_size", c.vocab_size}, {"d", c.d}, {"e", c.e}, {"s", c.s}, {"n_layers", c.n_layers},
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

FlashConfig load_model_config(const std::string& name) {
    if (name == "tiny" || name == "small" || name == "base") return config_preset(name);
    const json j = read_json_file(name, "model config", "give tiny, small, base or a path to a JSON file (FLASH.md section 5)");
    try {
        return config_from_json(j);
    } catch (const flash_error& ex) {
        FLASH_FAIL("model config '" << name << "': " << ex.what(), "fix the file");
    }
}
