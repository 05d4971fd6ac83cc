// trainer.cpp: options, learning-rate schedule and the training loop of ./train. Read trainer.h first.
//
// The loop (run_training) reads as llm.c's: next batch, forward, zero_grad, backward, clip, update; evaluation,
// sampling, checkpointing and logging are named functions around it. The model is a Model (model.h), on the CPU or
// the GPU: the loop never asks which.
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
#include <optional>

#include "data/dataloader.h"
#include "data/mlm.h"
#include "data/tokenfile.h"
#include "decode.h"
#include "decoder.h"
#include "dist.h"
#include "formats/json_file.h"
#include "options.h"
#include "resource_check.h"
#include "rundir.h"
#include "tokenizer/bpe.h"
#include "value_check.h"

using json = nlohmann::json;
namespace fs = std::filesystem;

volatile int g_stop_requested = 0;

// ====================================================================================================
// Options: one table (options.h) drives the command line, the JSON options file and --help.

static OptionTable option_table(TrainOptions& o) {
    const long long kMaxInt = 2147483647, kMaxWidth = 1 << 16;
    OptionTable t;
    t.add("model", o.model, "a preset (below) or a JSON model config (FLASH.md section 5, BASELINES.md section 6)");
    t.add("d", o.d, "model width (0: the model's; a baseline's n_heads, ffn, features follow d)", 0, kMaxWidth);
    t.add("e", o.e, "FLASH: expanded width (0: the model's)", 0, kMaxWidth);
    t.add("s", o.s, "FLASH: query/key width (0: the model's)", 0, kMaxWidth);
    t.add("layers", o.layers, "FLASH layers, or a baseline's blocks (0: the model's)", 0, 1024);
    t.add("chunk", o.chunk, "FLASH: chunk size C (0: the model's)", 0, kMaxWidth);
    t.add("seq-len", o.seq_len, "sequence length T, a multiple of C (Combiner: of block) (0: the model's)", 0,
          1 << 24);
    t.add("batch", o.batch, "sequences per step", 1, 1 << 20);
    t.add("steps", o.steps, "optimizer steps in all (a resumed run continues up to this)", 0, kMaxInt);
    t.add("stop-after", o.stop_after, "stop with a checkpoint after this many steps of this run (0: never)", 0, kMaxInt);
    t.add("lr", o.lr, "peak learning rate", 0, 1e300);
    t.add("lr-min", o.lr_min, "learning-rate floor at the end of the cosine decay", 0, 1e300);
    t.add("warmup", o.warmup, "linear warm-up steps", 0, kMaxInt);
    t.add("weight-decay", o.weight_decay, "AdamW decoupled weight decay (matrices only)", 0, 1e300);
    t.add("grad-clip", o.grad_clip, "clip the global gradient norm to this (0: off)", 0, 1e300);
    t.add("beta1", o.beta1, "AdamW beta1", 0, 1);
    t.add("beta2", o.beta2, "AdamW beta2", 0, 1);
    t.add("eval-interval", o.eval_interval, "steps between validation evaluations", 1, kMaxInt);
    t.add("eval-batches", o.eval_batches, "batches of the fixed validation sample per evaluation", 1, kMaxInt);
    t.add("sample-interval", o.sample_interval, "steps between text samples (0: none)", 0, kMaxInt);
    t.add("sample-tokens", o.sample_tokens, "tokens per text sample", 0, kMaxInt);
    t.add("ckpt-interval", o.ckpt_interval, "steps between checkpoints (one is also written at the end)", 1, kMaxInt);
    t.add("keep-ckpts", o.keep_ckpts, "checkpoints kept (the newest)", 1, kMaxInt);
    t.add("out-dir", o.out_dir, "directory of checkpoints, metrics.jsonl and loss.png");
    t.add("data-dir", o.data_dir, "directory with train.bin, val.bin and tokenizer.json (data/prepare.sh)");
    t.add("seed", o.seed, "seed of the weights and the data order");
    t.add("threads", o.threads, "CPU threads (0: all cores)", 0, 1024);
    t.add("device", o.device, "cpu, cuda, or auto (the GPU when one is present)");
    t.add("precision", o.precision, "the GPU's matrix products: fp32, or tf32 tensor cores with fp32 sums "
                                    "(parameters, moments and the other kernels stay fp32)");
    t.add("objective", o.objective, "ar (auto-regressive) or mlm (masked LM: needs a model config with \"causal\": "
                                    "false; docs/BASELINES.md section 4)");
    t.add("dist-timeout", o.dist_timeout, "under mpirun: seconds a collective may wait before the job ends (0: never)",
          0, 1e9);
    t.add_flag("resume", o.resume, "continue from the newest checkpoint in out-dir");
    t.add_flag("overwrite", o.overwrite, "start afresh in an out-dir that holds a run, deleting it");
    t.add_flag("quiet", o.quiet, "no per-step lines");
    t.add_flag("eval-only", o.eval_only, "score a checkpoint on the whole validation set and exit");
    t.add("load", o.load, "checkpoint for --eval-only (default: newest in out-dir)");
    return t;
}

static std::string preset_list() {
    std::string names;
    for (const std::string& n : model_preset_names()) names += (names.empty() ? "" : ", ") + n;
    return names;
}

std::string train_options_help() {
    TrainOptions defaults;
    return "usage: ./train [--options FILE.json] [--name value ...]\n"
           "Trains a model on data/train.bin (made by data/prepare.sh). Options (a JSON options file takes the same\n"
           "names as keys; the command line overrides it):\n" +
           option_table(defaults).help() + "  model presets: " + preset_list() +
           "\n                     (FLASH: tiny, small, base; the baselines' small ones match FLASH small's\n"
           "                     parameters; a JSON config's \"arch\" is flash, transformer++, performer or combiner)\n" +
           "  --options FILE     read options from a JSON object\n"
           "  --debug-state OUT  write one step's batch, loss, weights and gradients to OUT and exit\n"
           "                     (with --strong-init, --double, --load CKPT; see README)\n";
}

json train_options_to_json(const TrainOptions& o) {
    TrainOptions copy = o;
    return option_table(copy).to_json();
}

TrainOptions parse_train_options(int argc, char** argv) {
    TrainOptions o;
    OptionTable table = option_table(o);
    for (int i = 1; i + 1 < argc; i++)
        if (std::string(argv[i]) == "--options")
            table.set_all_json(read_json_file(argv[i + 1], "options file", "check the path and the JSON"),
                               std::string("options file '") + argv[i + 1] + "'");
    table.parse(argc, argv, {"options"});
    check_train_options(o);
    return o;
}

void check_train_options(const TrainOptions& o) {
    FLASH_CHECK(o.batch > 0, "--batch must be positive, got " << o.batch, "");
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
    FLASH_CHECK(!(o.resume && o.overwrite), "--resume and --overwrite contradict each other",
                "--resume continues the run in --out-dir, --overwrite replaces it: give one");
    FLASH_CHECK(o.device == "cpu" || o.device == "cuda" || o.device == "auto",
                "--device must be cpu, cuda or auto, got '" << o.device << "'", "");
    // The precision's name now, and tf32 against --device cpu; --device auto is checked once it has chosen.
    matmul_precision(o.precision, o.device == "cpu" ? Device::cpu : Device::cuda);
    flash_data::parse_objective(o.objective);  // throws for an unknown one
    FLASH_CHECK(o.load.empty() || o.eval_only, "--load is for --eval-only (training does not start from a checkpoint)",
                "to continue a run use --resume; to score a checkpoint use --eval-only --load CKPT");
}

json model_config_from_options(const TrainOptions& o, int vocab_size) {
    json c = load_model_config_json(o.model);
    const std::string arch = model_arch(c);
    c["vocab_size"] = vocab_size;
    if (o.seq_len) c["seq_len"] = o.seq_len;
    if (o.layers) c["n_layers"] = o.layers;
    if (arch == "flash") {
        if (o.d) c["d"] = o.d;
        if (o.e) c["e"] = o.e;
        if (o.s) c["s"] = o.s;
        if (o.chunk) c["chunk"] = o.chunk;
        return normalized_model_config(c);
    }
    for (const auto& [name, value] : {std::pair<const char*, int>{"e", o.e}, {"s", o.s}, {"chunk", o.chunk}})
        FLASH_CHECK(value == 0, "--" << name << " is a FLASH option; arch " << arch << " has no '" << name << "'",
                    "leave it out" << (std::string(name) == "chunk" && arch == "combiner"
                                           ? " (Combiner's span is the config key block: write a JSON model config)"
                                           : ""));
    if (o.d) {  // a new width: the widths that follow d (BASELINES.md §1) follow it
        c["d"] = o.d;
        for (const char* k : {"n_heads", "ffn", "features"}) c.erase(k);
    }
    return normalized_model_config(c);
}

double learning_rate(const TrainOptions& o, int64_t step) {
    if (step <= o.warmup) return o.lr * (double)step / std::max(o.warmup, 1);
    if (step >= o.steps) return o.lr_min;
    const double progress = (double)(step - o.warmup) / (double)(o.steps - o.warmup);  // (0, 1)
    return o.lr_min + 0.5 * (o.lr - o.lr_min) * (1.0 + std::cos(M_PI * progress));
}

// ====================================================================================================
// Text samples

// Text from the model: its cached decoder (decoder.h) from <|endoftext|>, temperature 0.8, top-k 50, on a host copy
// of the weights (the model may be on the GPU, and its activations stay as they are).
static std::string sample_text(const Model<float>& model, const bpe::Tokenizer& tok, int n_tokens, uint64_t seed) {
    std::unique_ptr<TextDecoder> dec = make_text_decoder(model);
    const int V = dec->vocab_size();
    std::vector<float> logits(V);
    const int start = (int)tok.eot_id();
    dec->prefill(&start, 1, logits.data());
    Rng rng(seed);
    std::vector<uint32_t> out;
    for (int i = 0; i < n_tokens; i++) {
        const int next = sample_token(logits.data(), V, 0.8, 50, 1.0, rng);
        if (next == (int)tok.eot_id() && !out.empty()) break;  // the document ended (a leading one is skipped)
        if (next != (int)tok.eot_id()) out.push_back((uint32_t)next);
        dec->step(next, logits.data());
    }
    return tok.decode(out);
}

// ====================================================================================================
// The pieces of a run, each a named function, called by the loop below.

namespace {

// Everything a run holds besides the model.
struct Run {
    explicit Run(const TrainOptions& options) : o(options) {}
    const TrainOptions& o;
    bpe::Tokenizer tok;
    flash_data::TokenFile train_tokens, val_tokens;
    double val_bytes_per_token = 0;
    std::vector<uint32_t> token_bytes;    // bytes of each token id's text (bits per byte of the scored text)
    std::vector<EvalWindow> val_sample;   // the fixed validation sample (eval.h), the same at every evaluation
    FILE *metrics = nullptr, *train_tsv = nullptr, *val_tsv = nullptr;
    double flops_per_step_token = 0;  // training FLOPs per token (3 × forward)
    double peak = 0;                  // the CPU's measured sgemm peak (0 on the GPU, or quiet)
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    int64_t first_step = 1;           // of this run (a resumed run starts later)
    int T = 0;                        // sequence length
    flash_data::Objective objective = flash_data::Objective::ar;
    flash_data::MlmVocab mlm_vocab;   // the mask and special ids (mlm only)
    const flash_data::MlmVocab* mlm() const { return objective == flash_data::Objective::mlm ? &mlm_vocab : nullptr; }
};

// The objective of the options, and for mlm the tokenizer's mask token: a tokenizer trained before <|mask|> existed
// serves ar only.
void set_objective(Run& run) {
    run.objective = flash_data::parse_objective(run.o.objective);
    if (run.objective != flash_data::Objective::mlm) return;
    FLASH_CHECK(run.tok.has_mask(),
                "--objective mlm needs the <|mask|> token, and the tokenizer in '" << run.o.data_dir
                    << "' was trained before it existed",
                "retrain the tokenizer and the token files: data/prepare.sh --force (the old tokenizer still serves "
                "--objective ar)");
    run.mlm_vocab = {run.tok.vocab_size(), run.tok.mask_id(), run.tok.special_ids()};
}

// The model must suit the objective (data/mlm.h); every architecture's config says "causal" (absent: causal).
void check_model_objective(const Run& run, const Model<float>& model) {
    flash_data::check_objective_fits_model(run.objective, model.config_json().value("causal", true));
}

// Data and tokenizer, with a message naming the command that prepares them. Scoring a checkpoint (--eval-only)
// needs no training split.
void load_data(Run& run, bool need_train = true) {
    const fs::path data(run.o.data_dir);
    std::vector<std::string> files = {"val.bin", "tokenizer.json"};
    if (need_train) files.push_back("train.bin");
    for (const std::string& f : files)
        FLASH_CHECK(fs::exists(data / f), "no " << (data / f).string() << ": the data is not prepared",
                    "run data/prepare.sh (or ./train.sh, which prepares, builds and trains), or give the --data-dir "
                    "the model was trained on");
    run.tok = bpe::Tokenizer::load((data / "tokenizer.json").string());
    if (need_train) run.train_tokens = flash_data::load_token_file((data / "train.bin").string(), run.tok.vocab_size());
    run.val_tokens = flash_data::load_token_file((data / "val.bin").string(), run.tok.vocab_size());
    run.val_bytes_per_token =
        (double)run.tok.decode(run.val_tokens.tokens).size() / (double)run.val_tokens.tokens.size();
    run.token_bytes = token_byte_lengths(run.tok);
    set_objective(run);
}

void print_header(const Run& run, const Model<float>& model, Device device) {
    const TrainOptions& o = run.o;
    if (device == Device::cuda) std::printf("%s training on the GPU (CUDA)\n", model.arch().c_str());
    else std::printf("%s training on the CPU, %d threads\n", model.arch().c_str(), omp_get_max_threads());
    std::printf("+-----------------+------------------------------------------+\n");
    const json model_json = model.config_json(), options_json = train_options_to_json(o);
    for (auto& kv : model_json.items()) std::printf("| %-15s | %-40s |\n", kv.key().c_str(), kv.value().dump().c_str());
    for (auto& kv : options_json.items())
        if (kv.key() != "model") std::printf("| %-15s | %-40s |\n", kv.key().c_str(), kv.value().dump().c_str());
    std::printf("+-----------------+------------------------------------------+\n");
    const size_t trained = trained_param_count(model.tensor_specs());
    const size_t fixed = tensor_element_count(model.tensor_specs()) - trained;
    std::printf("parameters: %zu", trained);
    if (fixed > 0) std::printf(" (and %zu fixed, not trained)", fixed);
    std::printf("   FLOPs per token: %.1f M forward, %.1f M training step\n", model.forward_flops_per_token() / 1e6,
                run.flops_per_step_token / 1e6);
    std::printf("data: %zu train tokens, %zu val tokens (%.2f bytes/token), vocab %u\n", run.train_tokens.tokens.size(),
                run.val_tokens.tokens.size(), run.val_bytes_per_token, run.tok.vocab_size());
    if (run.peak > 0) std::printf("matrix-multiply peak of this machine (sgemm 1024^3): %.1f GFLOP/s\n", run.peak / 1e9);
}

// Metrics: JSON lines for machines, TSV for the plot. A fresh run starts them anew, a resumed one appends.
// Under mpirun, rank 0 alone writes them; the other ranks' logs go to /dev/null, so the loop logs unconditionally.
void open_logs(Run& run) {
    const bool lead = dist_get().lead();
    const fs::path out(run.o.out_dir);
    const char* mode = run.o.resume ? "a" : "w";
    auto log_path = [&](const char* name) { return lead ? (out / name).string() : std::string("/dev/null"); };
    run.metrics = std::fopen(log_path("metrics.jsonl").c_str(), mode);
    run.train_tsv = std::fopen(log_path("train_loss.tsv").c_str(), mode);
    run.val_tsv = std::fopen(log_path("val_loss.tsv").c_str(), mode);
    FLASH_CHECK(run.metrics && run.train_tsv && run.val_tsv, "cannot write metrics under '" << run.o.out_dir << "'",
                "check permissions");
}

void close_logs(Run& run) {
    for (FILE* f : {run.metrics, run.train_tsv, run.val_tsv})
        if (f) std::fclose(f);
    run.metrics = run.train_tsv = run.val_tsv = nullptr;
}

// "1m05s", "2h03m": short, for the step line.
std::string short_duration(double sec) {
    char buf[32];
    const long long s = (long long)std::llround(std::max(0.0, sec));
    if (s >= 3600) std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, s / 60 % 60);
    else std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
    return buf;
}

// One line per step on stdout (with the time since the start and an estimate of the time to go), and one JSON
// line and one TSV line in the logs.
void log_step(const Run& run, int64_t step, double loss, double lr, double norm, double sec) {
    const TrainOptions& o = run.o;
    const double tok_s = (double)o.batch * run.T / sec;
    if (!o.quiet) {
        // the share of the CPU's measured sgemm peak; on the GPU, the model FLOP/s themselves
        char speed[64];
        if (run.peak > 0)
            std::snprintf(speed, sizeof speed, "%4.1f%% of matmul peak", 100 * tok_s * run.flops_per_step_token / run.peak);
        else std::snprintf(speed, sizeof speed, "%.2f TFLOP/s", tok_s * run.flops_per_step_token / 1e12);
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - run.start).count();
        const double left = elapsed / (double)(step - run.first_step + 1) * (double)(o.steps - step);
        std::printf("step %6lld/%d | loss %.4f | lr %.2e | norm %7.3f | %7.1f ms | %7.0f tok/s | %s | %s elapsed, %s left\n",
                    (long long)step, o.steps, loss, lr, norm, sec * 1e3, tok_s, speed, short_duration(elapsed).c_str(),
                    short_duration(left).c_str());
        std::fflush(stdout);  // one line per step, also when piped to a file
    }
    std::fprintf(run.metrics,
                 "{\"step\": %lld, \"train_loss\": %.6f, \"lr\": %.6e, \"grad_norm\": %.6f, \"ms\": %.3f, "
                 "\"tok_per_s\": %.1f}\n",
                 (long long)step, loss, lr, norm, sec * 1e3, tok_s);
    std::fprintf(run.train_tsv, "%lld\t%.6f\n", (long long)step, loss);
    // Every line reaches the file at once: a killed run loses no line it printed, and leaves no half line that a
    // later line could be glued to.
    std::fflush(run.metrics);
    std::fflush(run.train_tsv);
}

// The loss over the given validation windows (eval.h): the fixed sample during training, the whole set at the end.
EvalResult evaluate(const Run& run, Model<float>& model, const std::vector<EvalWindow>& windows) {
    return evaluate_windows([&](const int* x, const int* y, int b, int t) { return model.forward(x, y, b, t); },
                            run.val_tokens.tokens, windows, run.token_bytes, run.o.batch, run.T, run.mlm());
}

void log_eval(const Run& run, int64_t step, const EvalResult& val) {
    if (!run.o.quiet)
        std::printf("step %6lld | val loss %.4f | val bits/byte %.4f | sample of %llu %stokens\n", (long long)step,
                    val.loss(), val.bits_per_byte(), (unsigned long long)val.tokens, run.mlm() ? "masked " : "");
    std::fprintf(run.metrics,
                 "{\"step\": %lld, \"objective\": \"%s\", \"val_loss\": %.6f, \"val_bpb\": %.6f, "
                 "\"val_tokens\": %llu}\n",
                 (long long)step, flash_data::objective_name(run.objective), val.loss(), val.bits_per_byte(),
                 (unsigned long long)val.tokens);
    std::fprintf(run.val_tsv, "%lld\t%.6f\n", (long long)step, val.loss());
    std::fflush(run.metrics);
    std::fflush(run.val_tsv);
}

// The figure to compare models by: every validation token once (eval.h), printed and logged.
EvalResult evaluate_whole_set(const Run& run, Model<float>& model, int64_t step) {
    const auto t0 = std::chrono::steady_clock::now();
    const EvalResult r = evaluate(run, model, whole_set_windows(run.val_tokens.tokens.size(), run.T, run.objective));
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!run.o.quiet) {
        if (step > 0) std::printf("step %6lld | ", (long long)step);
        std::printf("whole validation set%s: %s | %.0f s\n", run.mlm() ? " (masked LM, the chosen tokens)" : "",
                    format_eval(r).c_str(), sec);
    }
    if (run.metrics)
        std::fprintf(run.metrics,
                     "{\"step\": %lld, \"objective\": \"%s\", \"whole_val_loss\": %.6f, \"whole_val_bpb\": %.6f, "
                     "\"whole_val_tokens\": %llu, \"whole_val_bytes\": %llu}\n",
                     (long long)step, flash_data::objective_name(run.objective), r.loss(), r.bits_per_byte(),
                     (unsigned long long)r.tokens, (unsigned long long)r.bytes);
    if (run.metrics) std::fflush(run.metrics);
    return r;
}

// Runs a program found on PATH, its output discarded, and waits for it: its exit status, or -1 when it cannot be
// started (not installed). Unlike std::system, it leaves this process's signal handling alone: system() ignores
// SIGINT while its child runs, and a Ctrl-C in that window (gnuplot runs at every evaluation) was lost.
int run_program_quietly(const std::vector<std::string>& args) {
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

// loss.png from the TSV logs, when gnuplot is there.
void plot_losses(const Run& run) {
    const TrainOptions& o = run.o;
    const fs::path out(o.out_dir);
    std::fflush(run.train_tsv);
    std::fflush(run.val_tsv);
    if (!dist_get().lead()) return;
    const fs::path script = out / "loss.gp";
    std::ofstream gp(script);
    gp << "set terminal pngcairo size 900,540\nset output '" << (out / "loss.png").string() << "'\n"
       << "set title 'FLASH training'\nset xlabel 'step'\nset ylabel 'loss (nats/token)'\nset grid\n"
       << "plot '" << (out / "train_loss.tsv").string() << "' using 1:2 with lines title 'train', '"
       << (out / "val_loss.tsv").string() << "' using 1:2 with linespoints title 'validation'\n";
    gp.close();
    const int status = run_program_quietly({"gnuplot", script.string()});
    if (status > 0 && !o.quiet) std::printf("note: gnuplot failed; no loss.png\n");  // -1: no gnuplot here
}

void print_sample(const Run& run, const Model<float>& model, int64_t step) {
    const std::string text = sample_text(model, run.tok, run.o.sample_tokens, run.o.seed ^ (uint64_t)step);
    std::printf("---- sample at step %lld ----\n%s\n----\n", (long long)step, text.c_str());
}

// Writes a checkpoint; false (and none written) when the update made a weight or moment non-finite. Under mpirun every
// rank first checks that the replicas agree, and all take the same decision; rank 0 alone writes.
bool checkpoint(const Run& run, const Model<float>& model, const flash_data::DataLoader& train_loader, int64_t step) {
    Dist& dist = dist_get();
    dist_check_replicas(dist, model, "at the checkpoint of step " + std::to_string(step));
    std::string bad;
    for (ModelBuffer which : {ModelBuffer::params, ModelBuffer::adam_m, ModelBuffer::adam_v}) {
        std::vector<float> host(model.param_count());
        model.copy_to_host(which, host.data());
        bad = first_bad_tensor(model.tensor_specs(), host, /*nonnegative=*/which == ModelBuffer::adam_v);
        if (!bad.empty()) {
            if (which != ModelBuffer::params) bad = (which == ModelBuffer::adam_m ? "adam_m." : "adam_v.") + bad;
            break;
        }
    }
    if (!bad.empty()) {
        if (dist.lead())
            std::fprintf(stderr, "error: after step %lld tensor '%s' holds a non-finite value; stopping without "
                                 "writing a checkpoint. The last checkpoint in %s is intact (hint: lower --lr or "
                                 "--grad-clip and --resume)\n", (long long)step, bad.c_str(), run.o.out_dir.c_str());
        return false;
    }
    if (!dist.lead()) return true;
    const flash_data::DataLoaderState ls = train_loader.state();
    const std::string path =
        save_checkpoint(run.o.out_dir, model,
                        TrainState{step, ls.rng_state, ls.batches, flash_data::objective_name(run.objective),
                                   dist.size()});
    prune_checkpoints(run.o.out_dir, run.o.keep_ckpts);
    if (!run.o.quiet) std::printf("checkpoint %s\n", path.c_str());
    return true;
}

// Continues from the newest checkpoint in out_dir: the model, its moments and the data loader's position.
int64_t resume(const Run& run, Model<float>& model, flash_data::DataLoader& train_loader) {
    const std::string path = latest_checkpoint(run.o.out_dir);
    FLASH_CHECK(!path.empty(), "--resume: no checkpoint in '" << run.o.out_dir << "'",
                "train without --resume first, or point --out-dir at the run to continue");
    const TrainState st = load_checkpoint(path, model);
    FLASH_CHECK(st.objective == flash_data::objective_name(run.objective),
                "checkpoint '" << path << "' was trained with --objective " << st.objective << ", this run asks for "
                               << flash_data::objective_name(run.objective),
                "resume with --objective " << st.objective << ", or use another --out-dir for a new run");
    flash_data::DataLoaderState ls = train_loader.state();
    ls.rng_state = st.loader_rng;
    ls.batches = st.loader_batches;
    train_loader.restore(ls);
    if (dist_get().lead()) trim_run_logs(run.o.out_dir, st.step);  // rank 0's logs: the others write none
    if (dist_get().lead()) std::printf("resumed from %s at step %lld\n", path.c_str(), (long long)st.step);
    const int ranks = dist_get().size();
    if (st.ranks != ranks && !run.o.quiet)
        std::printf("note: the checkpoint was trained by %d rank(s), this run has %d: every step still trains on the "
                    "same global batch of sequences (with the same --batch: the data order is a function of seed, step "
                    "and row), split "
                    "differently among the ranks, so the run continues from step %lld as before up to float "
                    "rounding, not bit for bit\n",
                    st.ranks, ranks, (long long)st.step);
    return st.step;
}

}  // namespace

// ====================================================================================================
// The loop

// Under mpirun: the global batch must split evenly among the ranks (equal rows, so the mean of the ranks' means is
// the global mean), and ranks other than 0 print nothing.
static TrainOptions options_for_rank(const TrainOptions& options, Dist& dist) {
    TrainOptions o = options;
    FLASH_CHECK(o.batch % dist.size() == 0, "--batch " << o.batch << " does not split evenly among " << dist.size()
                                                        << " ranks (each rank takes batch/ranks sequences)",
                "give a --batch that is a multiple of mpirun's -np");
    dist.set_timeout(o.dist_timeout);
    if (!dist.lead()) o.quiet = true;
    return o;
}

TrainResult run_training(const TrainOptions& options) {
    check_train_options(options);
    Dist& dist = dist_get();
    const TrainOptions o = options_for_rank(options, dist);
    if (o.threads > 0) {
        omp_set_num_threads(o.threads);
        openblas_set_num_threads(o.threads);
    }
    const Device device = choose_device(o.device);
    set_matmul_precision(matmul_precision(o.precision, device));
    if (device == Device::cuda) dist_init_gpu(dist);
    Run run(o);
    load_data(run);
    const json cfg = model_config_from_options(o, (int)run.tok.vocab_size());
    const int B = o.batch, T = cfg.at("seq_len").get<int>();
    const int B_rank = B / dist.size();  // this rank's rows of each global batch
    run.T = T;
    // Refuse a batch that cannot fit before allocating it (the model checks its own parameters; on the GPU, flash.cu
    // checks its own memory; FLASH's activation layout is known here, the baselines' models check theirs).
    check_token_count(B, T);
    if (device == Device::cpu && model_arch(cfg) == "flash") {
        size_t n_act = 0, n_grad = 0;
        activation_counts(config_from_json(cfg), B_rank, T, &n_act, &n_grad);
        check_activations_fit((double)n_act, (double)n_grad, B_rank, T, sizeof(float));
    }
    std::unique_ptr<Model<float>> model = make_model<float>(cfg, device);
    model->init_weights(o.seed);
    flash_data::DataLoader train_loader(run.train_tokens.tokens, B_rank, T, flash_data::LoaderMode::kTrainRandom,
                                        o.seed, (uint64_t)dist.rank() * B_rank);
    run.val_sample = sample_windows(run.val_tokens.tokens.size(), T, o.eval_batches * B);
    // The run directory: locked for this run alone, leftovers of crashed writers removed, and an existing run
    // replaced only when asked to (rundir.h).
    // Under mpirun rank 0 alone owns it (the other ranks write nothing there).
    std::optional<RunDirLock> lock;
    if (dist.lead()) {
        lock.emplace(o.out_dir);
        remove_stale_temporaries(o.out_dir);
    }
    const int64_t done = o.resume ? resume(run, *model, train_loader) : 0;  // first: it names another objective
    check_model_objective(run, *model);
    dist_check_replicas(dist, *model, done ? "after the resume" : "at the start");
    // The last check: it may delete the old run. Rank 0's alone (the other ranks write nothing in out_dir).
    if (!o.resume && dist.lead()) prepare_fresh_run_dir(o.out_dir, o.overwrite);

    run.flops_per_step_token = 3 * model->forward_flops_per_token();
    run.peak = (o.quiet || device == Device::cuda) ? 0.0 : measure_sgemm_peak();
    if (!o.quiet) print_header(run, *model, device);
    open_logs(run);

    AdamWConfig opt;
    opt.beta1 = o.beta1;
    opt.beta2 = o.beta2;
    opt.weight_decay = o.weight_decay;
    std::vector<int32_t> inputs, targets;
    TrainResult result;
    result.steps_done = done;
    if (done >= o.steps && !o.quiet)
        std::printf("the checkpoint is at step %lld, --steps is %d: nothing to train (raise --steps to go on)\n",
                    (long long)done, o.steps);
    run.first_step = done + 1;
    run.start = std::chrono::steady_clock::now();
    for (int64_t step = done + 1; step <= o.steps; step++) {
        const auto t0 = std::chrono::steady_clock::now();
        flash_data::make_batch(run.objective, train_loader, run.mlm(), o.seed, (uint64_t)step, inputs, targets);
        const int64_t scored = count_scored(targets.data(), targets.size());
        // The global batch's loss, and Ctrl-C on any rank, agreed by all (one all-reduce; a no-op for one process).
        const StepTotals totals =
            dist_step_totals(dist, model->forward(inputs.data(), targets.data(), B_rank, T), scored, g_stop_requested);
        const double loss = totals.loss;
        if (!std::isfinite(loss)) {
            if (dist.lead())
                std::fprintf(stderr,
                             "error: the training loss is %g at step %lld; stopping. The last checkpoint in %s is "
                             "intact (hint: lower --lr or --grad-clip and --resume)\n",
                             loss, (long long)step, o.out_dir.c_str());
            result.interrupted = true;
            break;
        }
        model->zero_grad();
        model->backward();
        dist_average_grads(dist, *model, scored, totals.scored);  // the global batch's gradient on every rank
        const double norm = clip_grad_norm(*model, o.grad_clip);
        if (!std::isfinite(norm)) {  // a finite loss can still give an overflowing gradient: never apply it
            if (dist.lead())
                std::fprintf(stderr,
                             "error: the gradient norm is %g at step %lld (the loss was %.4f); stopping without "
                             "applying it. The last checkpoint in %s is intact (hint: lower --lr or --grad-clip and "
                             "--resume)\n",
                             norm, (long long)step, loss, o.out_dir.c_str());
            result.interrupted = true;
            break;
        }
        const double lr = learning_rate(o, step);
        model->adamw_update(lr, opt, step);
        const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        result.steps_done = step;
        result.last_train_loss = loss;
        log_step(run, step, loss, lr, norm, sec);

        if (step % o.eval_interval == 0 || step == o.steps) {
            const EvalResult val = evaluate(run, *model, run.val_sample);
            result.last_val_loss = val.loss();
            log_eval(run, step, val);
            plot_losses(run);
        }
        // (text samples need a causal model: none under mlm)
        if (o.sample_interval > 0 && (step % o.sample_interval == 0 || step == o.steps) && !o.quiet && !run.mlm())
            print_sample(run, *model, step);
        const bool stop = totals.stop, pause = o.stop_after > 0 && step - done >= o.stop_after;
        if ((step % o.ckpt_interval == 0 || step == o.steps || stop || pause) &&
            !checkpoint(run, *model, train_loader, step)) {
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
    if (result.steps_done == o.steps && done < o.steps && !result.interrupted)
        result.whole_val = evaluate_whole_set(run, *model, o.steps);
    plot_losses(run);
    close_logs(run);
    return result;
}

EvalResult run_eval_only(const TrainOptions& o) {
    FLASH_CHECK(dist_get().size() == 1, "--eval-only runs as one process, not under mpirun with several ranks",
                "run ./train --eval-only without mpirun");
    if (o.threads > 0) {
        omp_set_num_threads(o.threads);
        openblas_set_num_threads(o.threads);
    }
    const Device device = choose_device(o.device);
    set_matmul_precision(matmul_precision(o.precision, device));
    const std::string path = o.load.empty() ? latest_checkpoint(o.out_dir) : o.load;
    FLASH_CHECK(!path.empty(), "--eval-only: no --load CKPT given and no checkpoint in '" << o.out_dir << "'",
                "give --load PATH.safetensors, or the --out-dir of a run that wrote checkpoints");
    Run run(o);
    load_data(run, /*need_train=*/false);
    const nlohmann::json config = checkpoint_model_config(safetensors_read(path), path);
    std::unique_ptr<Model<float>> model = make_model<float>(config, device);
    check_model_objective(run, *model);
    const int vocab = config.value("vocab_size", 0);
    FLASH_CHECK(vocab == (int)run.tok.vocab_size(),
                "checkpoint '" << path << "' has vocab_size " << vocab << " but the tokenizer in '" << o.data_dir
                               << "' has " << run.tok.vocab_size(),
                "score it on the data it was trained on (--data-dir)");
    load_weights(path, *model);
    run.T = o.seq_len ? o.seq_len : config.value("seq_len", 0);
    if (!o.quiet)
        std::printf("scoring %s on the whole validation set: %zu tokens, windows of %d, %d per batch, on the %s\n",
                    path.c_str(), run.val_tokens.tokens.size(), run.T, o.batch,
                    device == Device::cuda ? "GPU" : "CPU");
    return evaluate_whole_set(run, *model, 0);  // step 0: no step to name
}
