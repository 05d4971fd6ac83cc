// trainer.cpp: options, learning-rate schedule, checkpoints and the training loop of ./train.
#include "trainer.h"

#include <cblas.h>
#include <fcntl.h>
#include <omp.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "data/dataloader.h"
#include "decode.h"
#include "json_util.h"
#include "resource_check.h"
#include "rundir.h"
#include "value_check.h"
#include "data/tokenfile.h"
#include "tokenizer/bpe.h"
#ifdef FLASH_HAVE_CUDA
#include "flash_cuda.h"
#endif

using json = nlohmann::json;
namespace fs = std::filesystem;

volatile int g_stop_requested = 0;

// ====================================================================================================
// Options: one table drives the command line, the JSON options file and --help.

namespace {

struct OptionDef {
    const char* name;
    const char* help;
    std::function<void(const json&)> set;   // from a JSON value (the command line's text is parsed as JSON)
    std::function<json()> get;
};

template <typename V>
OptionDef def(const char* name, V& field, const char* help) {
    return OptionDef{name, help,
                     [&field, name](const json& j) {
                         try {
                             if constexpr (std::is_same_v<V, std::string>) {
                                 FLASH_CHECK(j.is_string(), "", "");
                                 field = j.get<std::string>();
                             } else if constexpr (std::is_same_v<V, bool>) {
                                 FLASH_CHECK(j.is_boolean(), "", "");
                                 field = j.get<bool>();
                             } else if constexpr (std::is_integral_v<V>) {
                                 FLASH_CHECK(j.is_number_integer(), "", "");
                                 field = j.get<V>();
                             } else {
                                 FLASH_CHECK(j.is_number(), "", "");
                                 field = j.get<V>();
                             }
                         } catch (const std::exception&) {
                             FLASH_FAIL("option '" << name << "' has a bad value " << json_excerpt(j),
                                        "see ./train --help for its type and default");
                         }
                     },
                     [&field]() { return json(field); }};
}

std::vector<OptionDef> option_table(TrainOptions& o) {
    return {
        def("model", o.model, "model shape: tiny, small, base, or a JSON model config (FLASH.md section 5)"),
        def("d", o.d, "model width (0: the model's)"),
        def("e", o.e, "expanded width (0: the model's)"),
        def("s", o.s, "query/key width (0: the model's)"),
        def("layers", o.layers, "number of FLASH layers (0: the model's)"),
        def("chunk", o.chunk, "chunk size C (0: the model's)"),
        def("seq-len", o.seq_len, "sequence length T, a multiple of C (0: the model's)"),
        def("batch", o.batch, "sequences per step"),
        def("steps", o.steps, "optimizer steps in all (a resumed run continues up to this)"),
        def("stop-after", o.stop_after, "stop with a checkpoint after this many steps of this run (0: never)"),
        def("lr", o.lr, "peak learning rate"),
        def("lr-min", o.lr_min, "learning-rate floor at the end of the cosine decay"),
        def("warmup", o.warmup, "linear warm-up steps"),
        def("weight-decay", o.weight_decay, "AdamW decoupled weight decay (matrices only)"),
        def("grad-clip", o.grad_clip, "clip the global gradient norm to this (0: off)"),
        def("beta1", o.beta1, "AdamW beta1"),
        def("beta2", o.beta2, "AdamW beta2"),
        def("eval-interval", o.eval_interval, "steps between validation evaluations"),
        def("eval-batches", o.eval_batches, "validation batches per evaluation"),
        def("sample-interval", o.sample_interval, "steps between text samples (0: none)"),
        def("sample-tokens", o.sample_tokens, "tokens per text sample"),
        def("ckpt-interval", o.ckpt_interval, "steps between checkpoints (one is also written at the end)"),
        def("keep-ckpts", o.keep_ckpts, "checkpoints kept (the newest)"),
        def("out-dir", o.out_dir, "directory of checkpoints, metrics.jsonl and loss.png"),
        def("data-dir", o.data_dir, "directory with train.bin, val.bin and tokenizer.json (data/prepare.sh)"),
        def("seed", o.seed, "seed of the weights and the data order"),
        def("threads", o.threads, "CPU threads (0: all cores)"),
        def("device", o.device, "cpu, cuda, or auto (the GPU when one is present)"),
        def("resume", o.resume, "continue from the newest checkpoint in out-dir"),
        def("overwrite", o.overwrite, "start afresh in an out-dir that holds a run, deleting it"),
        def("quiet", o.quiet, "no per-step lines"),
    };
}

}  // namespace

std::string train_options_help() {
    TrainOptions defaults;
    std::ostringstream os;
    os << "usage: ./train [--options FILE.json] [--name value ...]\n"
          "Trains FLASH on data/train.bin (made by data/prepare.sh). Options (a JSON options file takes the same\n"
          "names as keys; the command line overrides it):\n";
    for (const OptionDef& d : option_table(defaults)) {
        char line[256];
        std::snprintf(line, sizeof line, "  --%-16s %-56s (default %s)\n", d.name, d.help, d.get().dump().c_str());
        os << line;
    }
    os << "  --options FILE     read options from a JSON object\n"
          "  --debug-state OUT  write one step's batch, loss, weights and gradients to OUT and exit\n"
          "                     (with --strong-init, --double, --load CKPT; see README)\n";
    return os.str();
}

json train_options_to_json(const TrainOptions& o) {
    TrainOptions copy = o;
    json j = json::object();
    for (const OptionDef& d : option_table(copy)) j[d.name] = d.get();
    return j;
}

static void apply_option(TrainOptions& o, const std::string& name, const json& value) {
    for (OptionDef& d : option_table(o))
        if (name == d.name) return d.set(value);
    FLASH_FAIL("unknown option '" << name << "'", "see ./train --help");
}

TrainOptions parse_train_options(int argc, char** argv) {
    TrainOptions o;
    for (int i = 1; i + 1 < argc; i++)
        if (std::string(argv[i]) == "--options") {
            const std::string name = argv[i + 1];
            const json j = parse_json_bounded(read_whole_file(name, "options file", "check the path"),
                                              "options file '" + name + "'", "fix the file");
            FLASH_CHECK(j.is_object(), "options file '" << argv[i + 1] << "' must hold a JSON object", "");
            for (auto it = j.begin(); it != j.end(); ++it) apply_option(o, it.key(), *it);
        }
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        FLASH_CHECK(a.size() > 2 && a.compare(0, 2, "--") == 0, "unexpected argument '" << a << "'",
                    "options are --name value; see ./train --help");
        std::string name = a.substr(2);
        if (name == "options") { i++; continue; }
        if (name == "resume" || name == "quiet" || name == "overwrite") {  // flags
            apply_option(o, name, true);
            continue;
        }
        FLASH_CHECK(i + 1 < argc, "option --" << name << " needs a value", "see ./train --help");
        std::string text = argv[++i];
        json value;
        try {
            value = parse_json_bounded(text, "--" + name, "");
        } catch (const flash_error&) {
            value = text;  // a bare word is a string
        }
        if (value.is_number() || value.is_boolean()) {
            TrainOptions probe = o;
            try {
                apply_option(probe, name, value);
            } catch (const flash_error&) {
                value = text;  // e.g. --out-dir 123 is a string
            }
        }
        apply_option(o, name, value);
    }
    check_train_options(o);
    return o;
}

void check_train_options(const TrainOptions& o) {
    FLASH_CHECK(o.batch > 0, "--batch must be positive, got " << o.batch, "");
    FLASH_CHECK(o.steps >= 0, "--steps must be >= 0, got " << o.steps, "");
    FLASH_CHECK(o.stop_after >= 0, "--stop-after must be >= 0, got " << o.stop_after, "");
    // Real-valued options: each must be finite and inside the domain where AdamW and the schedule are defined
    // (beta2 = 1 makes the bias correction 1 - beta2^t zero, and every weight NaN).
    auto in_range = [](const char* name, double v, double lo, double hi, bool hi_open, const char* hint) {
        FLASH_CHECK(std::isfinite(v) && v >= lo && (hi_open ? v < hi : v <= hi),
                    "--" << name << " is " << v << ", must be in [" << lo << ", " << hi << (hi_open ? ")" : "]"), hint);
    };
    const double inf = HUGE_VAL;
    in_range("lr", o.lr, 0, inf, true, "a learning rate is >= 0; the default is 3e-3");
    in_range("lr-min", o.lr_min, 0, o.lr, false, "the schedule's floor lies between 0 and --lr");
    in_range("beta1", o.beta1, 0, 1, true, "AdamW's beta1 is usually 0.9");
    in_range("beta2", o.beta2, 0, 1, true, "AdamW's beta2 is usually 0.95 or 0.999; 1 would divide by zero");
    in_range("weight-decay", o.weight_decay, 0, inf, true, "0 turns it off; the default is 0.1");
    in_range("grad-clip", o.grad_clip, 0, inf, true, "0 turns clipping off; the default is 1");
    FLASH_CHECK(o.warmup >= 0, "--warmup must be >= 0", "");
    FLASH_CHECK(o.eval_interval > 0 && o.eval_batches > 0, "--eval-interval and --eval-batches must be positive", "");
    FLASH_CHECK(o.sample_interval >= 0 && o.sample_tokens >= 0, "--sample-interval and --sample-tokens must be >= 0", "");
    FLASH_CHECK(o.ckpt_interval > 0 && o.keep_ckpts > 0, "--ckpt-interval and --keep-ckpts must be positive", "");
    FLASH_CHECK(!(o.resume && o.overwrite), "--resume and --overwrite contradict each other",
                "--resume continues the run in --out-dir, --overwrite replaces it: give one");
    FLASH_CHECK(o.device == "cpu" || o.device == "cuda" || o.device == "auto",
                "--device must be cpu, cuda or auto, got '" << o.device << "'", "");
}

FlashConfig load_model_config(const std::string& name) {
    if (name == "tiny" || name == "small" || name == "base") return config_preset(name);
    const std::string text =
        read_whole_file(name, "model config", "give tiny, small, base or a path to a JSON file");
    const json j = parse_json_bounded(text, "model config '" + name + "'", "fix the file");
    try {
        return config_from_json(j);
    } catch (const flash_error& ex) {
        FLASH_FAIL("model config '" << name << "': " << ex.what(), "fix the file");
    }
}

FlashConfig model_config_from_options(const TrainOptions& o, int vocab_size) {
    FlashConfig c = load_model_config(o.model);
    c.vocab_size = vocab_size;
    if (o.d) c.d = o.d;
    if (o.e) c.e = o.e;
    if (o.s) c.s = o.s;
    if (o.layers) c.n_layers = o.layers;
    if (o.chunk) c.chunk = o.chunk;
    if (o.seq_len) c.seq_len = o.seq_len;
    config_validate(c);
    return c;
}

double learning_rate(const TrainOptions& o, int64_t step) {
    if (step <= o.warmup) return o.lr * (double)step / std::max(o.warmup, 1);
    if (step >= o.steps) return o.lr_min;
    const double progress = (double)(step - o.warmup) / (double)(o.steps - o.warmup);  // (0, 1)
    return o.lr_min + 0.5 * (o.lr - o.lr_min) * (1.0 + std::cos(M_PI * progress));
}

// ====================================================================================================
// Checkpoints

static std::string checkpoint_name(int64_t step) {
    char name[64];
    std::snprintf(name, sizeof name, "ckpt_%08lld.safetensors", (long long)step);
    return name;
}

std::string save_checkpoint(const std::string& out_dir, const FlashModel<float>& m, const TrainState& st) {
    std::error_code ec;
    fs::create_directories(out_dir, ec);
    FLASH_CHECK(!ec, "cannot create checkpoint directory '" << out_dir << "': " << ec.message(), "check permissions");
    std::vector<SafeTensor> tensors = param_tensors(m, m.params, "", "F32");
    for (SafeTensor& t : param_tensors(m, m.adam_m, "adam_m.", "F32")) tensors.push_back(std::move(t));
    for (SafeTensor& t : param_tensors(m, m.adam_v, "adam_v.", "F32")) tensors.push_back(std::move(t));
    json state = {{"step", st.step}, {"loader_rng", st.loader_rng}, {"loader_batches", st.loader_batches}};
    const std::string path = (fs::path(out_dir) / checkpoint_name(st.step)).string();
    safetensors_write(path, tensors,
                      {{"config", config_to_json(m.cfg).dump()}, {"train_state", state.dump()},
                       {"kind", "flash checkpoint"}});
    return path;
}

TrainState load_checkpoint(const std::string& path, FlashModel<float>& m) {
    SafeTensorsFile f = safetensors_read(path);
    const FlashConfig c = checkpoint_config(f, path);
    const std::string diff = config_shape_mismatch(c, m.cfg);
    FLASH_CHECK(diff.empty(), "checkpoint '" << path << "' holds a model of another shape (checkpoint vs options: "
                                             << diff << ")",
                "resume with the options it was trained with, or use another --out-dir for a new model");
    auto it = f.metadata.find("train_state");
    FLASH_CHECK(it != f.metadata.end(), "'" << path << "' has no train_state in its metadata",
                "it holds weights only; it cannot be resumed from");
    TrainState st;
    try {
        json j = parse_json_bounded(it->second, "'" + path + "': train_state", "the file is corrupt");
        st.step = j.at("step").get<int64_t>();
        st.loader_rng = j.at("loader_rng").get<uint64_t>();
        st.loader_batches = j.at("loader_batches").get<uint64_t>();
    } catch (const json::exception& ex) {
        FLASH_FAIL("'" << path << "' has a bad train_state: " << ex.what(), "the file is corrupt");
    }
    std::vector<float> params(m.params.size()), mom1(m.params.size()), mom2(m.params.size());
    load_param_tensors(m, params, f, "", path);
    load_param_tensors(m, mom1, f, "adam_m.", path);
    load_param_tensors(m, mom2, f, "adam_v.", path);
    // Only now, with everything read and checked, does the model change.
    std::copy(params.begin(), params.end(), m.params.begin());
    std::copy(mom1.begin(), mom1.end(), m.adam_m.begin());
    std::copy(mom2.begin(), mom2.end(), m.adam_v.begin());
    return st;
}

static std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& out_dir) {
    std::vector<std::pair<int64_t, std::string>> found;
    std::error_code ec;
    if (!fs::is_directory(out_dir, ec)) return found;
    for (const auto& entry : fs::directory_iterator(out_dir, ec)) {
        const std::string name = entry.path().filename().string();
        long long step;
        char tail[32];
        if (std::sscanf(name.c_str(), "ckpt_%lld.%31s", &step, tail) == 2 && std::string(tail) == "safetensors")
            found.push_back({step, entry.path().string()});
    }
    std::sort(found.begin(), found.end());
    return found;
}

std::string latest_checkpoint(const std::string& out_dir) {
    auto found = list_checkpoints(out_dir);
    return found.empty() ? "" : found.back().second;
}

void prune_checkpoints(const std::string& out_dir, int keep) {
    auto found = list_checkpoints(out_dir);
    for (size_t i = 0; i + keep < found.size(); i++) std::remove(found[i].second.c_str());
}

// ====================================================================================================
// Figures for the log

// FLASH.md §4: forward FLOPs per token; a training step is about 3× the forward.
static double forward_flops_per_token(const FlashConfig& c) {
    const double d = c.d, e = c.e, s = c.s, L = c.n_layers, C = c.chunk, V = c.vocab_size;
    return 2 * (d * (2 * e + s) + e * d) * L + 2 * C * (s + e) * L + 4 * s * e * L + 2 * d * V;
}

// The machine's matrix-multiply peak as this program sees it: the best of ten 1024³ sgemm calls (best, not
// mean: on a shared machine the slow calls measure the neighbours, not the machine).
static double measure_matmul_peak() {
    const int n = 1024;
    std::vector<float> a((size_t)n * n, 1.0f), b((size_t)n * n, 0.5f), c((size_t)n * n);
    double best = 0;
    for (int rep = 0; rep < 10; rep++) {
        auto t0 = std::chrono::steady_clock::now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
        double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = std::max(best, 2.0 * n * n * n / sec);
    }
    return best;
}

// Text from the model: the cached decoder (decode.h) from <|endoftext|>, temperature 0.8, top-k 50.
static std::string sample_text(FlashModel<float>& m, const bpe::Tokenizer& tok, int n_tokens, uint64_t seed) {
    const int V = m.cfg.vocab_size;
    DecodeState<float> state;
    decode_init(state, m);
    std::vector<float> logits(V);
    const int start = (int)tok.eot_id();
    decode_prefill(m, state, &start, 1, logits.data());
    Rng rng(seed);
    std::vector<uint32_t> out;
    for (int i = 0; i < n_tokens; i++) {
        const int next = sample_token(logits.data(), V, 0.8, 50, 1.0, rng);
        if (next == (int)tok.eot_id() && !out.empty()) break;  // the document ended (a leading one is skipped)
        if (next != (int)tok.eot_id()) out.push_back((uint32_t)next);
        decode_step(m, state, next, logits.data());
    }
    return tok.decode(out);
}

// ====================================================================================================
// The model being trained: the CPU reference, or the GPU model of flash.cu. The CPU model always exists: it is
// initialised (so both devices start from the same weights), it is what checkpoints are written from, and it
// draws the samples; with the GPU, sync_to_cpu() copies weights and moments into it first.

struct Trainee {
    FlashModel<float>& cpu;
#ifdef FLASH_HAVE_CUDA
    FlashCuda* gpu = nullptr;
#endif
    explicit Trainee(FlashModel<float>& m) : cpu(m) {}
    ~Trainee() {
#ifdef FLASH_HAVE_CUDA
        if (gpu) cuda_model_destroy(gpu);
#endif
    }
    bool on_gpu() const {
#ifdef FLASH_HAVE_CUDA
        return gpu != nullptr;
#else
        return false;
#endif
    }
    void use_gpu(int B, int T) {
#ifdef FLASH_HAVE_CUDA
        gpu = cuda_model_create(cpu.cfg, B, T);
        cuda_model_set_params(gpu, cpu.params.data());
        cuda_model_set_adam(gpu, cpu.adam_m.data(), cpu.adam_v.data());
#else
        FLASH_FAIL("this build has no CUDA support", "build where nvcc exists, or use --device cpu");
#endif
    }
    double forward(const int* tokens, const int* targets, int B, int T) {
#ifdef FLASH_HAVE_CUDA
        if (gpu) return cuda_model_forward(gpu, tokens, targets, B, T);
#endif
        return cpu.forward(tokens, targets, B, T);
    }
    // backward, global gradient norm (before clipping), clipping to max_norm (0: off)
    double backward(double max_norm) {
        double norm;
#ifdef FLASH_HAVE_CUDA
        if (gpu) {
            cuda_model_zero_grad(gpu);
            cuda_model_backward(gpu);
            norm = cuda_model_grad_norm(gpu);
            if (max_norm > 0 && norm > max_norm) cuda_model_scale_grads(gpu, max_norm / norm);
            return norm;
        }
#endif
        cpu.zero_grad();
        cpu.backward();
        norm = cpu.grad_norm();
        if (max_norm > 0 && norm > max_norm) {
            const float scale = (float)(max_norm / norm);
            for (float& g : cpu.grads) g *= scale;
        }
        return norm;
    }
    void adamw_update(double lr, const AdamWConfig& opt, int64_t t) {
#ifdef FLASH_HAVE_CUDA
        if (gpu) return cuda_model_adamw_update(gpu, lr, opt, t);
#endif
        cpu.adamw_update(lr, opt, t);
    }
    void sync_to_cpu() {
#ifdef FLASH_HAVE_CUDA
        if (gpu) {
            cuda_model_get_params(gpu, cpu.params.data());
            cuda_model_get_adam(gpu, cpu.adam_m.data(), cpu.adam_v.data());
        }
#endif
    }
};

// cpu, cuda or auto -> whether to train on the GPU, with a clear error when cuda is asked for and absent.
static bool want_gpu(const std::string& device) {
    if (device == "cpu") return false;
#ifdef FLASH_HAVE_CUDA
    std::string why;
    const bool ok = cuda_available(&why);
    FLASH_CHECK(ok || device == "auto", "--device cuda: no usable GPU (" << why << ")", "use --device cpu or auto");
    if (!ok) std::printf("--device auto: no usable GPU (%s); training on the CPU\n", why.c_str());
    return ok;
#else
    FLASH_CHECK(device == "auto", "--device cuda: this build has no CUDA support (nvcc was not found by make)",
                "install the CUDA Toolkit and rebuild, or use --device cpu");
    return false;
#endif
}

// Runs a program found on PATH, its output discarded, and waits for it: its exit status, or -1 when it cannot be
// started (not installed). Unlike std::system, it leaves this process's signal handling alone: system() ignores
// SIGINT while its child runs, and a Ctrl-C in that window (gnuplot runs at every evaluation) was lost.
static int run_program_quietly(const std::vector<std::string>& args) {
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    const int failed = posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (failed) return -1;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// ====================================================================================================
// The loop

TrainResult run_training(const TrainOptions& o) {
    check_train_options(o);
    if (o.threads > 0) {
        omp_set_num_threads(o.threads);
        openblas_set_num_threads(o.threads);
    }
    const bool gpu = want_gpu(o.device);
    // Data and tokenizer.
    const fs::path data(o.data_dir);
    for (const char* f : {"train.bin", "val.bin", "tokenizer.json"})
        FLASH_CHECK(fs::exists(data / f), "no " << (data / f).string() << ": the training data is not prepared",
                    "run data/prepare.sh (or ./train.sh, which prepares, builds and trains)");
    const bpe::Tokenizer tok = bpe::Tokenizer::load((data / "tokenizer.json").string());
    const flash_data::TokenFile train_tokens = flash_data::load_token_file((data / "train.bin").string(), tok.vocab_size());
    const flash_data::TokenFile val_tokens = flash_data::load_token_file((data / "val.bin").string(), tok.vocab_size());
    const double val_bytes_per_token = (double)tok.decode(val_tokens.tokens).size() / (double)val_tokens.tokens.size();

    const FlashConfig cfg = model_config_from_options(o, (int)tok.vocab_size());
    const int B = o.batch, T = cfg.seq_len;
    // Refuse a batch that cannot fit before allocating it (on the GPU, flash.cu checks its own memory).
    check_token_count(B, T);
    if (!gpu) check_activations_fit(cfg, B, T, sizeof(float));
    FlashModel<float> model(cfg);
    model.init_weights(o.seed);
    flash_data::DataLoader train_loader(train_tokens.tokens, B, T, flash_data::LoaderMode::kTrainRandom, o.seed);
    flash_data::DataLoader val_loader(val_tokens.tokens, B, T, flash_data::LoaderMode::kValSequential);

    // The run directory: locked for this run alone, leftovers of crashed writers removed, and an existing run
    // replaced only when asked to (rundir.h).
    RunDirLock lock(o.out_dir);
    remove_stale_temporaries(o.out_dir);
    if (!o.resume) prepare_fresh_run_dir(o.out_dir, o.overwrite);
    TrainState st;
    if (o.resume) {
        const std::string path = latest_checkpoint(o.out_dir);
        FLASH_CHECK(!path.empty(), "--resume: no checkpoint in '" << o.out_dir << "'",
                    "train without --resume first, or point --out-dir at the run to continue");
        st = load_checkpoint(path, model);
        flash_data::DataLoaderState ls = train_loader.state();
        ls.rng_state = st.loader_rng;
        ls.batches = st.loader_batches;
        train_loader.restore(ls);
        trim_run_logs(o.out_dir, st.step);
        std::printf("resumed from %s at step %lld\n", path.c_str(), (long long)st.step);
    }
    Trainee trainee(model);
    if (gpu) trainee.use_gpu(B, T);

    const double flops_per_token = 3 * forward_flops_per_token(cfg);
    const double peak = (o.quiet || gpu) ? 0.0 : measure_matmul_peak();
    if (!o.quiet) {
        if (gpu) std::printf("FLASH training on the GPU (CUDA)\n");
        else std::printf("FLASH training on the CPU, %d threads\n", omp_get_max_threads());
        std::printf("+-----------------+------------------------------------------+\n");
        const json model_json = config_to_json(cfg), options_json = train_options_to_json(o);
        for (auto& kv : model_json.items()) std::printf("| %-15s | %-40s |\n", kv.key().c_str(), kv.value().dump().c_str());
        for (auto& kv : options_json.items())
            if (kv.key() != "model") std::printf("| %-15s | %-40s |\n", kv.key().c_str(), kv.value().dump().c_str());
        std::printf("+-----------------+------------------------------------------+\n");
        std::printf("parameters: %zu   FLOPs per token: %.1f M forward, %.1f M training step\n", model.params.size(),
                    forward_flops_per_token(cfg) / 1e6, flops_per_token / 1e6);
        std::printf("data: %zu train tokens, %zu val tokens (%.2f bytes/token), vocab %u\n", train_tokens.tokens.size(),
                    val_tokens.tokens.size(), val_bytes_per_token, tok.vocab_size());
        if (peak > 0) std::printf("matrix-multiply peak of this machine (sgemm 1024^3): %.1f GFLOP/s\n", peak / 1e9);
    }

    // Metrics: JSON lines for machines, TSV for the plot. A fresh run starts them anew.
    const fs::path out(o.out_dir);
    const char* mode = o.resume ? "a" : "w";
    FILE* metrics = std::fopen((out / "metrics.jsonl").c_str(), mode);
    FILE* train_tsv = std::fopen((out / "train_loss.tsv").c_str(), mode);
    FILE* val_tsv = std::fopen((out / "val_loss.tsv").c_str(), mode);
    FLASH_CHECK(metrics && train_tsv && val_tsv, "cannot write metrics under '" << o.out_dir << "'", "check permissions");

    AdamWConfig opt;
    opt.beta1 = o.beta1;
    opt.beta2 = o.beta2;
    opt.weight_decay = o.weight_decay;
    std::vector<int32_t> inputs, targets;
    TrainResult result;
    result.steps_done = st.step;

    auto evaluate = [&]() {
        val_loader.reset();
        double sum = 0;
        const int n = std::max<int>(1, std::min<int>(o.eval_batches, (int)val_loader.batches_per_epoch()));
        for (int i = 0; i < n; i++) {
            val_loader.next_batch(inputs, targets);
            sum += trainee.forward(inputs.data(), targets.data(), B, T);
        }
        return sum / n;
    };
    // Writes a checkpoint; false (and none written) when the update made a weight or moment non-finite.
    auto checkpoint = [&](int64_t step) {
        flash_data::DataLoaderState ls = train_loader.state();
        TrainState now{step, ls.rng_state, ls.batches};
        trainee.sync_to_cpu();
        const std::string bad = first_bad_tensor(model, model.params, false) + first_bad_tensor(model, model.adam_m, false) +
                                first_bad_tensor(model, model.adam_v, true);
        if (!bad.empty()) {
            std::fprintf(stderr, "error: after step %lld tensor '%s' holds a non-finite value; stopping without writing "
                                 "a checkpoint. The last checkpoint in %s is intact (hint: lower --lr or --grad-clip "
                                 "and --resume)\n", (long long)step, bad.c_str(), o.out_dir.c_str());
            return false;
        }
        std::string path = save_checkpoint(o.out_dir, model, now);
        prune_checkpoints(o.out_dir, o.keep_ckpts);
        if (!o.quiet) std::printf("checkpoint %s\n", path.c_str());
        return true;
    };
    auto plot = [&]() {
        std::fflush(train_tsv);
        std::fflush(val_tsv);
        const fs::path script = out / "loss.gp";
        std::ofstream gp(script);
        gp << "set terminal pngcairo size 900,540\nset output '" << (out / "loss.png").string() << "'\n"
           << "set title 'FLASH training'\nset xlabel 'step'\nset ylabel 'loss (nats/token)'\nset grid\n"
           << "plot '" << (out / "train_loss.tsv").string() << "' using 1:2 with lines title 'train', '"
           << (out / "val_loss.tsv").string() << "' using 1:2 with linespoints title 'validation'\n";
        gp.close();
        const int status = run_program_quietly({"gnuplot", script.string()});
        if (status > 0 && !o.quiet) std::printf("note: gnuplot failed; no loss.png\n");  // -1: no gnuplot here
    };

    if (st.step >= o.steps && !o.quiet)
        std::printf("the checkpoint is at step %lld, --steps is %d: nothing to train (raise --steps to go on)\n",
                    (long long)st.step, o.steps);
    for (int64_t step = st.step + 1; step <= o.steps; step++) {
        const auto t0 = std::chrono::steady_clock::now();
        train_loader.next_batch(inputs, targets);
        const double loss = trainee.forward(inputs.data(), targets.data(), B, T);
        if (!std::isfinite(loss)) {
            std::fprintf(stderr, "error: the training loss is %g at step %lld; stopping. The last checkpoint in %s is "
                                 "intact (hint: lower --lr or --grad-clip and --resume)\n",
                         loss, (long long)step, o.out_dir.c_str());
            result.interrupted = true;
            break;
        }
        const double norm = trainee.backward(o.grad_clip);
        const double lr = learning_rate(o, step);
        trainee.adamw_update(lr, opt, step);
        const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const double tok_s = B * T / sec;
        result.steps_done = step;
        result.last_train_loss = loss;
        if (!o.quiet) {
            // the share of the CPU's measured sgemm peak; on the GPU, the model FLOP/s themselves
            char speed[64];
            if (peak > 0) std::snprintf(speed, sizeof speed, "%4.1f%% of matmul peak", 100 * tok_s * flops_per_token / peak);
            else std::snprintf(speed, sizeof speed, "%.2f TFLOP/s", tok_s * flops_per_token / 1e12);
            std::printf("step %6lld/%d | loss %.4f | lr %.2e | norm %7.3f | %7.1f ms | %7.0f tok/s | %s\n",
                        (long long)step, o.steps, loss, lr, norm, sec * 1e3, tok_s, speed);
            std::fflush(stdout);  // one line per step, also when piped to a file
        }
        std::fprintf(metrics,
                     "{\"step\": %lld, \"train_loss\": %.6f, \"lr\": %.6e, \"grad_norm\": %.6f, \"ms\": %.3f, "
                     "\"tok_per_s\": %.1f}\n",
                     (long long)step, loss, lr, norm, sec * 1e3, tok_s);
        std::fprintf(train_tsv, "%lld\t%.6f\n", (long long)step, loss);
        // Every line reaches the file at once: a killed run loses no line it printed, and leaves no half line
        // that a later line could be glued to.
        std::fflush(metrics);
        std::fflush(train_tsv);

        if (step % o.eval_interval == 0 || step == o.steps) {
            const double val = evaluate();
            const double bpb = val / std::log(2.0) / val_bytes_per_token;
            result.last_val_loss = val;
            if (!o.quiet) std::printf("step %6lld | val loss %.4f | val bits/byte %.4f\n", (long long)step, val, bpb);
            std::fprintf(metrics, "{\"step\": %lld, \"val_loss\": %.6f, \"val_bpb\": %.6f}\n", (long long)step, val, bpb);
            std::fprintf(val_tsv, "%lld\t%.6f\n", (long long)step, val);
            std::fflush(metrics);
            std::fflush(val_tsv);
            plot();
        }
        if (o.sample_interval > 0 && (step % o.sample_interval == 0 || step == o.steps) && !o.quiet) {
            trainee.sync_to_cpu();
            std::string text = sample_text(model, tok, o.sample_tokens, o.seed ^ (uint64_t)step);
            std::printf("---- sample at step %lld ----\n%s\n----\n", (long long)step, text.c_str());
        }
        const bool stop = g_stop_requested != 0, pause = o.stop_after > 0 && step - st.step >= o.stop_after;
        if ((step % o.ckpt_interval == 0 || step == o.steps || stop || pause) && !checkpoint(step)) {
            result.steps_done = step - 1;
            result.interrupted = true;
            break;
        }
        if (stop || pause) {
            if (!o.quiet)
                std::printf("%s: checkpoint written at step %lld; continue with --resume\n",
                            stop ? "interrupted" : "--stop-after reached", (long long)step);
            result.interrupted = stop;
            break;
        }
    }
    std::fclose(metrics);
    std::fclose(train_tsv);
    std::fclose(val_tsv);
    plot();
    return result;
}
