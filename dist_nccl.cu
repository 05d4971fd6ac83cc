// dist_nccl.cu: the GPU all-reduce of data-parallel training (dist.h), with NCCL. Read dist_nccl.h.
#include "dist_nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include "common.h"

#define NCCL_CHECK(call)                                                                                   \
    do {                                                                                                   \
        const ncclResult_t r_ = (call);                                                                    \
        FLASH_CHECK(r_ == ncclSuccess, #call << " failed: " << ncclGetErrorString(r_),                    \
                    "NCCL_DEBUG=WARN shows why; every rank needs its own GPU and the same NCCL version"); \
    } while (0)
#define CUDA_OK(call)                                                                                    \
    do {                                                                                                 \
        const cudaError_t e_ = (call);                                                                   \
        FLASH_CHECK(e_ == cudaSuccess, #call << " failed: " << cudaGetErrorString(e_), "check the GPU"); \
    } while (0)

size_t nccl_unique_id_bytes() { return sizeof(ncclUniqueId); }

void nccl_make_unique_id(char* out) {
    ncclUniqueId id;
    NCCL_CHECK(ncclGetUniqueId(&id));
    memcpy(out, &id, sizeof id);
}

void nccl_select_device(int local_rank) {
    int count = 0;
    CUDA_OK(cudaGetDeviceCount(&count));
    FLASH_CHECK(count > 0, "no GPU for rank " << local_rank << " on this machine", "use --device cpu");
    CUDA_OK(cudaSetDevice(local_rank % count));
}

void* nccl_start(const char* unique_id, int rank, int size) {
    ncclUniqueId id;
    memcpy(&id, unique_id, sizeof id);
    ncclComm_t comm;
    NCCL_CHECK(ncclCommInitRank(&comm, size, id, rank));
    return comm;
}

void nccl_allreduce_sum(void* comm, float* device_x, size_t n) {
    NCCL_CHECK(ncclAllReduce(device_x, device_x, n, ncclFloat, ncclSum, (ncclComm_t)comm, cudaStreamLegacy));
    CUDA_OK(cudaStreamSynchronize(cudaStreamLegacy));
}

void nccl_stop(void* comm) {
    if (comm) ncclCommDestroy((ncclComm_t)comm);
}
