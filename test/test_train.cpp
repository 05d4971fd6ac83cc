// test_train.cpp: the training program's pieces: the learning-rate schedule, bit-exact resume, refused
// checkpoints, and a short run that learns. Runs on a tiny corpus that the test writes itself.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>

#include "data/tokenfile.h"
#include "test/corpus.h"
#include "formats/json_file.h"
#include "resource_check.h"
#include "rundir.h"
#include "testutil.h"
#include "tokenizer/bpe.h"
#include "trainer.h"
#include "transformer.h"

namespace fs = std::filesystem;

namespace {

std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

TrainOptions tiny_options(const std::string& out_dir) {
    TrainOptions o;
    o.model = "tiny";
    o.d = 32; o.e = 64; o.s = 16; o.chunk = 8; o.seq_len = 32;
    o.batch = 4;
    o.steps = 12;
    o.warmup = 3;
    o.lr = 3e-3; o.lr_min = 3e-4;
    o.eval_interval = 4; o.eval_batches = 2;
    o.sample_interval = 0;
    o.ckpt_interval = 100;
    o.out_dir = out_dir;
    o.data_dir = make_data_dir();
    o.quiet = true;
    return o;
}

std::vector<std::string> train_loss_lines(const std::string& out_dir) {
    std::ifstream in(out_dir + "/metrics.jsonl");
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);)
        if (line.find("train_loss") != std::string::npos) lines.push_back(line.substr(0, line.find(", \"ms\"")));
    return lines;
}

TEST_CASE("learning-rate schedule: warm-up, cosine middle, floor") {
    TrainOptions o;
    o.lr = 1e-3; o.lr_min = 1e-4; o.warmup = 100; o.steps = 1100;
    CHECK(learning_rate(o, 1) == doctest::Approx(1e-5));
    CHECK(learning_rate(o, 50) == doctest::Approx(5e-4));
    CHECK(learning_rate(o, 100) == doctest::Approx(1e-3));                  // warm-up end: the peak
    CHECK(learning_rate(o, 600) == doctest::Approx((1e-3 + 1e-4) / 2));     // half way through the decay
    CHECK(learning_rate(o, 1100) == doctest::Approx(1e-4));                 // end: the floor
    CHECK(learning_rate(o, 350) > learning_rate(o, 351));                   // decreasing after warm-up
}

TEST_CASE("options: command line over JSON file, and bad options named") {
    const std::string path = "/tmp/flash_test_opts_" + std::to_string(getpid()) + ".json";
    std::ofstream(path) << R"({"batch": 3, "lr": 0.01, "model": "tiny"})";
    const char* argv[] = {"train", "--options", path.c_str(), "--lr", "0.02", "--out-dir", "x/y", "--resume"};
    TrainOptions o = parse_train_options(8, (char**)argv);
    CHECK(o.batch == 3);
    CHECK(o.lr == 0.02);
    CHECK(o.model == "tiny");
    CHECK(o.out_dir == "x/y");
    CHECK(o.resume);
    const char* bad1[] = {"train", "--bogus", "1"};
    CHECK_THROWS_WITH_AS(parse_train_options(3, (char**)bad1), doctest::Contains("unknown option '--bogus'"), flash_error);
    const char* bad2[] = {"train", "--batch", "many"};
    CHECK_THROWS_WITH_AS(parse_train_options(3, (char**)bad2), doctest::Contains("option --batch: 'many' is not an integer"),
                         flash_error);
    const char* bad3[] = {"train", "--device", "tpu"};
    CHECK_THROWS_WITH_AS(parse_train_options(3, (char**)bad3), doctest::Contains("--device must be cpu, cuda or auto"),
                         flash_error);
    // --precision: a name the GPU knows, and tf32 only where the GPU may run (the CPU computes in fp32)
    const char* bad4[] = {"train", "--precision", "bf16", "--device", "cuda"};
    CHECK_THROWS_WITH_AS(parse_train_options(5, (char**)bad4), doctest::Contains("--precision must be fp32 or tf32"),
                         flash_error);
    const char* bad5[] = {"train", "--precision", "tf32"};  // --device cpu, the default
    CHECK_THROWS_WITH_AS(parse_train_options(3, (char**)bad5), doctest::Contains("the CPU computes in fp32"),
                         flash_error);
    const char* gpu[] = {"train", "--precision", "tf32", "--device", "cuda"};
    CHECK(parse_train_options(5, (char**)gpu).precision == "tf32");
    CHECK(matmul_precision("tf32", Device::cuda) == MatmulPrecision::tf32);
    CHECK(matmul_precision("fp32", Device::cpu) == MatmulPrecision::fp32);
    set_matmul_precision(MatmulPrecision::fp32);  // needs no GPU, also in a build with CUDA
    std::remove(path.c_str());
}

TEST_CASE("N steps equal K steps, a checkpoint and a resume for N-K steps, bit for bit") {
    const std::string base = "/tmp/flash_test_resume_" + std::to_string(getpid());
    fs::remove_all(base);
    TrainOptions full = tiny_options(base + "/full");  // 12 steps in one run
    run_training(full);

    TrainOptions first = tiny_options(base + "/legs");
    first.stop_after = 5;  // the same 12-step schedule, stopped (with a checkpoint) after 5 steps
    TrainResult r1 = run_training(first);
    CHECK(r1.steps_done == 5);
    CHECK(latest_checkpoint(base + "/legs") == base + "/legs/ckpt_00000005.safetensors");
    TrainOptions second = tiny_options(base + "/legs");
    second.resume = true;
    TrainResult r2 = run_training(second);
    CHECK(r2.steps_done == 12);

    const std::string a = read_bytes(base + "/full/ckpt_00000012.safetensors");
    const std::string b = read_bytes(base + "/legs/ckpt_00000012.safetensors");
    CHECK(a.size() > 10000);
    CHECK(a == b);  // weights, AdamW moments and train state, byte for byte
    // every logged loss (and learning rate and gradient norm) of the two legs equals the uninterrupted run's
    std::vector<std::string> la = train_loss_lines(base + "/full"), lb = train_loss_lines(base + "/legs");
    REQUIRE(la.size() == 12);
    REQUIRE(lb.size() == 12);
    for (int i = 0; i < 12; i++) CHECK(la[i] == lb[i]);
    fs::remove_all(base);
}

// The baselines through the trainer: tiny presets at T = 16 (Combiner: 4 spans of block 4).
TrainOptions baseline_options(const std::string& arch, const std::string& out_dir) {
    TrainOptions o = tiny_options(out_dir);
    o.model = arch + "-tiny";
    o.d = 0; o.e = 0; o.s = 0; o.chunk = 0; o.seq_len = 16;
    o.steps = 8;
    return o;
}

TEST_CASE("every baseline: N steps equal K steps, a checkpoint and a resume, bit for bit; checkpoints round trip") {
    for (const char* arch : {"transformer++", "performer", "combiner"}) {
        INFO(arch);
        const std::string base = "/tmp/flash_test_baseline_" + std::to_string(getpid());
        fs::remove_all(base);
        TrainOptions full = baseline_options(arch, base + "/full");
        TrainResult r = run_training(full);
        CHECK(r.steps_done == 8);
        CHECK(std::isfinite(r.last_val_loss));
        TrainOptions first = baseline_options(arch, base + "/legs");
        first.stop_after = 3;
        CHECK(run_training(first).steps_done == 3);
        TrainOptions second = baseline_options(arch, base + "/legs");
        second.resume = true;
        CHECK(run_training(second).steps_done == 8);
        const std::string path = base + "/full/ckpt_00000008.safetensors";
        const std::string a = read_bytes(path), b = read_bytes(base + "/legs/ckpt_00000008.safetensors");
        CHECK(a.size() > 10000);
        CHECK(a == b);
        std::vector<std::string> la = train_loss_lines(base + "/full"), lb = train_loss_lines(base + "/legs");
        REQUIRE(la.size() == 8);
        REQUIRE(lb.size() == 8);
        for (int i = 0; i < 8; i++) CHECK(la[i] == lb[i]);

        // the checkpoint: the arch in its config, only the arch's keys, Ω with no moments; loaded and saved again,
        // the same bytes
        SafeTensorsFile f = safetensors_read(path);
        const nlohmann::json config = checkpoint_model_config(f, path);
        CHECK(config["arch"] == arch);
        CHECK(config.contains("block") == (std::string(arch) == "combiner"));
        CHECK(config.contains("features") == (std::string(arch) == "performer"));
        CHECK_FALSE(config.contains("chunk"));
        CHECK((f.find("layers.0.omega") != nullptr) == (std::string(arch) == "performer"));
        CHECK(f.find("adam_m.layers.0.omega") == nullptr);
        CHECK(f.find("adam_v.layers.0.w_qkv") != nullptr);
        std::unique_ptr<Model<float>> m = make_model<float>(config);
        const TrainState st = load_checkpoint(path, *m);
        CHECK(st.step == 8);
        CHECK(read_bytes(save_checkpoint(base + "/again", *m, st)) == a);

        if (std::string(arch) == "performer") {  // without its Ω, refused by name, and the model is left alone
            std::vector<SafeTensor> kept;
            for (const SafeTensor& t : f.tensors)
                if (t.name != "layers.0.omega") kept.push_back(t);
            safetensors_write(path, kept, f.metadata);
            std::unique_ptr<Model<float>> fresh = make_model<float>(config);
            fresh->init_weights(1);
            std::vector<float> before(fresh->param_count()), after(fresh->param_count());
            fresh->copy_to_host(ModelBuffer::params, before.data());
            CHECK_THROWS_WITH_AS(load_checkpoint(path, *fresh), doctest::Contains("no tensor 'layers.0.omega'"),
                                 flash_error);
            CHECK_THROWS_WITH_AS(load_weights(path, *fresh), doctest::Contains("cannot be redrawn"), flash_error);
            fresh->copy_to_host(ModelBuffer::params, after.data());
            CHECK(before == after);
            TrainOptions resume = baseline_options(arch, base + "/full");
            resume.resume = true;
            resume.steps = 10;
            CHECK_THROWS_WITH_AS(run_training(resume), doctest::Contains("no tensor 'layers.0.omega'"), flash_error);
        }
        fs::remove_all(base);
    }
}

TEST_CASE("the trainer's model options: FLASH's --e, --s, --chunk are errors for a baseline; --d and --layers apply") {
    TrainOptions o = baseline_options("combiner", "/tmp/unused");
    o.chunk = 8;
    CHECK_THROWS_WITH_AS(model_config_from_options(o, 300),
                         doctest::Contains("--chunk is a FLASH option; arch combiner"), flash_error);
    o.chunk = 0;
    o.e = 8;
    CHECK_THROWS_WITH_AS(model_config_from_options(o, 300), doctest::Contains("--e is a FLASH option"), flash_error);
    o.e = 0;
    o.d = 128;
    o.layers = 3;
    const nlohmann::json c = model_config_from_options(o, 300);
    CHECK(c["d"] == 128);
    CHECK(c["n_layers"] == 3);
    CHECK(c["n_heads"] == 2);  // BASELINES.md §1: d/64 heads, f = 3d, follow the new d
    CHECK(c["ffn"] == 384);
    CHECK(c["vocab_size"] == 300);
    CHECK(c["block"] == 4);
    o.seq_len = 18;
    CHECK_THROWS_WITH_AS(model_config_from_options(o, 300), doctest::Contains("not a multiple of 'block'"),
                         flash_error);
}

TEST_CASE("a corrupt, truncated or mismatched checkpoint is refused, and no file is overwritten") {
    const std::string dir = "/tmp/flash_test_badckpt_" + std::to_string(getpid());
    fs::remove_all(dir);
    TrainOptions o = tiny_options(dir);
    o.steps = 4;
    run_training(o);
    const std::string ckpt = dir + "/ckpt_00000004.safetensors";
    const std::string good = read_bytes(ckpt), metrics = read_bytes(dir + "/metrics.jsonl");
    REQUIRE(good.size() > 1000);

    TrainOptions again = o;
    again.resume = true;
    again.steps = 8;
    // truncated
    std::ofstream(ckpt, std::ios::binary) << good.substr(0, good.size() - 64);
    CHECK_THROWS_WITH_AS(run_training(again), doctest::Contains("the file is truncated"), flash_error);
    CHECK(read_bytes(ckpt) == good.substr(0, good.size() - 64));
    // corrupt header
    std::string bad = good;
    bad[8] = '#';  // the first byte of the JSON header
    std::ofstream(ckpt, std::ios::binary) << bad;
    CHECK_THROWS_WITH_AS(run_training(again), doctest::Contains("not valid JSON"), flash_error);
    CHECK(read_bytes(ckpt) == bad);
    // another model shape
    std::ofstream(ckpt, std::ios::binary) << good;
    TrainOptions other = again;
    other.d = 48;
    CHECK_THROWS_WITH_AS(run_training(other), doctest::Contains("another shape (checkpoint vs options: d: 32 vs 48)"),
                         flash_error);
    // nothing was written by the refused runs
    CHECK(read_bytes(ckpt) == good);
    CHECK(read_bytes(dir + "/metrics.jsonl") == metrics);
    CHECK(!fs::exists(dir + "/ckpt_00000005.safetensors"));
    fs::remove_all(dir);
}

TEST_CASE("missing data gets a message that names the command that prepares it") {
    TrainOptions o = tiny_options("/tmp/flash_test_nodata");
    o.data_dir = "/tmp/flash_test_no_such_dir";
    CHECK_THROWS_WITH_AS(run_training(o), doctest::Contains("run data/prepare.sh"), flash_error);
}

TEST_CASE("a short run on a tiny corpus lowers the validation loss below 1.5 nats") {
    const std::string dir = "/tmp/flash_test_learn_" + std::to_string(getpid());
    fs::remove_all(dir);
    TrainOptions o = tiny_options(dir);
    o.steps = 150;
    o.warmup = 10;
    o.lr = 1e-2;
    o.lr_min = 1e-3;
    o.eval_interval = 150;
    o.ckpt_interval = 1000;
    o.keep_ckpts = 1;
    TrainResult r = run_training(o);
    // log(300) = 5.7 nats at the start; the grammar's entropy is about 0.5 nats per token
    INFO("val loss " << r.last_val_loss);
    CHECK(r.last_val_loss < 1.5);
    CHECK(fs::exists(dir + "/metrics.jsonl"));
    fs::remove_all(dir);
}

TEST_CASE("evaluations: a fixed sample with its token count while training, the whole set at the end and with "
          "--eval-only") {
    const std::string dir = "/tmp/flash_test_eval_" + std::to_string(getpid());
    fs::remove_all(dir);
    TrainOptions o = tiny_options(dir);
    o.steps = 8;  // evaluations at 4 and 8 on the sample, then the whole set
    const TrainResult r = run_training(o);
    const bpe::Tokenizer tok = bpe::Tokenizer::load(o.data_dir + "/tokenizer.json");
    const std::vector<uint32_t> val = flash_data::load_token_file(o.data_dir + "/val.bin").tokens;
    REQUIRE(val.size() > 400);  // more than the sample's 2 batches × 4 rows × 32 tokens
    std::vector<std::string> val_lines, whole_lines;
    std::ifstream in(dir + "/metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
        if (line.find("\"val_loss\"") != std::string::npos) val_lines.push_back(line);
        if (line.find("\"whole_val_loss\"") != std::string::npos) whole_lines.push_back(line);
    }
    REQUIRE(val_lines.size() == 2);
    for (const std::string& line : val_lines) CHECK(line.find("\"val_tokens\": 256}") != std::string::npos);
    // the whole set: every token but the first is a target, and the bytes are exactly those tokens' text
    const std::string scored_text = tok.decode(val.data() + 1, val.size() - 1);
    REQUIRE(whole_lines.size() == 1);
    CHECK(r.whole_val.tokens == val.size() - 1);
    CHECK(r.whole_val.bytes == scored_text.size());
    CHECK(whole_lines[0].find("\"whole_val_tokens\": " + std::to_string(val.size() - 1) + ", \"whole_val_bytes\": " +
                              std::to_string(scored_text.size()) + "}") != std::string::npos);
    CHECK(r.whole_val.loss() > 0.5);
    CHECK(r.whole_val.loss() < 6.0);
    CHECK(r.whole_val.bits_per_byte() ==
          doctest::Approx(r.whole_val.loss() * (val.size() - 1) / std::log(2.0) / scored_text.size()).epsilon(1e-12));

    // --eval-only scores the checkpoint on the whole set again: the same figure (newest checkpoint, or --load)
    const char* argv[] = {"train", "--eval-only", "--out-dir", dir.c_str(), "--data-dir", o.data_dir.c_str(),
                          "--batch", "4", "--quiet"};
    TrainOptions e = parse_train_options(9, (char**)argv);
    CHECK(e.eval_only);
    const EvalResult again = run_eval_only(e);
    CHECK(again.tokens == r.whole_val.tokens);
    CHECK(again.bytes == r.whole_val.bytes);
    CHECK(again.loss() == doctest::Approx(r.whole_val.loss()).epsilon(1e-6));
    e.load = dir + "/ckpt_00000008.safetensors";
    e.out_dir = dir + "/nothing_here";
    e.batch = 3;  // another batch size: other padding, the same tokens
    const EvalResult loaded = run_eval_only(e);
    CHECK(loaded.tokens == r.whole_val.tokens);
    CHECK(loaded.loss() == doctest::Approx(r.whole_val.loss()).epsilon(1e-5));
    e.load = "";
    CHECK_THROWS_WITH_AS(run_eval_only(e), doctest::Contains("no --load CKPT given and no checkpoint in"), flash_error);
    // --load belongs to --eval-only
    const char* bad[] = {"train", "--load", "x.safetensors"};
    CHECK_THROWS_WITH_AS(parse_train_options(3, (char**)bad), doctest::Contains("--load is for --eval-only"), flash_error);
    fs::remove_all(dir);
}

TEST_CASE("a non-finite loss stops training and leaves the last checkpoint intact") {
    const std::string dir = "/tmp/flash_test_nan_" + std::to_string(getpid());
    fs::remove_all(dir);
    TrainOptions o = tiny_options(dir);
    o.steps = 40;
    o.lr = 1e30;  // blows the weights up within a few steps
    o.lr_min = 1e30;
    o.grad_clip = 0;
    o.ckpt_interval = 1;
    o.keep_ckpts = 50;
    TrainResult r = run_training(o);
    CHECK(r.interrupted);
    CHECK(r.steps_done < 40);
    const std::string last = latest_checkpoint(dir);
    REQUIRE(!last.empty());
    FlashModel<float> m(
        config_from_json(model_config_from_options(o, (int)bpe::Tokenizer::load(o.data_dir + "/tokenizer.json").vocab_size())));
    TrainState st = load_checkpoint(last, m);
    CHECK(st.step == r.steps_done);
    fs::remove_all(dir);
}


// ---- issue 9: runs that lose no data and crash on no input ------------------------------------------

std::vector<std::string> lines_of(const std::string& path) {
    std::ifstream in(path);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

TEST_CASE("a fresh run into a directory that holds a run needs --resume or --overwrite") {
    const std::string dir = "/tmp/flash_test_reuse_" + std::to_string(getpid());
    fs::remove_all(dir);
    TrainOptions o = tiny_options(dir);
    o.steps = 6;
    o.keep_ckpts = 1;
    run_training(o);
    const std::string ckpt = dir + "/ckpt_00000006.safetensors";
    const std::string ckpt_bytes = read_bytes(ckpt), metrics = read_bytes(dir + "/metrics.jsonl");
    REQUIRE(ckpt_bytes.size() > 1000);
    // Before: the second run overwrote metrics.jsonl, and its pruning deleted its own ckpt_00000002.
    TrainOptions fresh = tiny_options(dir);
    fresh.steps = 2;
    fresh.keep_ckpts = 1;
    CHECK_THROWS_WITH_AS(run_training(fresh), doctest::Contains("holds a run"), flash_error);
    CHECK(read_bytes(ckpt) == ckpt_bytes);
    CHECK(read_bytes(dir + "/metrics.jsonl") == metrics);
    fresh.overwrite = true;
    TrainResult r = run_training(fresh);
    CHECK(r.steps_done == 2);
    CHECK(latest_checkpoint(dir) == dir + "/ckpt_00000002.safetensors");
    CHECK(!fs::exists(ckpt));
    CHECK(train_loss_lines(dir).size() == 2);  // the old run's 6 lines are gone
    fresh.resume = true;
    CHECK_THROWS_WITH_AS(run_training(fresh), doctest::Contains("--resume and --overwrite contradict"), flash_error);
    fs::remove_all(dir);
}

TEST_CASE("the run directory is locked, and stale temporary files are removed under the lock") {
    const std::string dir = "/tmp/flash_test_lock_" + std::to_string(getpid());
    fs::remove_all(dir);
    TrainOptions o = tiny_options(dir);
    o.steps = 3;
    {
        RunDirLock held(dir);  // as another trainer would hold it (flock conflicts across open files, one process too)
        const std::string in_use = "is in use by another ./train (pid " + std::to_string(getpid()) + ")";
        CHECK_THROWS_WITH_AS(run_training(o), doctest::Contains(in_use.c_str()), flash_error);
        CHECK(!fs::exists(dir + "/metrics.jsonl"));
    }
    run_training(o);  // the lock went with its holder
    // A crashed writer's temporaries go at the next start; other files stay.
    std::ofstream(dir + "/ckpt_00000009.safetensors.4242.tmp") << "half a checkpoint";
    std::ofstream(dir + "/metrics.jsonl.4242.tmp") << "{";
    std::ofstream(dir + "/notes.tmp") << "not ours";
    o.resume = true;
    o.steps = 4;
    run_training(o);
    CHECK(!fs::exists(dir + "/ckpt_00000009.safetensors.4242.tmp"));
    CHECK(!fs::exists(dir + "/metrics.jsonl.4242.tmp"));
    CHECK(fs::exists(dir + "/notes.tmp"));
    int tmp_files = 0;
    for (const auto& e : fs::directory_iterator(dir)) tmp_files += e.path().extension() == ".tmp";
    CHECK(tmp_files == 1);  // notes.tmp: checkpoint writes leave none
    fs::remove_all(dir);
}

TEST_CASE("on resume, log lines past the checkpoint and a partial last line are dropped") {
    const std::string dir = "/tmp/flash_test_trim_" + std::to_string(getpid());
    fs::remove_all(dir);
    TrainOptions o = tiny_options(dir);
    o.steps = 4;
    run_training(o);
    // What a run killed after its checkpoint at step 4 leaves: lines of steps 5 and 6, and half a line.
    std::ofstream(dir + "/metrics.jsonl", std::ios::app)
        << "{\"step\": 5, \"train_loss\": 9.0}\n{\"step\": 6, \"train_loss\": 9.0}\n{\"step\": 7, \"tra";
    std::ofstream(dir + "/train_loss.tsv", std::ios::app) << "5\t9.0\n6\t9.0\n7\t9";
    o.resume = true;
    o.steps = 6;
    run_training(o);
    std::vector<int64_t> train_steps;
    for (const std::string& line : lines_of(dir + "/metrics.jsonl")) {
        nlohmann::json j;
        REQUIRE_NOTHROW(j = nlohmann::json::parse(line));  // before: the half line glued to the next one
        if (j.contains("train_loss")) {
            CHECK(j["train_loss"].get<double>() != 9.0);  // the killed run's lines are gone
            train_steps.push_back(j["step"].get<int64_t>());
        }
    }
    CHECK(train_steps == std::vector<int64_t>{1, 2, 3, 4, 5, 6});
    const std::vector<std::string> tsv = lines_of(dir + "/train_loss.tsv");
    REQUIRE(tsv.size() == 6);
    CHECK(tsv[4].rfind("5\t", 0) == 0);
    CHECK(tsv[4] != "5\t9.0");
    fs::remove_all(dir);
}

TEST_CASE("option values outside their domain are refused before anything is written") {
    const std::string dir = "/tmp/flash_test_domain_" + std::to_string(getpid());
    fs::remove_all(dir);
    struct Case { std::function<void(TrainOptions&)> set; const char* message; };
    const Case cases[] = {
        {[](TrainOptions& o) { o.beta2 = 1; }, "--beta2 is 1, must be in [0, 1)"},  // every weight NaN, before
        {[](TrainOptions& o) { o.beta1 = -0.5; }, "--beta1 is -0.5, must be in [0, 1)"},
        {[](TrainOptions& o) { o.lr = -1e-3; }, "--lr is -0.001, must be in [0, inf)"},
        {[](TrainOptions& o) { o.lr = NAN; }, "--lr is nan"},
        {[](TrainOptions& o) { o.lr_min = 1; }, "--lr-min is 1, must be in [0, 0.003]"},
        {[](TrainOptions& o) { o.weight_decay = -0.1; }, "--weight-decay is -0.1"},
        {[](TrainOptions& o) { o.grad_clip = -1; }, "--grad-clip is -1"},
        {[](TrainOptions& o) { o.grad_clip = INFINITY; }, "--grad-clip is inf"},
    };
    for (const Case& c : cases) {
        TrainOptions o = tiny_options(dir);
        c.set(o);
        CHECK_THROWS_WITH_AS(check_train_options(o), doctest::Contains(c.message), flash_error);
        CHECK_THROWS_WITH_AS(run_training(o), doctest::Contains(c.message), flash_error);
    }
    CHECK(!fs::exists(dir));
    const char* argv[] = {"train", "--beta2", "1"};
    CHECK_THROWS_WITH_AS(parse_train_options(3, (char**)argv), doctest::Contains("--beta2 is 1"), flash_error);
}

// Rewrites one tensor of a checkpoint through f(values).
void edit_tensor(const std::string& path, const std::string& name, const std::function<void(float*, size_t)>& f) {
    SafeTensorsFile file = safetensors_read(path);
    for (SafeTensor& t : file.tensors)
        if (t.name == name) f((float*)t.data.data(), t.data.size() / 4);
    safetensors_write(path, file.tensors, file.metadata);
}

TEST_CASE("no checkpoint holds NaN: the trainer does not write one, the loaders refuse one") {
    const std::string dir = "/tmp/flash_test_nanckpt_" + std::to_string(getpid());
    fs::remove_all(dir);
    TrainOptions o = tiny_options(dir);
    o.steps = 3;
    o.ckpt_interval = 1;
    o.lr = o.lr_min = 1e300;  // in the domain, but the first update sends the weights to infinity
    o.grad_clip = 0;
    o.warmup = 0;
    TrainResult r = run_training(o);
    CHECK(r.interrupted);
    CHECK(r.steps_done == 0);
    CHECK(latest_checkpoint(dir).empty());  // before: ckpt_00000001 with infinite weights, called intact

    o = tiny_options(dir);
    o.overwrite = true;
    o.steps = 2;
    run_training(o);
    const std::string ckpt = dir + "/ckpt_00000002.safetensors", good = read_bytes(ckpt);
    FlashModel<float> m(config_from_json(model_config_from_options(o, (int)bpe::Tokenizer::load(o.data_dir + "/tokenizer.json").vocab_size())));
    CHECK(load_checkpoint(ckpt, m).step == 2);
    edit_tensor(ckpt, "layers.1.w_out", [](float* x, size_t n) { x[n / 2] = NAN; });
    CHECK_THROWS_WITH_AS(load_checkpoint(ckpt, m), doctest::Contains("tensor 'layers.1.w_out' holds value nan"), flash_error);
    CHECK_THROWS_WITH_AS(load_weights(ckpt, m), doctest::Contains("must be finite"), flash_error);
    std::ofstream(ckpt, std::ios::binary) << good;
    edit_tensor(ckpt, "adam_m.wte", [](float* x, size_t) { x[3] = INFINITY; });
    CHECK_THROWS_WITH_AS(load_checkpoint(ckpt, m), doctest::Contains("tensor 'adam_m.wte' holds value inf"), flash_error);
    std::ofstream(ckpt, std::ios::binary) << good;
    edit_tensor(ckpt, "adam_v.wte", [](float* x, size_t) { x[5] = -1e-6f; });
    CHECK_THROWS_WITH_AS(load_checkpoint(ckpt, m), doctest::Contains("tensor 'adam_v.wte' holds value -0.000001 at index 5 (must be finite and >= 0)"),
                         flash_error);
    fs::remove_all(dir);
}

TEST_CASE("deeply nested JSON gets a clear error in every file that holds JSON, never a stack overflow") {
    const std::string dir = "/tmp/flash_test_deep_" + std::to_string(getpid());
    fs::remove_all(dir);
    fs::create_directories(dir);
    const int depth = 200000;  // printing this recursively overflowed an 8 MB stack
    const std::string deep = std::string(depth, '[') + std::string(depth, ']');
    // --options FILE and --model FILE
    std::ofstream(dir + "/opts.json") << "{\"lr\": " << deep << "}";
    const std::string opts = dir + "/opts.json";
    const char* argv[] = {"train", "--options", opts.c_str()};
    CHECK_THROWS_WITH_AS(parse_train_options(3, (char**)argv), doctest::Contains("more than 64 levels deep"), flash_error);
    std::ofstream(dir + "/model.json") << "{\"d\": " << deep << "}";
    CHECK_THROWS_WITH_AS(load_model_config_json(dir + "/model.json"), doctest::Contains("more than 64 levels deep"), flash_error);
    // a value nested 60 levels (under the bound) is named by its kind and size, not printed
    std::ofstream(dir + "/model.json") << "{\"d\": " << std::string(60, '[') << std::string(60, ']') << "}";
    CHECK_THROWS_WITH_AS(load_model_config_json(dir + "/model.json"), doctest::Contains("must be an integer, got an array of 1 elements"),
                         flash_error);
    // on the command line, a deep value is a bad value
    const char* argv3[] = {"train", "--lr", deep.c_str()};
    try {
        parse_train_options(3, (char**)argv3);
        FAIL("a deep --lr was accepted");
    } catch (const flash_error& e) {
        const std::string msg = e.what();
        CHECK(msg.find("option --lr: '[[[[") != std::string::npos);
        CHECK(msg.find("characters)' is not a number") != std::string::npos);  // clipped, not printed whole
        CHECK(msg.size() < 400);
    }
    // a checkpoint's header, and the config inside its metadata
    const std::string header = "{\"x\": {\"dtype\": \"F32\", \"shape\": [" + deep + "], \"data_offsets\": [0, 0]}}";
    std::string file(8, '\0');
    for (int i = 0; i < 8; i++) file[i] = (char)((uint64_t)header.size() >> (8 * i));
    std::ofstream(dir + "/deep.safetensors", std::ios::binary) << file << header;
    CHECK_THROWS_WITH_AS(safetensors_read(dir + "/deep.safetensors"), doctest::Contains("more than 64 levels deep"), flash_error);
    safetensors_write(dir + "/deepcfg.safetensors", {}, {{"config", "{\"d\": " + deep + "}"}});
    CHECK_THROWS_WITH_AS(checkpoint_config(safetensors_read(dir + "/deepcfg.safetensors"), "x"),
                         doctest::Contains("the config in the __metadata__ of 'x' nests JSON arrays or objects more than 64"), flash_error);
    // tokenizer.json
    std::ofstream(dir + "/tokenizer.json") << "{\"model\": {\"type\": " << deep << "}}";
    CHECK_THROWS_WITH_AS(bpe::Tokenizer::load(dir + "/tokenizer.json"), doctest::Contains("more than 64 levels deep"), flash_error);
    // brackets inside strings do not count
    CHECK(json_nesting_depth("{\"a\": \"[[[[[[\\\"[[[[\"}", 64) == 1);
    fs::remove_all(dir);
}

TEST_CASE("sizes that cannot fit are refused with the figures, before allocating") {
    TrainOptions o = tiny_options("/tmp/flash_test_sizes_" + std::to_string(getpid()));
    o.batch = 2000000000;  // B * T overflowed an int, then grew to 16-24 GB before the OOM killer
    CHECK_THROWS_WITH_AS(run_training(o), doctest::Contains("64000000000 positions, more than the 2147483647 an int indexes"),
                         flash_error);
    o.batch = 60000000;  // fits an int, not the memory: 1.9e9 positions of ~300 logits and more
    CHECK_THROWS_WITH_AS(run_training(o), doctest::Contains("the activations of a batch of 60000000 x 32 tokens need"),
                         flash_error);
    FlashConfig huge = config_preset("small");
    huge.vocab_size = 1 << 30;
    huge.d = 1 << 16;
    CHECK_THROWS_WITH_AS(FlashModel<float>{huge}, doctest::Contains("parameters, their gradients and AdamW moments need"),
                         flash_error);
    // the baselines' activations too (BASELINES.md): refused by the model before it allocates them
    TransformerModel<float> performer(transformer_preset("tiny", "performer"));
    std::vector<int> few(16, 1);
    CHECK_THROWS_WITH_AS(performer.forward(few.data(), nullptr, 2000000000, 16),
                         doctest::Contains("more than the 2147483647 an int indexes"), flash_error);
    // one block at d = 1024 (50 MB of weights) over 2M tokens (8 MB): about 500 GB of activations: more than any machine
    TransformerConfig wide = transformer_preset("tiny", "performer");
    wide.d = 1024; wide.n_heads = 16; wide.ffn = 3072; wide.features = 256; wide.n_layers = 1;
    TransformerModel<float> wide_model(wide);
    std::vector<int> long_row(2000000, 1);
    CHECK_THROWS_WITH_AS(wide_model.forward(long_row.data(), nullptr, 1, (int)long_row.size()),
                         doctest::Contains("the activations of a batch of 1 x 2000000 tokens need"), flash_error);
    CHECK_THROWS_WITH_AS(check_fits_in_memory(1e18, "a test", "none"),
                         doctest::Contains("a test need 1000000000.0 GB, but this machine has"), flash_error);
    fs::remove_all(o.out_dir);
}

// ---- the programs as processes: ./train and ./sample, started as a scheduler or a user would ------------

// Starts a program of this build (./train, ./sample: the tests run from the repository root) with its output
// in log.
pid_t spawn(const std::vector<std::string>& args, const std::string& log) {
    REQUIRE_MESSAGE(fs::exists(args[0]), args[0] << " is missing: run the tests from the repository root after make");
    std::fflush(stdout);  // else the child would print the parent's buffered output a second time
    std::fflush(stderr);
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        FILE* out = std::freopen(log.c_str(), "w", stdout);
        if (!out || dup2(fileno(stdout), 2) < 0) _exit(127);
        std::vector<char*> argv;
        for (const std::string& a : args) argv.push_back((char*)a.c_str());
        argv.push_back(nullptr);
        execv(argv[0], argv.data());
        _exit(127);
    }
    return pid;
}

// The exit status of pid, or minus the signal's number when a signal killed it (so that exit(143) and death by
// SIGTERM differ). A guard against a hung child, not a timing: after 120 s it is killed and the test fails.
int wait_exit(pid_t pid) {
    int status = 0;
    for (int i = 0; i < 120000; i++) {
        const pid_t got = waitpid(pid, &status, WNOHANG);
        REQUIRE(got >= 0);
        if (got == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
        usleep(1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    FAIL("process " << pid << " did not end within 120 s");
    return -1;
}

// Waits until path holds at least n lines (the trainer is past its start and holds the lock), or the process
// has ended (then the test's later checks fail with what it printed).
void wait_for_lines(const std::string& path, size_t n, pid_t pid) {
    for (int i = 0; i < 120000 && lines_of(path).size() < n; i++) {
        if (waitpid(pid, nullptr, WNOHANG) == pid) FAIL("the trainer ended early");
        usleep(1000);
    }
}

std::vector<std::string> train_args(const std::string& dir, std::vector<std::string> extra) {
    std::vector<std::string> a = {"./train", "--model", "tiny", "--d", "32", "--e", "64", "--s", "16", "--chunk", "8",
                                  "--seq-len", "32", "--batch", "4", "--steps", "1000000", "--warmup", "3",
                                  "--eval-interval", "4", "--eval-batches", "1", "--sample-interval", "0",
                                  "--ckpt-interval", "3", "--keep-ckpts", "2", "--threads", "1",
                                  "--data-dir", make_data_dir(), "--out-dir", dir, "--quiet"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
}

TEST_CASE("two trainers, kill -9, resume, SIGTERM, SIGINT: one run, a valid metrics.jsonl, exit status 143 and 130") {
    const std::string dir = "/tmp/flash_test_procs_" + std::to_string(getpid());
    fs::remove_all(dir);
    fs::create_directories(dir);
    const std::string metrics = dir + "/metrics.jsonl";
    // A runs (a million steps: it only ends when killed).
    const pid_t a = spawn(train_args(dir, {}), dir + "/a.log");
    wait_for_lines(metrics, 12, a);
    // B, on the same directory, is refused while A runs; before, both wrote the same ckpt_N.safetensors.tmp.
    const int b_status = wait_exit(spawn(train_args(dir, {"--resume"}), dir + "/b.log"));
    CHECK(b_status == 1);
    CHECK(read_bytes(dir + "/b.log").find("is in use by another ./train (pid " + std::to_string(a) + ")") != std::string::npos);
    // A dies without warning, between checkpoints or while writing one.
    kill(a, SIGKILL);
    CHECK(wait_exit(a) == -SIGKILL);
    const std::string killed_at = latest_checkpoint(dir);
    REQUIRE(!killed_at.empty());
    // C resumes, and is stopped the way a scheduler stops a job.
    const pid_t c = spawn(train_args(dir, {"--resume"}), dir + "/c.log");
    wait_for_lines(metrics, lines_of(metrics).size() + 8, c);
    kill(c, SIGTERM);
    const int c_status = wait_exit(c);
    CHECK(c_status == 143);  // it exited, with a checkpoint; before, SIGTERM killed it (-15) with none
    const std::string c_log = read_bytes(dir + "/c.log");
    INFO("C printed: " << c_log);
    CHECK(c_log.find("resumed from " + killed_at) != std::string::npos);
    // D resumes and gets a Ctrl-C: the same, with status 130 (before: 0).
    const pid_t d = spawn(train_args(dir, {"--resume"}), dir + "/d.log");
    wait_for_lines(metrics, lines_of(metrics).size() + 4, d);
    kill(d, SIGINT);
    CHECK(wait_exit(d) == 130);
    const std::string last = latest_checkpoint(dir);
    REQUIRE(last > killed_at);
    TrainOptions shape = tiny_options(dir);
    FlashModel<float> tiny(config_from_json(model_config_from_options(shape, (int)bpe::Tokenizer::load(shape.data_dir + "/tokenizer.json").vocab_size())));
    const int64_t last_step = load_checkpoint(last, tiny).step;
    // metrics.jsonl: one valid JSON object per line; a train line for every step 1..last once, in order, and an
    // evaluation line for every 4th step; nothing past the last checkpoint.
    int64_t expect_train = 1, expect_val = 4;
    for (const std::string& line : lines_of(metrics)) {
        nlohmann::json j;
        REQUIRE_NOTHROW(j = nlohmann::json::parse(line));
        REQUIRE(j.is_object());
        const int64_t step = j.at("step").get<int64_t>();
        if (j.contains("train_loss")) {
            CHECK(step == expect_train++);
        } else {
            CHECK(j.contains("val_loss"));
            CHECK(step == expect_val);
            expect_val += 4;
        }
    }
    CHECK(expect_train == last_step + 1);
    CHECK(expect_val == (last_step / 4 + 1) * 4);
    CHECK(lines_of(dir + "/train_loss.tsv").size() == (size_t)last_step);
    // no temporary file left behind by the killed run survives the runs after it
    for (const auto& e : fs::directory_iterator(dir)) CHECK(e.path().extension() != ".tmp");
    MESSAGE("killed at " << killed_at << ", stopped by SIGTERM and SIGINT, last at step " << last_step);
    fs::remove_all(dir);
}

TEST_CASE("./sample and ./train get a clear error from a crafted checkpoint, never a crash") {
    const std::string dir = "/tmp/flash_test_crafted_" + std::to_string(getpid());
    fs::remove_all(dir);
    fs::create_directories(dir);
    const int depth = 200000;
    // a config whose field holds a deep array: printing it in "must be an integer, got ..." overflowed the stack
    safetensors_write(dir + "/deep.safetensors", {},
                      {{"config", "{\"d\": " + std::string(depth, '[') + std::string(depth, ']') + "}"}});
    const int status = wait_exit(spawn({"./sample", "--checkpoint", dir + "/deep.safetensors", "--tokenizer",
                                        make_data_dir() + "/tokenizer.json"}, dir + "/sample.log"));
    CHECK(status == 1);  // before: -11 (SIGSEGV)
    CHECK(read_bytes(dir + "/sample.log").find("more than 64 levels deep") != std::string::npos);
    const int status2 = wait_exit(spawn({"./train", "--debug-state", dir + "/x.safetensors", "--load", dir + "/deep.safetensors"},
                                        dir + "/train.log"));
    CHECK(status2 == 1);
    CHECK(read_bytes(dir + "/train.log").find("more than 64 levels deep") != std::string::npos);
    fs::remove_all(dir);
}
}  // namespace
