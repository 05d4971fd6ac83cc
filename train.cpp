// train.cpp: the ./train command. It trains FLASH (trainer.cpp does the work), or with --debug-state writes the
// state that the CUDA port and outside checks compare against: a batch, its loss, every parameter and every
// parameter's gradient.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "flash.h"
#include "resource_check.h"
#include "trainer.h"

static void debug_state_usage() {
    std::printf(
        "usage: ./train --debug-state OUT.safetensors [options]\n"
        "  --model NAME|FILE    tiny, small, base, or a JSON model config (default tiny)\n"
        "  --load CKPT          take the model (and its config) from a checkpoint instead of a fresh init\n"
        "  --seed N             seed of the fresh weights and of the random batch (default 1)\n"
        "  --strong-init        gamma ~ N(1,0.5), beta and rel_bias ~ N(0,0.5) (FLASH.md section 1)\n"
        "  --batch B            batch rows (default 2); T is the config's seq_len\n"
        "  --double             compute and write in double precision (F64) instead of float (F32)\n");
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

static int debug_state_main(int argc, char** argv) {
    std::string out, model = "tiny", load;
    uint64_t seed = 1;
    bool strong = false, dbl = false;
    int B = 2;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto value = [&]() -> std::string {
            FLASH_CHECK(i + 1 < argc, "option " << a << " needs a value", "see ./train --debug-state x --help");
            return argv[++i];
        };
        if (a == "--help" || a == "-h") { debug_state_usage(); return 0; }
        else if (a == "--debug-state") out = value();
        else if (a == "--model") model = value();
        else if (a == "--load") load = value();
        else if (a == "--seed") seed = std::stoull(value());
        else if (a == "--strong-init") strong = true;
        else if (a == "--batch") B = std::stoi(value());
        else if (a == "--double") dbl = true;
        else FLASH_FAIL("unknown option '" << a << "' for --debug-state", "see ./train --debug-state x --help");
    }
    FLASH_CHECK(B > 0, "--batch must be positive", "");
    FlashConfig cfg = load.empty() ? load_model_config(model) : checkpoint_config(safetensors_read(load), load);
    check_token_count(B, cfg.seq_len);  // before B * T is computed in int, and before the batch is allocated
    if (dbl) debug_state<double>(out, cfg, load, seed, strong, B);
    else debug_state<float>(out, cfg, load, seed, strong, B);
    return 0;
}

// SIGINT (Ctrl-C) and SIGTERM (what schedulers and `docker stop` send) both stop training at the end of the
// step, with a checkpoint; the exit status is then 128 + the signal's number (130, 143), as a shell reports a
// program killed by it. A second signal does not wait.
static void on_stop_signal(int sig) {
    if (g_stop_requested) std::_Exit(128 + sig);
    g_stop_requested = sig;
}

int main(int argc, char** argv) {
    try {
        for (int i = 1; i < argc; i++) {
            std::string a = argv[i];
            if (a == "--debug-state") return debug_state_main(argc, argv);
            if (a == "--help" || a == "-h") { std::printf("%s", train_options_help().c_str()); return 0; }
        }
        TrainOptions o = parse_train_options(argc, argv);
        std::signal(SIGINT, on_stop_signal);
        std::signal(SIGTERM, on_stop_signal);
        TrainResult r = run_training(o);
        if (g_stop_requested) return 128 + g_stop_requested;
        if (r.interrupted) return 2;  // stopped by a non-finite loss or weights
        return 0;
    } catch (const std::bad_alloc&) {
        std::fprintf(stderr, "error: out of memory (hint: lower --batch, or choose a smaller model)\n");
        return 1;
    } catch (const std::exception& ex) {
        std::fprintf(stderr, "error: %s\n", ex.what());
        return 1;
    }
}
