// test_mlm.cpp: the masked-LM objective (docs/BASELINES.md §4, data/mlm.h): the masking's rates and determinism, the
// loss over the chosen positions only, validation's fixed masking, training and bit-for-bit resume with
// --objective mlm, the debug state's -1 targets, and the errors (an old tokenizer, a causal model, another objective).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "data/mlm.h"
#include "data/tokenfile.h"
#include "eval.h"
#include "testutil.h"
#include "tokenizer/bpe.h"
#include "trainer.h"

namespace fs = std::filesystem;
using flash_data::MlmVocab;
using flash_data::Objective;

namespace {

// A vocabulary of 64 with the layout of a trained tokenizer: <|endoftext|> 62, <|mask|> 63.
const MlmVocab kVocab{64, 63, {62, 63}};

// Random ordinary tokens.
std::vector<int32_t> random_tokens(size_t n, uint64_t seed, const MlmVocab& v = kVocab) {
    uint64_t state = seed;
    std::vector<int32_t> t(n);
    for (int32_t& x : t) x = (int32_t)flash_data::random_ordinary_token(state, v);
    return t;
}

// The bound for a binomial share: 5 standard deviations of the mean of n Bernoulli(p) draws. A correct masking
// falls outside it with probability below 1e-6.
double five_sigma(double p, double n) { return 5 * std::sqrt(p * (1 - p) / n); }

std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

TEST_CASE("masking rates over many sequences: 15% chosen, at least one per sequence, 80/10/10") {
    const int S = 2000, T = 128;
    const std::vector<int32_t> tokens = random_tokens((size_t)S * T, 7);
    std::vector<int32_t> in(T), tg(T);
    double chosen = 0, masked = 0, replaced = 0, kept = 0;
    int fewest = T;
    std::vector<int> replacement_seen(kVocab.vocab_size, 0);
    for (int s = 0; s < S; s++) {
        const int32_t* x = &tokens[(size_t)s * T];
        const int n = flash_data::mlm_mask(1337, 9, (uint64_t)s, x, T, kVocab, in.data(), tg.data());
        int counted = 0;
        for (int t = 0; t < T; t++) {
            if (tg[t] == kIgnoreTarget) {
                CHECK(in[t] == x[t]);  // not chosen: untouched
                continue;
            }
            counted++;
            CHECK(tg[t] == x[t]);      // the target is the original token
            if (in[t] == (int32_t)kVocab.mask_id) masked++;
            else if (in[t] != x[t]) replaced++, replacement_seen[in[t]]++;
            else kept++;
        }
        CHECK(counted == n);
        fewest = std::min(fewest, n);
        chosen += n;
    }
    const double positions = (double)S * T;
    MESSAGE("chosen " << chosen / positions << " (" << chosen << " of " << positions << "), masked " << masked / chosen
                      << ", replaced " << replaced / chosen << ", kept " << kept / chosen << ", fewest per sequence "
                      << fewest);
    CHECK(fewest >= 1);
    // 15% ± 5σ (σ = sqrt(0.15·0.85/256000) = 0.0007); the at-least-one rule adds 0.85^128 ≈ 1e-9 per sequence.
    CHECK(std::fabs(chosen / positions - 0.15) < five_sigma(0.15, positions));
    // Of the chosen: 80% mask; 10% a random ordinary token, which is the original itself 1 time in 62 (then it counts
    // as kept): replaced 0.1·61/62, kept 0.1 + 0.1/62.
    const double p_replaced = 0.1 * 61 / 62, p_kept = 0.1 + 0.1 / 62;
    CHECK(std::fabs(masked / chosen - 0.8) < five_sigma(0.8, chosen));
    CHECK(std::fabs(replaced / chosen - p_replaced) < five_sigma(p_replaced, chosen));
    CHECK(std::fabs(kept / chosen - p_kept) < five_sigma(p_kept, chosen));
    // The random tokens are ordinary: never a special id; and every ordinary id turns up (about 61 times each).
    CHECK(replacement_seen[62] == 0);
    int ordinary_seen = 0;
    for (int id = 0; id < 62; id++) ordinary_seen += replacement_seen[id] > 0;
    CHECK(ordinary_seen == 62);
}

TEST_CASE("at least one chosen position per sequence, also where 15% of T is below one") {
    std::vector<int32_t> in(2), tg(2);
    const std::vector<int32_t> x = {5, 9};
    int none_by_chance = 0;
    for (uint64_t s = 0; s < 1000; s++) {
        const int n = flash_data::mlm_mask(3, 1, s, x.data(), 2, kVocab, in.data(), tg.data());
        CHECK(n >= 1);
        CHECK((tg[0] != kIgnoreTarget) + (tg[1] != kIgnoreTarget) == n);
        none_by_chance += n == 1;
    }
    CHECK(none_by_chance > 900);  // 0.85² + 2·0.15·0.85 = 0.9775 of them have exactly one
    std::vector<int32_t> one_in(1), one_tg(1);
    for (uint64_t s = 0; s < 100; s++) {
        CHECK(flash_data::mlm_mask(3, 1, s, x.data(), 1, kVocab, one_in.data(), one_tg.data()) == 1);
        CHECK(one_tg[0] == 5);
    }
}

TEST_CASE("the masking is a pure function of (seed, step, sequence)") {
    const int T = 256;
    const std::vector<int32_t> x = random_tokens(T, 11);
    auto mask = [&](uint64_t seed, uint64_t step, uint64_t seq) {
        std::vector<int32_t> in(T), tg(T);
        flash_data::mlm_mask(seed, step, seq, x.data(), T, kVocab, in.data(), tg.data());
        in.insert(in.end(), tg.begin(), tg.end());
        return in;
    };
    const std::vector<int32_t> a = mask(1337, 5, 2);
    CHECK(a == mask(1337, 5, 2));
    CHECK(a != mask(1337, 6, 2));  // another step
    CHECK(a != mask(1337, 5, 3));  // another sequence
    CHECK(a != mask(1338, 5, 2));  // another seed
    CHECK(mask(1337, 2, 5) != mask(1337, 5, 2));  // step and sequence are not interchangeable
    // In place (tokens aliasing inputs) gives the same.
    std::vector<int32_t> inplace = x, tg(T);
    flash_data::mlm_mask(1337, 5, 2, inplace.data(), T, kVocab, inplace.data(), tg.data());
    inplace.insert(inplace.end(), tg.begin(), tg.end());
    CHECK(inplace == a);
    // A training batch: row b is sequence b of that step, the loader's window masked.
    const std::vector<uint32_t> stream(x.begin(), x.end());
    flash_data::DataLoader loader(stream, 3, 32, flash_data::LoaderMode::kTrainRandom, 42);
    std::vector<int32_t> inputs, targets;
    flash_data::make_batch(Objective::mlm, loader, &kVocab, 1337, 7, inputs, targets);
    for (int b = 0; b < 3; b++) {
        std::vector<int32_t> in(32), tg(32);
        const int32_t* window = &x[loader.last_offsets()[b]];
        flash_data::mlm_mask(1337, 7, b, window, 32, kVocab, in.data(), tg.data());
        CHECK(std::equal(in.begin(), in.end(), inputs.begin() + b * 32));
        CHECK(std::equal(tg.begin(), tg.end(), targets.begin() + b * 32));
    }
}

TEST_CASE("the loss is the mean cross-entropy over the chosen positions only (a tiny non-causal model, by hand)") {
    FlashConfig c = config_preset("tiny");
    c.causal = false;
    const int B = 2, T = c.seq_len, V = c.vocab_size, N = B * T;
    FlashModel<double> m(c);
    m.init_weights(5, /*strong=*/true);
    const MlmVocab vocab{(uint32_t)V, (uint32_t)V - 1, {(uint32_t)V - 2, (uint32_t)V - 1}};
    const std::vector<int32_t> x = random_tokens(N, 3, vocab);
    std::vector<int> in(N), tg(N);
    int chosen = 0;
    for (int b = 0; b < B; b++) chosen += flash_data::mlm_mask(1, 1, b, &x[b * T], T, vocab, &in[b * T], &tg[b * T]);
    REQUIRE(chosen >= 2);
    REQUIRE(chosen < N);
    const double loss = m.forward(in.data(), tg.data(), B, T);
    // By hand from the logits: -log softmax(logits[n])[target[n]] summed over the chosen n, over their count.
    m.forward(in.data(), nullptr, B, T);
    double sum = 0, sum_all = 0;
    for (int n = 0; n < N; n++) {
        const double* z = m.acts.logits + (size_t)n * V;
        double zmax = z[0];
        for (int v = 1; v < V; v++) zmax = std::max(zmax, z[v]);
        double se = 0;
        for (int v = 0; v < V; v++) se += std::exp(z[v] - zmax);
        const double lse = zmax + std::log(se);
        if (tg[n] != kIgnoreTarget) sum += lse - z[tg[n]];
        sum_all += lse - z[x[n]];
    }
    MESSAGE("loss " << loss << " over " << chosen << " chosen of " << N << "; by hand " << sum / chosen
                    << "; the mean over all positions would be " << sum_all / N);
    CHECK(loss == doctest::Approx(sum / chosen).epsilon(1e-12));
    CHECK(std::fabs(loss - sum_all / N) > 1e-3);  // the unchosen positions are not in it
}

TEST_CASE("validation's fixed masking: the whole set's windows hold every token once, the same masking every time") {
    for (auto [n, T] : {std::pair<size_t, int>{12, 4}, {13, 4}, {5, 4}, {101, 8}, {1000, 16}, {257, 256}}) {
        const std::vector<EvalWindow> w = whole_set_windows(n, T, Objective::mlm);
        std::vector<int> covered(n, 0);
        for (const EvalWindow& x : w) {
            REQUIRE(x.offset + T <= n);
            for (int t = x.first_scored; t < T; t++) covered[x.offset + t]++;
        }
        for (size_t i = 0; i < n; i++) CHECK(covered[i] == 1);
    }
    // N = 10,000 tokens in windows of 64: the chosen tokens are scored, each with its bytes, the same at every call.
    const size_t n = 10000;
    const int T = 64;
    std::vector<uint32_t> tokens(n);
    const std::vector<int32_t> r = random_tokens(n, 21);
    std::copy(r.begin(), r.end(), tokens.begin());
    std::vector<uint32_t> bytes(kVocab.vocab_size);
    for (uint32_t id = 0; id < bytes.size(); id++) bytes[id] = 1 + id % 3;
    uint64_t seen_scored = 0, seen_bytes = 0, seen_masks = 0;
    EvalForward count = [&](const int* x, const int* y, int B, int T) {
        int k = 0;
        for (int i = 0; i < B * T; i++) {
            seen_masks += x[i] == (int)kVocab.mask_id;
            if (y[i] != kIgnoreTarget) k++, seen_bytes += bytes[y[i]];
        }
        seen_scored += k;
        return 1.0;  // 1 nat per scored token
    };
    const std::vector<EvalWindow> windows = whole_set_windows(n, T, Objective::mlm);
    const EvalResult a = evaluate_windows(count, tokens, windows, bytes, 4, T, &kVocab);
    CHECK(a.tokens == seen_scored);
    CHECK(a.bytes == seen_bytes);
    CHECK(a.nats == doctest::Approx((double)a.tokens));
    CHECK(std::fabs((double)a.tokens / n - 0.15) < five_sigma(0.15, n) + 1.0 * windows.size() / n);
    CHECK(seen_masks > 0.7 * a.tokens);
    const EvalResult b = evaluate_windows(count, tokens, windows, bytes, 3, T, &kVocab);  // other batching, same masks
    CHECK(b.tokens == a.tokens);
    CHECK(b.bytes == a.bytes);
    // A sampled window is masked as the same window in the whole set (the masking follows its offset).
    const EvalResult one = evaluate_windows(count, tokens, {windows[5]}, bytes, 1, T, &kVocab);
    const EvalResult one_again = evaluate_windows(count, tokens, {windows[5]}, bytes, 2, T, &kVocab);
    CHECK(one.tokens == one_again.tokens);
    CHECK(one.tokens >= 1);
}

// ---- through ./train ------------------------------------------------------------------------------------------
namespace {

std::string make_text(uint64_t seed, int sentences) {
    const char* words[] = {"the cat", "a dog", "sees", "likes", "the sea.", "a red ball.", "the whale."};
    Rng rng(seed);
    std::string text;
    for (int i = 0; i < sentences; i++) {
        text += words[rng.below(2)];
        text += " ";
        text += words[2 + rng.below(2)];
        text += " ";
        text += words[4 + rng.below(3)];
        text += (i % 7 == 6) ? "\n" : " ";
    }
    return text;
}

// A data dir with tokenizer.json, train.bin and val.bin; old: a tokenizer.json from before <|mask|>.
std::string make_data_dir(bool old) {
    const std::string dir = "/tmp/flash_test_mlm_data_" + std::to_string(old) + "_" + std::to_string(getpid());
    if (fs::exists(dir + "/val.bin")) return dir;
    fs::create_directories(dir);
    const std::string train_text = make_text(1, 2000), val_text = make_text(2, 200);
    bpe::Tokenizer tok = bpe::Tokenizer::train({train_text}, 300);
    if (old) {
        nlohmann::json j = nlohmann::json::parse(tok.to_json());
        j["added_tokens"].erase(1);
        j["model"]["vocab"].erase(std::string(bpe::kMask));
        tok = bpe::Tokenizer::from_json(j.dump());
    }
    tok.save(dir + "/tokenizer.json");
    flash_data::save_token_file(dir + "/train.bin", tok.encode(train_text), tok.vocab_size());
    flash_data::save_token_file(dir + "/val.bin", tok.encode(val_text), tok.vocab_size());
    return dir;
}

// A non-causal tiny model config file.
std::string noncausal_config() {
    const std::string path = "/tmp/flash_test_mlm_config_" + std::to_string(getpid()) + ".json";
    FlashConfig c = config_preset("tiny");
    c.causal = false;
    std::ofstream(path) << config_to_json(c).dump();
    return path;
}

TrainOptions mlm_options(const std::string& out_dir) {
    TrainOptions o;
    o.model = noncausal_config();
    o.objective = "mlm";
    o.d = 32; o.e = 64; o.s = 16; o.chunk = 8; o.seq_len = 32;
    o.batch = 4;
    o.steps = 10;
    o.warmup = 3;
    o.eval_interval = 5; o.eval_batches = 2;
    o.sample_interval = 0;
    o.ckpt_interval = 100;
    o.out_dir = out_dir;
    o.data_dir = make_data_dir(false);
    o.quiet = true;
    return o;
}

std::vector<std::string> lines_with(const std::string& path, const std::string& key) {
    std::ifstream in(path);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);)
        if (line.find(key) != std::string::npos) lines.push_back(line.substr(0, line.find(", \"ms\"")));
    return lines;
}

}  // namespace

TEST_CASE("--objective mlm: N steps equal K steps, a checkpoint and a resume, bit for bit; metrics name it") {
    const std::string base = "/tmp/flash_test_mlm_resume_" + std::to_string(getpid());
    fs::remove_all(base);
    const TrainResult full = run_training(mlm_options(base + "/full"));
    CHECK(full.steps_done == 10);
    CHECK(std::isfinite(full.last_train_loss));
    TrainOptions first = mlm_options(base + "/legs");
    first.stop_after = 4;
    CHECK(run_training(first).steps_done == 4);
    TrainOptions second = mlm_options(base + "/legs");
    second.resume = true;
    const TrainResult r2 = run_training(second);
    CHECK(r2.steps_done == 10);
    const std::string a = read_bytes(base + "/full/ckpt_00000010.safetensors");
    CHECK(a.size() > 10000);
    CHECK(a == read_bytes(base + "/legs/ckpt_00000010.safetensors"));
    const std::vector<std::string> la = lines_with(base + "/full/metrics.jsonl", "train_loss"),
                                   lb = lines_with(base + "/legs/metrics.jsonl", "train_loss");
    REQUIRE(la.size() == 10);
    CHECK(la == lb);
    // The objective is in the checkpoint's train_state and in the evaluation records.
    const SafeTensorsFile f = safetensors_read(base + "/full/ckpt_00000010.safetensors");
    CHECK(nlohmann::json::parse(f.metadata.at("train_state"))["objective"] == "mlm");
    const std::vector<std::string> val = lines_with(base + "/full/metrics.jsonl", "\"val_loss\"");
    REQUIRE(val.size() == 2);
    CHECK(val[0].find("\"objective\": \"mlm\"") != std::string::npos);
    const std::vector<std::string> whole = lines_with(base + "/full/metrics.jsonl", "whole_val_loss");
    REQUIRE(whole.size() == 1);
    CHECK(whole[0].find("\"objective\": \"mlm\"") != std::string::npos);
    MESSAGE("whole validation set: " << format_eval(full.whole_val));
    // The whole set's masked tokens: about 15% of the validation tokens, the same number in every run.
    const std::string data = make_data_dir(false);
    const uint32_t vocab = bpe::Tokenizer::load(data + "/tokenizer.json").vocab_size();
    const size_t n_val = flash_data::load_token_file(data + "/val.bin", vocab).tokens.size();
    MESSAGE(full.whole_val.tokens << " of " << n_val << " validation tokens chosen");
    CHECK(std::fabs((double)full.whole_val.tokens / n_val - 0.15) < five_sigma(0.15, (double)n_val));
    CHECK(full.whole_val.tokens == r2.whole_val.tokens);
    CHECK(full.whole_val.nats == r2.whole_val.nats);
    // Resuming with the other objective is refused.
    TrainOptions other = mlm_options(base + "/legs");
    other.resume = true;
    other.steps = 12;
    other.objective = "ar";
    CHECK_THROWS_WITH_AS(run_training(other),
                         doctest::Contains("was trained with --objective mlm, this run asks for ar"),
                         flash_error);
    fs::remove_all(base);
}

TEST_CASE("--objective mlm refuses an old tokenizer, a causal model and an unknown objective, each with its fix") {
    TrainOptions o = mlm_options("/tmp/flash_test_mlm_refused_" + std::to_string(getpid()));
    TrainOptions old = o;
    old.data_dir = make_data_dir(true);
    CHECK_THROWS_WITH_AS(run_training(old), doctest::Contains("needs the <|mask|> token"), flash_error);
    CHECK_THROWS_WITH_AS(run_training(old), doctest::Contains("data/prepare.sh --force"), flash_error);
    // The old tokenizer still serves auto-regressive training.
    TrainOptions old_ar = old;
    old_ar.objective = "ar";
    old_ar.model = "tiny";
    old_ar.steps = 2;
    CHECK(run_training(old_ar).steps_done == 2);
    TrainOptions causal = o;
    causal.model = "tiny";
    CHECK_THROWS_WITH_AS(run_training(causal), doctest::Contains("--objective mlm needs a non-causal model"),
                         flash_error);
    TrainOptions ar_noncausal = o;
    ar_noncausal.objective = "ar";
    CHECK_THROWS_WITH_AS(run_training(ar_noncausal), doctest::Contains("--objective ar needs a causal model"),
                         flash_error);
    const char* bad[] = {"train", "--objective", "bert"};
    CHECK_THROWS_WITH_AS(parse_train_options(3, (char**)bad), doctest::Contains("unknown objective 'bert'"),
                         flash_error);
    fs::remove_all(o.out_dir);
}

TEST_CASE("debug state with --objective mlm: the masked batch, -1 targets where not chosen, the loss over the chosen") {
    const std::string path = "/tmp/flash_test_mlm_state_" + std::to_string(getpid()) + ".safetensors";
    const std::string config = noncausal_config();
    const char* argv[] = {"train", "--debug-state", path.c_str(), "--model", config.c_str(), "--objective", "mlm",
                          "--batch", "3", "--seed", "4", "--double"};
    REQUIRE(debug_state_main(12, (char**)argv) == 0);
    const SafeTensorsFile f = safetensors_read(path);
    const SafeTensor* tokens = f.find("batch.tokens");
    const SafeTensor* targets = f.find("batch.targets");
    REQUIRE(tokens);
    REQUIRE(targets);
    REQUIRE(targets->dtype == "I32");
    const int T = config_preset("tiny").seq_len, V = config_preset("tiny").vocab_size;
    REQUIRE(targets->shape == std::vector<int64_t>{3, T});
    std::vector<int32_t> x(3 * T), y(3 * T);
    std::memcpy(x.data(), tokens->data.data(), x.size() * 4);
    std::memcpy(y.data(), targets->data.data(), y.size() * 4);
    int chosen = 0, ignored = 0, masks = 0;
    for (int b = 0; b < 3; b++) {
        int row = 0;
        for (int t = 0; t < T; t++) {
            const int n = b * T + t;
            if (y[n] == -1) {
                ignored++;
                CHECK(x[n] < V - 2);  // an unchosen input is an original, ordinary token
            } else {
                row++;
                CHECK((y[n] >= 0 && y[n] < V - 2));
                masks += x[n] == V - 1;
            }
        }
        CHECK(row >= 1);
        chosen += row;
    }
    MESSAGE(chosen << " chosen, " << ignored << " ignored, " << masks << " masked of " << 3 * T);
    CHECK(ignored > 0);
    CHECK(masks > 0);
    // The stored loss is the model's mean over the chosen positions: recompute it from the stored weights.
    FlashConfig c = config_preset("tiny");
    c.causal = false;
    FlashModel<double> m(c);
    load_param_tensors(m, m.params, f, "", path);
    std::vector<int> xi(x.begin(), x.end()), yi(y.begin(), y.end());
    double stored;
    read_tensor(*f.find("loss"), {1}, &stored, path);
    CHECK(m.forward(xi.data(), yi.data(), 3, T) == doctest::Approx(stored).epsilon(1e-12));
    // A causal model is refused.
    const char* causal[] = {"train", "--debug-state", path.c_str(), "--objective", "mlm"};
    CHECK_THROWS_WITH_AS(debug_state_main(5, (char**)causal), doctest::Contains("needs a non-causal model"),
                         flash_error);
    std::remove(path.c_str());
    std::remove(config.c_str());
}
