// dist_nccl.h: the NCCL half of dist.h, in dist_nccl.cu (compiled by nvcc where nccl.h exists). dist.cpp broadcasts
// the unique id over MPI and calls these; nothing else does.
#pragma once
#include <cstddef>

// The bytes of a fresh ncclUniqueId (rank 0 makes it), and their count.
size_t nccl_unique_id_bytes();
void nccl_make_unique_id(char* out);
// Takes GPU local_rank modulo the GPUs present; throws flash_error when there is none.
void nccl_select_device(int local_rank);
// The communicator of `size` ranks for the id; this process is `rank`. Throws flash_error naming NCCL's error.
void* nccl_start(const char* unique_id, int rank, int size);
// x[i] = sum over the ranks of x[i], in place, on the legacy default stream (where the model's kernels run), then
// waits for it.
void nccl_allreduce_sum(void* comm, float* device_x, size_t n);
void nccl_stop(void* comm);
