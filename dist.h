// dist.h: data-parallel training over MPI ranks, the way llm.c does it: mpirun starts the ranks, every rank holds
// the whole model and takes its own rows of each global batch (data/dataloader.h), the gradients are averaged with
// MPI_Allreduce on the CPU and with NCCL on GPUs (its unique id broadcast over MPI), and every rank applies the same
// update. Rank 0 alone prints, writes metrics and writes checkpoints.
//
// MPI is optional, like CUDA: dist.cpp is compiled with mpicxx and FLASH_HAVE_MPI where make finds mpicxx (NCCL
// too, FLASH_HAVE_NCCL, where nvcc and nccl.h exist); elsewhere, or when the program is not started by mpirun, the
// program is one rank of one and every call here is a no-op, so single-process training is unchanged, bit for bit.
//
// Failure: an error on any rank ends the whole job with that rank's message (dist_abort: MPI_Abort). MPI has no
// time-out for a collective that cannot complete (a rank stuck or gone): a watchdog thread ends the job when one
// collective has waited more than the time-out (--dist-timeout seconds), with a message saying which.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "model.h"

class Dist {
public:
    int rank() const { return rank_; }
    int size() const { return size_; }
    bool lead() const { return rank_ == 0; }  // the rank that prints and writes files
    int local_rank() const { return local_rank_; }  // rank among those on this machine: which GPU to take
    bool nccl() const { return nccl_ != nullptr; }

    // Element-wise sums over the ranks, in place, on every rank. `what` names the collective in a time-out.
    void allreduce_sum(double* x, size_t n, const char* what);
    void allreduce_sum(float* x, size_t n, const char* what);
    // Sum over ranks of a float array on the GPU (NCCL, in place); needs nccl().
    void allreduce_sum_device(float* device_x, size_t n, const char* what);
    // Throws flash_error (on every rank, so the job ends with it) when the ranks' values differ, naming `what`.
    void check_same(uint64_t value, const std::string& what);

    // The time-out of one collective, in seconds (0: none). Set from --dist-timeout.
    void set_timeout(double seconds) { timeout_s_ = seconds; }
    double timeout() const { return timeout_s_; }

private:
    friend Dist& dist_init(int* argc, char*** argv);
    friend Dist& dist_get();
    friend void dist_init_gpu(Dist& d);
    friend void dist_finalize();
    friend struct CollectiveGuard;
    int rank_ = 0, size_ = 1, local_rank_ = 0;
    double timeout_s_ = 300;
    void* nccl_ = nullptr;  // the NCCL communicator (dist_nccl.cu), when the ranks train on GPUs
};

// Whether this build has MPI (make found mpicxx).
bool dist_built_with_mpi();
// Starts MPI (when built with it and launched by mpirun) and the watchdog. Call first in main.
Dist& dist_init(int* argc, char*** argv);
// The process's Dist: after dist_init, the MPI world; without it (tests, a plain build), rank 0 of 1.
Dist& dist_get();
// Picks this rank's GPU (local rank modulo the GPUs present) and starts NCCL over the ranks. Call before making a
// model on the GPU. A no-op for one rank.
void dist_init_gpu(Dist& d);
// Ends MPI cleanly (after the last collective).
void dist_finalize();
// Ends the whole job from this rank: prints "error on rank r of R: message" and calls MPI_Abort (exits with code
// for one rank of one).
[[noreturn]] void dist_abort(const std::string& message, int code = 1);

// ---- the training step's collectives ------------------------------------------------------------------------

// Targets other than kIgnoreTarget (ops.h): the ones a mean loss is taken over.
int64_t count_scored(const int* targets, size_t n);

// The global batch's mean loss from each rank's mean over its `scored` targets (targets of kIgnoreTarget are not
// scored), and whether any rank was asked to stop (Ctrl-C): one all-reduce. Returns the local values for one rank.
struct StepTotals {
    double loss = 0;     // mean over every scored target of the global batch
    double scored = 0;   // scored targets of the global batch
    bool stop = false;   // some rank saw Ctrl-C
};
StepTotals dist_step_totals(Dist& d, double local_mean_loss, int64_t local_scored, bool local_stop);

// Makes every rank's gradients the gradient of the global batch's mean loss: each rank scales its gradient (of its
// own mean) by local_scored / global_scored, and the ranks sum them. On the GPU with NCCL in place; else through a
// host copy and MPI_Allreduce. A no-op for one rank.
void dist_average_grads(Dist& d, Model<float>& m, int64_t local_scored, double global_scored);

// A checksum of the weights and AdamW moments (FNV-1a over their bytes), compared across ranks: a mismatch stops
// training with an error naming `when` (they must be identical: same seed or checkpoint, same updates).
uint64_t model_checksum(const Model<float>& m);
void dist_check_replicas(Dist& d, const Model<float>& m, const std::string& when);
