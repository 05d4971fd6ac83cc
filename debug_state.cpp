// debug_state.cpp: the debug state file and the `./train --debug-state` command. Read debug_state.h first.
#include "debug_state.h"

#include <cstdio>
#include <vector>

#include "data/mlm.h"
#include "flash.h"
#include "formats/checkpoint.h"
#include "formats/config.h"
#include "options.h"
#include "resource_check.h"
#include "rng.h"

template <typename Real>
double write_debug_state(const std::string& path, Model<Real>& m, const int* tokens, const int* targets, int B, int T) {
    const std::string dtype = sizeof(Real) == 4 ? "F32" : "F64";
    double loss = m.forward(tokens, targets, B, T);
    m.zero_grad();
    m.backward();
    std::vector<Real> params(m.param_count()), grads(m.param_count());
    m.copy_to_host(ModelBuffer::params, params.data());
    m.copy_to_host(ModelBuffer::grads, grads.data());
    std::vector<SafeTensor> t;
    t.push_back(make_int_tensor("batch.tokens", {B, T}, tokens));
    t.push_back(make_int_tensor("batch.targets", {B, T}, targets));
    t.push_back(make_tensor("loss", {1}, &loss, dtype));
    for (SafeTensor& x : param_tensors(m, params, "", dtype)) t.push_back(std::move(x));
    // Gradients of the trained tensors (Ω has none).
    for (SafeTensor& x : param_tensors(m, grads, "grad.", dtype, true)) t.push_back(std::move(x));
    safetensors_write(path, t, {{"config", m.config_json().dump()}, {"kind", m.arch() + " debug state"}});
    return loss;
}
template double write_debug_state(const std::string&, Model<float>&, const int*, const int*, int, int);
template double write_debug_state(const std::string&, Model<double>&, const int*, const int*, int, int);

namespace {

struct DebugStateOptions {
    std::string out, model = "tiny", load, objective = "ar";
    uint64_t seed = 1;
    bool strong = false, dbl = false;
    int batch = 2;
};

OptionTable debug_state_table(DebugStateOptions& o) {
    OptionTable t;
    t.add("debug-state", o.out, "the safetensors file to write");
    t.add("model", o.model, "a preset (tiny, small, base, transformer++-tiny, ..., see ./train --help) or a JSON "
                            "model config");
    t.add("load", o.load, "take the model (and its config) from a checkpoint instead of a fresh init");
    t.add("seed", o.seed, "seed of the fresh weights and of the random batch");
    t.add_flag("strong-init", o.strong, "the tests' initialisation far from the identity (FLASH.md section 1, "
                                        "BASELINES.md section 1)");
    t.add("batch", o.batch, "batch rows; T is the config's seq_len", 1, 1 << 20);
    t.add_flag("double", o.dbl, "compute and write in double precision (F64) instead of float (F32)");
    t.add("objective", o.objective, "ar (targets: the next tokens) or mlm (a masked batch, targets -1 where not "
                                    "chosen; needs a model config with \"causal\": false)");
    return t;
}

template <typename Real>
void debug_state(const DebugStateOptions& o, const nlohmann::json& cfg) {
    std::unique_ptr<Model<Real>> model = make_model<Real>(cfg);
    if (o.load.empty()) model->init_weights(o.seed, o.strong);
    else load_weights(o.load, *model);
    check_token_count(o.batch, cfg.at("seq_len").get<int>());  // before B * T is computed in int, and allocated
    const int B = o.batch, T = cfg.at("seq_len").get<int>(), N = B * T, V = cfg.at("vocab_size").get<int>();
    const flash_data::Objective objective = flash_data::parse_objective(o.objective);
    flash_data::check_objective_fits_model(objective, model->config_json().value("causal", true));
    std::vector<int> tokens(N), targets(N);
    Rng rng(o.seed ^ 0xBA7C4ull);
    if (objective == flash_data::Objective::ar) {
        // A random batch: the targets are the inputs shifted by one, as in training.
        std::vector<int> stream(N + B);
        for (int& t : stream) t = rng.below(V);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                tokens[b * T + t] = stream[b * (T + 1) + t];
                targets[b * T + t] = stream[b * (T + 1) + t + 1];
            }
    } else {
        // Random ordinary tokens, masked as in training at step 0 (row b: sequence b). The special ids are those of
        // a tokenizer trained by tokenizer/bpe (bpe.h): <|endoftext|> then <|mask|>, the last two ids.
        const uint32_t Vu = (uint32_t)V;
        FLASH_CHECK(Vu >= 3, "a masked batch needs a vocabulary beyond the two special tokens, got " << V, "");
        const flash_data::MlmVocab vocab{Vu, Vu - 1, {Vu - 2, Vu - 1}};
        for (int& t : tokens) t = (int)flash_data::random_ordinary_token(rng.state, vocab);
        for (int b = 0; b < B; b++)
            flash_data::mlm_mask(o.seed, 0, (uint64_t)b, &tokens[b * T], T, vocab, &tokens[b * T], &targets[b * T]);
    }
    const double loss = write_debug_state(o.out, *model, tokens.data(), targets.data(), B, T);
    std::printf("wrote %s: %s, B=%d T=%d loss=%.9g, %zu parameters and their gradients (%s)\n", o.out.c_str(),
                model->arch().c_str(), B, T, loss, tensor_element_count(model->tensor_specs()),
                sizeof(Real) == 4 ? "F32" : "F64");
}

}  // namespace

int debug_state_main(int argc, char** argv) {
    DebugStateOptions o;
    OptionTable table = debug_state_table(o);
    for (int i = 1; i < argc; i++)
        if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
            std::printf("usage: ./train --debug-state OUT.safetensors [options]\n%s", table.help().c_str());
            return 0;
        }
    table.parse(argc, argv);
    const nlohmann::json cfg =
        o.load.empty() ? load_model_config_json(o.model)
                       : normalized_model_config(checkpoint_model_config(safetensors_read(o.load), o.load));
    if (o.dbl) debug_state<double>(o, cfg);
    else debug_state<float>(o, cfg);
    return 0;
}
