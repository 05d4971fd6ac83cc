// rundir.cpp: see rundir.h.
#include "rundir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "common.h"
#include "formats/json_file.h"

namespace fs = std::filesystem;

RunDirLock::RunDirLock(const std::string& dir) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    FLASH_CHECK(!ec, "cannot create '" << dir << "': " << ec.message(), "check permissions or pick --out-dir");
    const std::string path = (fs::path(dir) / ".lock").string();
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    FLASH_CHECK(fd_ >= 0, "cannot open the lock file '" << path << "': " << std::strerror(errno), "check permissions");
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
        const int err = errno;
        char holder[32] = {0};
        (void)!::pread(fd_, holder, sizeof holder - 1, 0);
        ::close(fd_);
        fd_ = -1;
        FLASH_CHECK(err != EWOULDBLOCK, "'" << dir << "' is in use by another ./train (pid " << std::strtol(holder, nullptr, 10)
                                            << ")",
                    "wait for it to finish, stop it (Ctrl-C writes a checkpoint), or use another --out-dir");
        FLASH_FAIL("cannot lock '" << path << "': " << std::strerror(err), "use a local file system for --out-dir");
    }
    // The holder's pid, for the message above (the lock itself is the flock, not this content).
    const std::string pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) != (ssize_t)pid.size()) {
        // Only the message would lack the pid: not worth failing the run for.
    }
}

RunDirLock::~RunDirLock() {
    if (fd_ >= 0) ::close(fd_);  // releases the flock
}

// The files of a run that a fresh run must not mix with: checkpoints and logs.
static bool is_run_file(const std::string& name) {
    if (name.rfind("ckpt_", 0) == 0 && name.size() > 17 && name.compare(name.size() - 12, 12, ".safetensors") == 0)
        return true;
    for (const char* log : {"metrics.jsonl", "train_loss.tsv", "val_loss.tsv", "loss.png", "loss.gp"})
        if (name == log) return true;
    return false;
}

static std::vector<fs::path> files_where(const std::string& dir, bool (*pred)(const std::string&)) {
    std::vector<fs::path> found;
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return found;
    for (const auto& entry : fs::directory_iterator(dir, ec))
        if (pred(entry.path().filename().string())) found.push_back(entry.path());
    return found;
}

bool run_dir_holds_run(const std::string& dir) {
    for (const fs::path& p : files_where(dir, is_run_file)) {
        const std::string name = p.filename().string();
        if (name.rfind("ckpt_", 0) == 0 || name == "metrics.jsonl") return true;
    }
    return false;
}

void prepare_fresh_run_dir(const std::string& dir, bool overwrite) {
    if (!run_dir_holds_run(dir)) return;
    FLASH_CHECK(overwrite, "'" << dir << "' holds a run (checkpoints or metrics.jsonl); a fresh run would destroy it",
                "continue it with --resume, replace it with --overwrite, or choose another --out-dir");
    for (const fs::path& p : files_where(dir, is_run_file)) {
        std::error_code ec;
        fs::remove(p, ec);
        FLASH_CHECK(!ec, "--overwrite: cannot remove '" << p.string() << "': " << ec.message(), "check permissions");
    }
}

void remove_stale_temporaries(const std::string& dir) {
    // Temporaries of checkpoints and of rewritten logs: <name>.<pid>.tmp
    auto is_tmp = [](const std::string& name) {
        const bool ours = name.rfind("ckpt_", 0) == 0 || name.rfind("metrics.jsonl.", 0) == 0 ||
                          name.rfind("train_loss.tsv.", 0) == 0 || name.rfind("val_loss.tsv.", 0) == 0;
        return ours && name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0;
    };
    for (const fs::path& p : files_where(dir, is_tmp)) {
        std::error_code ec;
        fs::remove(p, ec);  // best effort: a leftover that cannot be removed harms nothing
    }
}

// The step of a metrics.jsonl line, -1 when it is not a complete JSON object with an integer "step".
static int64_t metrics_line_step(const std::string& line) {
    try {
        const nlohmann::json j = parse_json(line, "metrics line", "");
        if (j.is_object() && j.contains("step") && j["step"].is_number_integer()) return j["step"].get<int64_t>();
    } catch (const flash_error&) {
    }
    return -1;
}

// The step of a "step<TAB>loss" line, -1 when it has none.
static int64_t tsv_line_step(const std::string& line) {
    long long step;
    double loss;
    return std::sscanf(line.c_str(), "%lld\t%lf", &step, &loss) == 2 ? step : -1;
}

// Rewrites path (atomically) with the complete lines (those ending in '\n') whose step is in 0..max_step.
static void keep_lines_up_to(const fs::path& path, int64_t max_step, int64_t (*step_of)(const std::string&)) {
    std::error_code ec;
    if (!fs::exists(path, ec)) return;
    const std::string text = read_whole_file(path.string(), "log file", "check permissions");
    std::string kept;
    size_t begin = 0;
    for (size_t end; (end = text.find('\n', begin)) != std::string::npos; begin = end + 1) {
        const std::string line = text.substr(begin, end - begin);
        const int64_t step = step_of(line);
        if (step >= 0 && step <= max_step) kept += line + "\n";
    }
    if (kept == text) return;
    const std::string tmp = path.string() + "." + std::to_string(::getpid()) + ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        out << kept;
        out.flush();
        FLASH_CHECK(out, "cannot write '" << tmp << "'", "check free disk space");
    }
    FLASH_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0,
                "cannot replace '" << path.string() << "': " << std::strerror(errno), "check permissions");
}

void trim_run_logs(const std::string& dir, int64_t step) {
    keep_lines_up_to(fs::path(dir) / "metrics.jsonl", step, metrics_line_step);
    keep_lines_up_to(fs::path(dir) / "train_loss.tsv", step, tsv_line_step);
    keep_lines_up_to(fs::path(dir) / "val_loss.tsv", step, tsv_line_step);
}
