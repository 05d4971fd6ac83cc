// dist.cpp: data-parallel training over MPI (and NCCL). Read dist.h first. Compiled with mpicxx and FLASH_HAVE_MPI
// where make finds mpicxx; without it every Dist is rank 0 of 1.
#include "dist.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "common.h"
#ifdef FLASH_HAVE_MPI
#include <mpi.h>
#endif
#ifdef FLASH_HAVE_NCCL
#include "dist_nccl.h"
#endif

namespace {

Dist g_dist;
#ifdef FLASH_HAVE_MPI
bool g_mpi_started = false, g_abort_from_any_thread = false;
#endif

// The watchdog's view of the collective in progress: when it began (steady-clock ns, 0: none) and its name.
std::atomic<int64_t> g_collective_since{0};
std::atomic<const char*> g_collective_name{""};

int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

#ifdef FLASH_HAVE_MPI
void mpi_check(int rc, const char* call) {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    FLASH_FAIL(call << " failed: " << std::string(text, len), "a rank has failed or the network is down");
}
#define MPI_CHECK(call) mpi_check((call), #call)
#endif

}  // namespace

// Marks a collective in progress for the watchdog, for the scope of one call.
struct CollectiveGuard {
    explicit CollectiveGuard(const char* what) {
        g_collective_name = what;
        g_collective_since = now_ns();
    }
    ~CollectiveGuard() { g_collective_since = 0; }
};

Dist& dist_get() { return g_dist; }

bool dist_built_with_mpi() {
#ifdef FLASH_HAVE_MPI
    return true;
#else
    return false;
#endif
}

#ifdef FLASH_HAVE_MPI
// The watchdog: once a second, is a collective older than the time-out? Then no rank can finish it (a rank died
// without MPI noticing, or is stuck): end the job with a message rather than hang. MPI_Abort from this thread needs
// MPI_THREAD_MULTIPLE; without it the process exits, and mpirun then ends the other ranks.
static void watchdog_loop() {
    for (;;) {
        std::this_thread::sleep_for(std::chrono::seconds(1));
        const int64_t since = g_collective_since;
        if (since == 0) continue;
        const double limit = g_dist.timeout();
        if (limit <= 0 || (double)(now_ns() - since) * 1e-9 <= limit) continue;
        std::fprintf(stderr,
                     "error on rank %d of %d: the collective '%s' has not completed in %.0f s: another rank has "
                     "stopped or is stuck (hint: see the other ranks' messages; raise --dist-timeout if a rank is "
                     "only slow)\n",
                     g_dist.rank(), g_dist.size(), g_collective_name.load(), limit);
        std::fflush(stderr);
        if (g_abort_from_any_thread) MPI_Abort(MPI_COMM_WORLD, 3);
        std::_Exit(3);
    }
}
#endif

Dist& dist_init(int* argc, char*** argv) {
#ifdef FLASH_HAVE_MPI
    // Started by mpirun (or another MPI launcher)? A plain ./train stays a single process without touching MPI.
    const bool launched = std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK");
    if (!launched) return g_dist;
    int provided = 0;
    MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
    g_mpi_started = true;
    g_abort_from_any_thread = provided >= MPI_THREAD_MULTIPLE;
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &g_dist.rank_));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &g_dist.size_));
    MPI_Comm local;
    MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_dist.rank_, MPI_INFO_NULL, &local));
    MPI_CHECK(MPI_Comm_rank(local, &g_dist.local_rank_));
    MPI_CHECK(MPI_Comm_free(&local));
    if (g_dist.size_ > 1) std::thread(watchdog_loop).detach();
#else
    (void)argc;
    (void)argv;
    // mpirun of a build without MPI would start independent copies that overwrite each other's files.
    const char* world = std::getenv("OMPI_COMM_WORLD_SIZE");
    if (!world) world = std::getenv("PMI_SIZE");
    if (world && std::atoi(world) > 1) {
        std::fprintf(stderr, "error: started by mpirun as %s ranks, but this build has no MPI (hint: install "
                             "libopenmpi-dev and rebuild: make finds mpicxx)\n", world);
        std::exit(1);
    }
#endif
    return g_dist;
}

void dist_init_gpu(Dist& d) {
    if (d.size_ == 1 || d.nccl_) return;
#ifdef FLASH_HAVE_NCCL
    nccl_select_device(d.local_rank_);
    std::vector<char> id(nccl_unique_id_bytes());
    if (d.lead()) nccl_make_unique_id(id.data());
    {
        CollectiveGuard guard("broadcast of the NCCL id");
        MPI_CHECK(MPI_Bcast(id.data(), (int)id.size(), MPI_BYTE, 0, MPI_COMM_WORLD));
    }
    CollectiveGuard guard("NCCL start");
    d.nccl_ = nccl_start(id.data(), d.rank_, d.size_);
#else
    FLASH_FAIL("several ranks on GPUs need NCCL, and this build has none (nvcc, nccl.h and mpicxx are needed)",
               "build where the CUDA toolkit has NCCL, or train the ranks with --device cpu");
#endif
}

void dist_finalize() {
#ifdef FLASH_HAVE_NCCL
    nccl_stop(g_dist.nccl_);
    g_dist.nccl_ = nullptr;
#endif
#ifdef FLASH_HAVE_MPI
    if (g_mpi_started) MPI_Finalize();
    g_mpi_started = false;
#endif
}

void dist_abort(const std::string& message, int code) {
    std::fprintf(stderr, "error on rank %d of %d: %s\n", g_dist.rank(), g_dist.size(), message.c_str());
    std::fflush(stderr);
#ifdef FLASH_HAVE_MPI
    if (g_mpi_started) MPI_Abort(MPI_COMM_WORLD, code);
#endif
    std::exit(code);
}

// ---- collectives --------------------------------------------------------------------------------------------

void Dist::allreduce_sum(double* x, size_t n, const char* what) {
    if (size_ == 1) return;
#ifdef FLASH_HAVE_MPI
    CollectiveGuard guard(what);
    for (size_t at = 0; at < n; at += 1 << 30)  // MPI counts are int
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, x + at, (int)std::min<size_t>(n - at, 1 << 30), MPI_DOUBLE, MPI_SUM,
                                MPI_COMM_WORLD));
#endif
}

void Dist::allreduce_sum(float* x, size_t n, const char* what) {
    if (size_ == 1) return;
#ifdef FLASH_HAVE_MPI
    CollectiveGuard guard(what);
    for (size_t at = 0; at < n; at += 1 << 30)
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, x + at, (int)std::min<size_t>(n - at, 1 << 30), MPI_FLOAT, MPI_SUM,
                                MPI_COMM_WORLD));
#endif
}

void Dist::allreduce_sum_device(float* device_x, size_t n, const char* what) {
    FLASH_CHECK(nccl_, "allreduce_sum_device without NCCL", "call dist_init_gpu first");
#ifdef FLASH_HAVE_NCCL
    CollectiveGuard guard(what);
    nccl_allreduce_sum(nccl_, device_x, n);
#endif
}

void Dist::check_same(uint64_t value, const std::string& what) {
    if (size_ == 1) return;
#ifdef FLASH_HAVE_MPI
    std::vector<uint64_t> all(size_);
    {
        CollectiveGuard guard("comparison of the ranks' checksums");
        MPI_CHECK(MPI_Allgather(&value, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD));
    }
    for (int r = 1; r < size_; r++)
        FLASH_CHECK(all[r] == all[0], what << ": rank " << r << " differs from rank 0 (checksums " << std::hex
                                           << all[r] << " vs " << all[0] << ")",
                    "every rank must run the same build with the same options and read the same checkpoint; "
                    "the replicas have diverged, so training stops");
#endif
}

// ---- the training step ----------------------------------------------------------------------------------------

int64_t count_scored(const int* targets, size_t n) {
    int64_t scored = 0;
    for (size_t i = 0; i < n; i++) scored += targets[i] != kIgnoreTarget;
    return scored;
}

StepTotals dist_step_totals(Dist& d, double local_mean_loss, int64_t local_scored, bool local_stop) {
    if (d.size() == 1) return StepTotals{local_mean_loss, (double)local_scored, local_stop};
    // The mean of the global batch is the scored-weighted mean of the ranks' means (exact for equal counts).
    double sums[3] = {local_mean_loss * (double)local_scored, (double)local_scored, local_stop ? 1.0 : 0.0};
    d.allreduce_sum(sums, 3, "sum of the step's losses");
    return StepTotals{sums[1] > 0 ? sums[0] / sums[1] : local_mean_loss, sums[1], sums[2] > 0};
}

void dist_average_grads(Dist& d, Model<float>& m, int64_t local_scored, double global_scored) {
    if (d.size() == 1) return;
    // d(global mean) = Σ_r (scored_r / scored) · d(mean_r); for equal counts the factor is 1/R (exact for R = 2^k).
    m.scale_grads(global_scored > 0 ? (double)local_scored / global_scored : 0.0);
    if (float* device_grads = m.device_buffer(ModelBuffer::grads)) {
        d.allreduce_sum_device(device_grads, m.param_count(), "gradient all-reduce (NCCL)");
        return;
    }
    std::vector<float> grads(m.param_count());
    m.copy_to_host(ModelBuffer::grads, grads.data());
    d.allreduce_sum(grads.data(), grads.size(), "gradient all-reduce");
    m.copy_from_host(ModelBuffer::grads, grads.data());
}

uint64_t model_checksum(const Model<float>& m) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a 64
    std::vector<float> host(m.param_count());
    for (ModelBuffer which : {ModelBuffer::params, ModelBuffer::adam_m, ModelBuffer::adam_v}) {
        m.copy_to_host(which, host.data());
        const unsigned char* bytes = reinterpret_cast<const unsigned char*>(host.data());
        for (size_t i = 0; i < host.size() * sizeof(float); i++) h = (h ^ bytes[i]) * 1099511628211ull;
    }
    return h;
}

void dist_check_replicas(Dist& d, const Model<float>& m, const std::string& when) {
    if (d.size() == 1) return;
    d.check_same(model_checksum(m), "the weights and AdamW moments " + when);
}
