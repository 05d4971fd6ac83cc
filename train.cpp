// train.cpp: the FLASH program. For now it has one mode, --debug-state, which writes the state the CUDA port
// and outside checks compare against: a batch, its loss, every parameter and every parameter's gradient.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "flash.h"

static void usage() {
    std::printf(
        "usage: ./train --debug-state OUT.safetensors [options]\n"
        "  --config NAME|FILE   tiny, small, base, or a JSON model config (default tiny)\n"
        "  --load CKPT          take the model (and its config) from a checkpoint instead of a fresh init\n"
        "  --seed N             seed of the fresh weights and of the random batch (default 1)\n"
        "  --strong-init        gamma ~ N(1,0.5), beta and rel_bias ~ N(0,0.5) (FLASH.md section 1)\n"
        "  --batch B            batch rows (default 2); T is the config's seq_len\n"
        "  --double             compute and write in double precision (F64) instead of float (F32)\n");
}

FlashConfig load_config_arg(const std::string& arg) {
    if (arg == "tiny" || arg == "small" || arg == "base") return config_preset(arg);
    std::ifstream in(arg);
    FLASH_CHECK(in, "cannot open config file '" << arg << "'", "give tiny, small, base or a path to a JSON file");
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& ex) {
        FLASH_FAIL("config file '" << arg << "' is not valid JSON: " << ex.what(), "fix the file");
    }
    return config_from_json(j);
}

template <typename Real>
static void debug_state(const std::string& out, const FlashConfig& cfg, const std::string& load, uint64_t seed,
                        bool strong, int B) {
    FlashModel<Real> model(cfg);
    if (load.empty()) model.init_weights(seed, strong);
    else load_weights(load, model);
    const int T = cfg.seq_len, N = B * T;
    // A random batch: the targets are the inputs shifted by one, as in training.
    Rng rng(seed ^ 0xBA7C4ull);
    std::vector<int> stream(N + B);
    for (int& t : stream) t = rng.below(cfg.vocab_size);
    std::vector<int> tokens(N), targets(N);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            tokens[b * T + t] = stream[b * (T + 1) + t];
            targets[b * T + t] = stream[b * (T + 1) + t + 1];
        }
    write_debug_state(out, model, tokens.data(), targets.data(), B, T);
    std::printf("wrote %s: B=%d T=%d loss=%.9g, %zu parameters and their gradients (%s)\n", out.c_str(), B, T,
                model.loss, model.params.size(), sizeof(Real) == 4 ? "F32" : "F64");
}

int main(int argc, char** argv) {
    try {
        std::string out, config = "tiny", load;
        uint64_t seed = 1;
        bool strong = false, dbl = false;
        int B = 2;
        for (int i = 1; i < argc; i++) {
            std::string a = argv[i];
            auto value = [&]() -> std::string {
                FLASH_CHECK(i + 1 < argc, "option " << a << " needs a value", "see ./train --help");
                return argv[++i];
            };
            if (a == "--help" || a == "-h") { usage(); return 0; }
            else if (a == "--debug-state") out = value();
            else if (a == "--config") config = value();
            else if (a == "--load") load = value();
            else if (a == "--seed") seed = std::stoull(value());
            else if (a == "--strong-init") strong = true;
            else if (a == "--batch") B = std::stoi(value());
            else if (a == "--double") dbl = true;
            else FLASH_FAIL("unknown option '" << a << "'", "see ./train --help");
        }
        FLASH_CHECK(!out.empty(), "nothing to do", "give --debug-state OUT.safetensors (see ./train --help)");
        FLASH_CHECK(B > 0, "--batch must be positive", "");
        FlashConfig cfg = load.empty() ? load_config_arg(config) : checkpoint_config(safetensors_read(load), load);
        if (dbl) debug_state<double>(out, cfg, load, seed, strong, B);
        else debug_state<float>(out, cfg, load, seed, strong, B);
        return 0;
    } catch (const std::exception& ex) {
        std::fprintf(stderr, "error: %s\n", ex.what());
        return 1;
    }
}
