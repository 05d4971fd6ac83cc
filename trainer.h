// trainer.h: training a model on a token file: options, the learning-rate schedule, the loop.
// train.cpp is the command line around it; the tests call these functions directly.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "eval.h"
#include "flash.h"
#include "formats/checkpoint.h"
#include "formats/config.h"

// Every option of ./train: its name is the long option (--name) and the key in a JSON options file.
struct TrainOptions {
    std::string model = "small";     // a preset (formats/config.h: model_preset_names) or a JSON model config file
    int d = 0, e = 0, s = 0, layers = 0, chunk = 0, seq_len = 0;  // 0: keep the model's value
    int batch = 8;
    int steps = 2000;
    int stop_after = 0;              // stop (with a checkpoint) after this many steps of this run; 0: never
    double lr = 3e-3, lr_min = 3e-4;  // peak and floor of the schedule
    int warmup = 100;
    double weight_decay = 0.1, grad_clip = 1.0, beta1 = 0.9, beta2 = 0.95;
    int eval_interval = 100, eval_batches = 8;
    int sample_interval = 500, sample_tokens = 64;
    int ckpt_interval = 500, keep_ckpts = 3;
    std::string out_dir = "runs/flash";  // checkpoints, metrics.jsonl, loss.png
    std::string data_dir = "data";       // train.bin, val.bin, tokenizer.json
    uint64_t seed = 1337;
    int threads = 0;                     // 0: all cores, else 1..1024
    std::string device = "cpu";          // cpu | cuda | auto
    std::string precision = "fp32";      // the GPU's matrix products: fp32 | tf32 (model.h: MatmulPrecision)
    std::string objective = "ar";        // ar | mlm (data/mlm.h; mlm needs a model config with "causal": false)
    double dist_timeout = 300;           // under mpirun: seconds one collective may wait (dist.h); 0: never
    bool resume = false;
    bool overwrite = false;              // a fresh run may replace the run in out_dir
    bool quiet = false;                  // no per-step lines (tests)
    bool eval_only = false;              // score a checkpoint on the whole validation set and exit
    std::string load;                    // --eval-only's checkpoint ("": the newest in out_dir)
};

// Parses argv (after the JSON file given with --options FILE, if any, so the command line wins), with the one
// option parser (options.h). Throws flash_error for an unknown option or a bad value, naming both.
TrainOptions parse_train_options(int argc, char** argv);
std::string train_options_help();
// Refuses option values outside their domain (betas in [0, 1), lr >= 0, --resume with --overwrite, ...), naming the
// option: called by parse_train_options and by run_training, before anything is allocated or written. (The option
// table range-checks each value it parses; this holds the domains a table row cannot say, and guards TrainOptions
// built in code, as the tests do.)
void check_train_options(const TrainOptions& o);
nlohmann::json train_options_to_json(const TrainOptions& o);

// The model config the options describe, as JSON of its arch (vocab_size comes from the data). --e, --s and --chunk
// are FLASH's: for another arch they are an error naming them.
nlohmann::json model_config_from_options(const TrainOptions& o, int vocab_size);

// Linear warm-up from lr/warmup to lr over `warmup` steps, then cosine decay to lr_min at `steps`.
// step counts from 1.
double learning_rate(const TrainOptions& o, int64_t step);

// Checkpoints (save_checkpoint, load_checkpoint, latest_checkpoint, ...) are in formats/checkpoint.h.

// Trains as the options say. Returns the final training loss; writes metrics.jsonl and loss.png
// under out_dir. Stops early (with a checkpoint) when stop_requested() turns true (Ctrl-C).
struct TrainResult {
    int64_t steps_done = 0;
    double last_train_loss = 0, last_val_loss = 0;  // last_val_loss: on the sample (eval.h)
    EvalResult whole_val;  // the whole validation set, when this run reached the end of the schedule (else empty)
    bool interrupted = false;
};
TrainResult run_training(const TrainOptions& o);
// ./train --eval-only: the whole validation set's loss under the checkpoint o.load (or the newest in o.out_dir),
// on o.device with batches of o.batch rows; prints it and returns it. Needs only the data and the checkpoint.
EvalResult run_eval_only(const TrainOptions& o);
extern volatile int g_stop_requested;  // set by the SIGINT and SIGTERM handlers (to the signal's number)
