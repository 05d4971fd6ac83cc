// test_train.cpp: the training program's pieces: the learning-rate schedule, bit-exact resume, refused
// checkpoints, and a short run that learns. Runs on a tiny corpus that the test writes itself.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "data/tokenfile.h"
#include "test/corpus.h"
#include "testutil.h"
#include "tokenizer/bpe.h"
#include "trainer.h"

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

}  // namespace
