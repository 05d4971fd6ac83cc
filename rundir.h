// rundir.h: the run directory (--out-dir) of ./train: one trainer at a time, no run replaced by accident, no
// leftovers of crashed runs, and logs that agree with the checkpoint a run resumes from.
#pragma once
#include <cstdint>
#include <string>

// Holds an exclusive lock (flock) on dir/.lock while it lives, so that a second trainer on the same directory
// is refused instead of writing checkpoints over the first one's. The kernel drops the lock when the process
// ends, however it ends, so a crashed run leaves no stale lock. Creates dir if needed.
class RunDirLock {
public:
    explicit RunDirLock(const std::string& dir);
    ~RunDirLock();
    RunDirLock(const RunDirLock&) = delete;
    RunDirLock& operator=(const RunDirLock&) = delete;

private:
    int fd_ = -1;
};

// Whether dir holds a run (a checkpoint or metrics.jsonl): a fresh run there would destroy it.
bool run_dir_holds_run(const std::string& dir);
// For a fresh run (no --resume): refuses a directory that holds a run unless overwrite is set, and then
// deletes that run's checkpoints and logs so none of them mixes with the new run's.
void prepare_fresh_run_dir(const std::string& dir, bool overwrite);
// Removes the temporary files (*.tmp) that crashed writers left in dir. Call with the lock held: then no
// other writer can own one of them.
void remove_stale_temporaries(const std::string& dir);
// On resume from a checkpoint at `step`: keeps, in metrics.jsonl and the two loss TSV files, only the complete
// lines of steps up to `step` (a run killed after its last checkpoint wrote lines that the resumed run writes
// again, and maybe half a line), so that each file holds every step once, in order.
void trim_run_logs(const std::string& dir, int64_t step);
