// test_dist.cpp: data-parallel training under mpirun (dist.h). Runs ./train as 2 ranks of 1 thread each and as one
// process of 1 thread with the same global batch, and compares losses and weights; resume across a stop; a failing
// rank, a diverged replica, an uneven batch and a stuck collective end the job with their message, bounded in time.
// Skips (with a message) where there is no mpirun or this build has no MPI; CI installs both, so it runs there.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "dist.h"
#include "formats/checkpoint.h"
#include "formats/safetensors.h"
#include "test/corpus.h"

namespace fs = std::filesystem;

namespace {

// Every job is bounded: a hang fails the test after this many seconds instead of stalling CI.
constexpr int kJobLimitSeconds = 120;
const char* kMpirun = "mpirun --allow-run-as-root --oversubscribe";

bool can_run_mpi() {
    static int ok = -1;
    if (ok >= 0) return ok;
    ok = 0;
    if (std::system("command -v mpirun >/dev/null 2>&1") != 0)
        MESSAGE("skipped: no mpirun (apt-get install openmpi-bin)");
    else if (!dist_built_with_mpi()) MESSAGE("skipped: this build has no MPI (install libopenmpi-dev and rebuild)");
    else if (!fs::exists("train")) FAIL("no ./train: run the tests from the repository root after make");
    else ok = 1;
    return ok;
}

struct Job {
    int rc = -1;
    std::string output;  // stdout and stderr
    double seconds = 0;
};

Job run_job(const std::string& command) {
    const std::string out_file = "/tmp/flash_test_dist_job_" + std::to_string(getpid()) + ".txt";
    const auto t0 = std::chrono::steady_clock::now();
    const int status = std::system(("timeout " + std::to_string(kJobLimitSeconds) + " " + command + " >" + out_file +
                                    " 2>&1").c_str());
    Job j;
    j.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    j.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    std::ifstream in(out_file);
    j.output.assign(std::istreambuf_iterator<char>(in), {});
    fs::remove(out_file);
    return j;
}

bool says(const Job& j, const std::string& text) { return j.output.find(text) != std::string::npos; }

// The tiny model of test_train, 10 steps of a global batch of 4, one thread per process.
std::string train_args(const std::string& out_dir, const std::string& data_dir) {
    return "./train --model tiny --d 32 --e 64 --s 16 --chunk 8 --seq-len 32 --batch 4 --steps 10 --warmup 3 "
           "--lr 3e-3 --lr-min 3e-4 --eval-interval 5 --eval-batches 2 --sample-interval 0 --ckpt-interval 100 "
           "--threads 1 --quiet --data-dir " + data_dir + " --out-dir " + out_dir;
}
std::string ranks(int n) { return std::string(kMpirun) + " -np " + std::to_string(n) + " "; }

std::string base_dir() {
    static const std::string dir = "/tmp/flash_test_dist_" + std::to_string(getpid());
    return dir;
}

// metrics.jsonl's numbers under `key`, in order.
std::vector<double> metric(const std::string& out_dir, const std::string& key) {
    std::ifstream in(out_dir + "/metrics.jsonl");
    std::vector<double> v;
    const std::string tag = "\"" + key + "\": ";
    for (std::string line; std::getline(in, line);) {
        const size_t at = line.find(tag);
        if (at != std::string::npos) v.push_back(std::stod(line.substr(at + tag.size())));
    }
    return v;
}

// The largest per-tensor relative difference of the weights of two checkpoints: max|a-b| / max|a| per tensor.
double max_weight_rel_diff(const std::string& path_a, const std::string& path_b) {
    const SafeTensorsFile a = safetensors_read(path_a), b = safetensors_read(path_b);
    double worst = 0;
    int weights = 0;
    for (const SafeTensor& ta : a.tensors) {
        if (ta.name.rfind("adam_", 0) == 0) continue;
        const SafeTensor* tb = b.find(ta.name);
        REQUIRE(tb);
        REQUIRE(tb->data.size() == ta.data.size());
        const float *x = (const float*)ta.data.data(), *y = (const float*)tb->data.data();
        double diff = 0, scale = 0;
        for (size_t i = 0; i < ta.data.size() / 4; i++) {
            diff = std::max(diff, (double)std::fabs(x[i] - y[i]));
            scale = std::max(scale, (double)std::fabs(x[i]));
        }
        worst = std::max(worst, scale > 0 ? diff / scale : diff);
        weights++;
    }
    CHECK(weights > 5);
    return worst;
}

std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

// The runs the first tests share: one process, and 2 ranks (uninterrupted), 10 steps each.
struct SharedRuns {
    std::string one, two;
    bool ok = false;
};
const SharedRuns& shared_runs() {
    static SharedRuns r;
    static bool done = false;
    if (done) return r;
    done = true;
    fs::remove_all(base_dir());
    r.one = base_dir() + "/one";
    r.two = base_dir() + "/two";
    const Job single = run_job(train_args(r.one, make_data_dir()));
    const Job pair = run_job(ranks(2) + train_args(r.two, make_data_dir()));
    CHECK_MESSAGE(single.rc == 0, single.output);
    CHECK_MESSAGE(pair.rc == 0, pair.output);
    r.ok = single.rc == 0 && pair.rc == 0;
    return r;
}

}  // namespace

TEST_CASE("2 ranks of 1 thread equal one process with the same global batch: losses 1e-6, weights 1e-5") {
    if (!can_run_mpi()) return;
    const SharedRuns& r = shared_runs();
    REQUIRE(r.ok);
    const std::vector<double> a = metric(r.one, "train_loss"), b = metric(r.two, "train_loss");
    REQUIRE(a.size() == 10);
    REQUIRE(b.size() == 10);
    double worst = 0;
    for (int i = 0; i < 10; i++) worst = std::max(worst, std::fabs(a[i] - b[i]) / std::fabs(a[i]));
    MESSAGE("per-step train loss, largest relative difference: " << worst);
    CHECK(worst <= 1e-6);
    CHECK(a[9] < a[0] - 0.5);  // it learned: the comparison is of a real run
    // the validation figures too (every rank evaluates the same windows with the same weights)
    const std::vector<double> va = metric(r.one, "val_loss"), vb = metric(r.two, "val_loss");
    REQUIRE(va.size() == 2);
    REQUIRE(vb.size() == 2);
    for (int i = 0; i < 2; i++) CHECK(std::fabs(va[i] - vb[i]) <= 1e-6 * va[i]);
    const double w = max_weight_rel_diff(r.one + "/ckpt_00000010.safetensors", r.two + "/ckpt_00000010.safetensors");
    MESSAGE("final weights after 10 steps, largest per-tensor relative difference: " << w);
    CHECK(w <= 1e-5);
    // rank 0 alone wrote the logs: one line per step, not one per rank
    CHECK(metric(r.two, "grad_norm").size() == 10);
}

// The baselines too (BASELINES.md): the same data-parallel arithmetic through the Model interface, each tiny preset.
TEST_CASE("2 ranks equal one process for every baseline arch: losses 1e-6, weights 1e-5") {
    if (!can_run_mpi()) return;
    for (const std::string preset : {"transformer++-tiny", "performer-tiny", "combiner-tiny"}) {
        INFO(preset);
        const std::string one = base_dir() + "/one_" + preset, two = base_dir() + "/two_" + preset;
        const std::string args = "./train --model " + preset + " --batch 4 --steps 10 --warmup 3 --lr 3e-3 "
                                 "--lr-min 3e-4 --eval-interval 5 --eval-batches 2 --sample-interval 0 "
                                 "--ckpt-interval 100 --threads 1 --quiet --data-dir " + make_data_dir() + " --out-dir ";
        const Job single = run_job(args + one), pair = run_job(ranks(2) + args + two);
        REQUIRE_MESSAGE(single.rc == 0, single.output);
        REQUIRE_MESSAGE(pair.rc == 0, pair.output);
        const std::vector<double> a = metric(one, "train_loss"), b = metric(two, "train_loss");
        REQUIRE(a.size() == 10);
        REQUIRE(b.size() == 10);
        double worst = 0;
        for (int i = 0; i < 10; i++) worst = std::max(worst, std::fabs(a[i] - b[i]) / std::fabs(a[i]));
        const double w = max_weight_rel_diff(one + "/ckpt_00000010.safetensors", two + "/ckpt_00000010.safetensors");
        MESSAGE(preset << ": per-step loss largest relative difference " << worst << ", final weights " << w);
        CHECK(worst <= 1e-6);
        CHECK(w <= 1e-5);
    }
}

TEST_CASE("2 ranks: a stop and a resume continue bit for bit; a resume as one process continues, with a note") {
    if (!can_run_mpi()) return;
    const SharedRuns& r = shared_runs();
    REQUIRE(r.ok);
    const std::string legs = base_dir() + "/legs";
    Job first = run_job(ranks(2) + train_args(legs, make_data_dir()) + " --stop-after 4");
    REQUIRE_MESSAGE(first.rc == 0, first.output);
    REQUIRE(fs::exists(legs + "/ckpt_00000004.safetensors"));
    fs::copy(legs, base_dir() + "/legs_one", fs::copy_options::recursive);
    Job second = run_job(ranks(2) + train_args(legs, make_data_dir()) + " --resume");
    REQUIRE_MESSAGE(second.rc == 0, second.output);
    const std::string a = read_bytes(r.two + "/ckpt_00000010.safetensors");
    const std::string b = read_bytes(legs + "/ckpt_00000010.safetensors");
    CHECK(a.size() > 10000);
    CHECK(a == b);  // weights, moments and train state, byte for byte
    CHECK(metric(legs, "train_loss") == metric(r.two, "train_loss"));

    // The same checkpoint resumed by one process: the same global batches, split otherwise; said so.
    const std::string one = base_dir() + "/legs_one";
    const std::string args = train_args(one, make_data_dir());
    Job alone = run_job(args.substr(0, args.find(" --quiet")) + args.substr(args.find(" --quiet") + 8) + " --resume");
    REQUIRE_MESSAGE(alone.rc == 0, alone.output);
    CHECK_MESSAGE(says(alone, "the checkpoint was trained by 2 rank(s), this run has 1"), alone.output);
    const double w = max_weight_rel_diff(r.two + "/ckpt_00000010.safetensors", one + "/ckpt_00000010.safetensors");
    MESSAGE("2 ranks for 4 steps then 1 process for 6, against 2 ranks for 10: weights within " << w);
    CHECK(w <= 1e-5);
}

TEST_CASE("SIGUSR1 to mpirun (which forwards it) stops every rank at the same step with a checkpoint") {
    if (!can_run_mpi()) return;
    const std::string out = base_dir() + "/signal", log = base_dir() + "/signal.log";
    fs::create_directories(base_dir());
    const std::string args = train_args(out, make_data_dir()) + " --steps 1000000";
    // rank 0 prints a line per step without --quiet: signal mpirun once 3 steps are done, then wait for the job; a
    // guard ends the job (SIGTERM: mpirun then ends its ranks) if it is still there after 60 s, so nothing outlives
    // the test
    const std::string script = base_dir() + "/signal.sh";
    std::ofstream(script) << kMpirun << " -np 2 " << args.substr(0, args.find(" --quiet"))
                          << args.substr(args.find(" --quiet") + 8) << " >" << log << " 2>&1 &\n"
                          << "pid=$!\n(for i in $(seq " << kJobLimitSeconds * 5
                          << "); do sleep 0.1; kill -0 $pid 2>/dev/null || exit 0; done; kill $pid) &\n"
                          << "until grep -q 'step      3/' " << log
                          << " || ! kill -0 $pid 2>/dev/null; do sleep 0.1; done\n"
                          << "kill -USR1 $pid\nwait $pid\nrc=$?\nwait\nexit $rc\n";
    const Job j = run_job("sh " + script);
    std::ifstream in(log);
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    CHECK_MESSAGE(j.rc == 0, text);
    CHECK_MESSAGE(text.find("interrupted: checkpoint written at step") != std::string::npos, text);
    CHECK(!latest_checkpoint(out).empty());
}

TEST_CASE("one rank given a bad file ends the whole job with that file's error, within seconds") {
    if (!can_run_mpi()) return;
    const std::string bad = base_dir() + "/bad_data";
    fs::create_directories(bad);
    for (const char* f : {"tokenizer.json", "val.bin"}) fs::copy_file(make_data_dir() + "/" + f, bad + "/" + f);
    std::ofstream(bad + "/train.bin") << "not a token file";
    const std::string good_out = base_dir() + "/bad_run";
    const Job j = run_job(std::string(kMpirun) + " -np 1 " + train_args(good_out, make_data_dir()) + " : -np 1 " +
                          train_args(good_out, bad));
    MESSAGE("the job ended in " << j.seconds << " s");
    CHECK_MESSAGE(j.rc != 0, j.output);
    CHECK(j.rc != 124);  // not the time limit: the job ended itself
    CHECK_MESSAGE(says(j, "error on rank 1 of 2"), j.output);
    CHECK_MESSAGE(says(j, bad + "/train.bin"), j.output);  // the file's own error, naming it
    CHECK(j.seconds < kJobLimitSeconds);
}

TEST_CASE("replicas that differ at the start (another seed on one rank) stop with the checksum error") {
    if (!can_run_mpi()) return;
    const std::string out = base_dir() + "/seeds";
    const Job j = run_job(std::string(kMpirun) + " -np 1 " + train_args(out, make_data_dir()) + " --seed 1 : -np 1 " +
                          train_args(out, make_data_dir()) + " --seed 2");
    CHECK_MESSAGE(j.rc != 0, j.output);
    CHECK_MESSAGE(says(j, "the weights and AdamW moments at the start: rank 1 differs from rank 0"), j.output);
}

TEST_CASE("a global batch that does not split evenly among the ranks is refused") {
    if (!can_run_mpi()) return;
    const Job j = run_job(ranks(2) + train_args(base_dir() + "/uneven", make_data_dir()) + " --batch 3");
    CHECK_MESSAGE(j.rc != 0, j.output);
    CHECK_MESSAGE(says(j, "--batch 3 does not split evenly among 2 ranks"), j.output);
}

TEST_CASE("on GPUs (NCCL), where there are 2: 2 ranks equal one process with the same global batch") {
    if (!can_run_mpi()) return;
    if (std::system("test $(nvidia-smi -L 2>/dev/null | grep -c '^GPU') -ge 2") != 0) {
        MESSAGE("skipped: fewer than 2 GPUs (NCCL needs one GPU per rank)");
        return;
    }
    const std::string one = base_dir() + "/gpu_one", two = base_dir() + "/gpu_two";
    const Job single = run_job(train_args(one, make_data_dir()) + " --device cuda");
    const Job pair = run_job(ranks(2) + train_args(two, make_data_dir()) + " --device cuda");
    REQUIRE_MESSAGE(single.rc == 0, single.output);
    REQUIRE_MESSAGE(pair.rc == 0, pair.output);
    const std::vector<double> a = metric(one, "train_loss"), b = metric(two, "train_loss");
    REQUIRE(a.size() == 10);
    REQUIRE(b.size() == 10);
    for (int i = 0; i < 10; i++) CHECK(std::fabs(a[i] - b[i]) <= 1e-6 * std::fabs(a[i]));
    const double w = max_weight_rel_diff(one + "/ckpt_00000010.safetensors", two + "/ckpt_00000010.safetensors");
    MESSAGE("GPU: final weights after 10 steps, largest per-tensor relative difference: " << w);
    CHECK(w <= 1e-5);
}

TEST_CASE("a collective that cannot complete ends the job after --dist-timeout, naming it") {
    if (!can_run_mpi()) return;
    // Rank 1 has nothing to train (--steps 0) and leaves; rank 0 waits in its first step's all-reduce.
    const std::string out = base_dir() + "/stuck";
    const Job j = run_job(std::string(kMpirun) + " -np 1 " + train_args(out, make_data_dir()) +
                          " --dist-timeout 3 : -np 1 " + train_args(out, make_data_dir()) + " --steps 0");
    MESSAGE("the stuck job ended in " << j.seconds << " s");
    CHECK_MESSAGE(j.rc != 0, j.output);
    CHECK(j.rc != 124);
    CHECK_MESSAGE(says(j, "the collective 'sum of the step's losses' has not completed in 3 s"), j.output);
    fs::remove_all(base_dir());  // the last test: its files and the corpus go
    fs::remove_all(make_data_dir());
}
