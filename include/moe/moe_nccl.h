/* moe_nccl.h: a moe communicator over an NCCL communicator.
 *
 * Header-only and inline, like moe_mpi.h: it compiles with the caller's CUDA toolkit
 * and NCCL (libmoe itself links neither). The buffers handed to all_to_all are device
 * memory (ops.device = MOE_DEVICE_CUDA); all_reduce_sum and barrier take host doubles,
 * staged through a small device buffer. Every collective is enqueued on the caller's
 * stream (ncclSend/ncclRecv pairs inside ncclGroupStart/End for the all-to-all), then
 * the stream is polled: completion, an asynchronous NCCL error, or the timeout. On a
 * timeout the NCCL communicator is aborted (ncclCommAbort), as NCCL documents for a
 * peer that is gone, and the moe communicator refuses further use. The caller keeps
 * ownership of a communicator that was not aborted. */
#ifndef MOE_NCCL_H
#define MOE_NCCL_H

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>

#include "moe.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_nccl_state {
  ncclComm_t comm;
  cudaStream_t stream;
  int rank;
  int world;
  int aborted;
  double* scratch; /* device staging of all_reduce_sum's host doubles */
  int64_t scratch_count;
} moe_nccl_state_t;

/* Seconds for the timeout. gettimeofday, not clock_gettime: glibc declares it in plain
 * C99 (-std=c99 hides clock_gettime and struct timespec without _POSIX_C_SOURCE, which a
 * header must not define for its includer). */
static inline double moe_nccl_now_(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (double)tv.tv_sec + 1e-6 * (double)tv.tv_usec;
}

/* Polls the stream until the enqueued work is done, NCCL reports an error, or
 * timeout_s (> 0) passes (then the NCCL communicator is aborted). 0: done. */
static inline int moe_nccl_wait_(moe_nccl_state_t* s, double timeout_s, const char* what, char* err,
                                 size_t errlen) {
  const double start = moe_nccl_now_();
  for (;;) {
    const cudaError_t q = cudaStreamQuery(s->stream);
    if (q == cudaSuccess) return 0;
    if (q != cudaErrorNotReady) {
      snprintf(err, errlen, "%s: %s", what, cudaGetErrorString(q));
      return 1;
    }
    ncclResult_t async = ncclSuccess;
    if (ncclCommGetAsyncError(s->comm, &async) != ncclSuccess || async != ncclSuccess) {
      snprintf(err, errlen, "%s: %s", what, ncclGetErrorString(async));
      ncclCommAbort(s->comm);
      s->aborted = 1;
      return 1;
    }
    if (timeout_s > 0 && moe_nccl_now_() - start > timeout_s) {
      snprintf(err, errlen, "%s timed out after %.1f s (a peer may have exited); aborted", what,
               timeout_s);
      ncclCommAbort(s->comm);
      s->aborted = 1;
      return 1;
    }
  }
}

static inline int moe_nccl_check_(ncclResult_t rc, const char* what, char* err, size_t errlen) {
  if (rc == ncclSuccess) return 0;
  snprintf(err, errlen, "%s: %s", what, ncclGetErrorString(rc));
  return 1;
}

static inline int moe_nccl_all_to_all_(void* state, const void* send, const int64_t* send_bytes,
                                       void* recv, const int64_t* recv_bytes, double timeout_s,
                                       char* err, size_t errlen) {
  moe_nccl_state_t* s = (moe_nccl_state_t*)state;
  int64_t soff = 0, roff = 0;
  int p;
  if (s->aborted) {
    snprintf(err, errlen, "the NCCL communicator was aborted");
    return 1;
  }
  if (moe_nccl_check_(ncclGroupStart(), "ncclGroupStart", err, errlen)) return 1;
  for (p = 0; p < s->world; ++p) {
    if (send_bytes[p] > 0 &&
        moe_nccl_check_(ncclSend((const char*)send + soff, (size_t)send_bytes[p], ncclChar, p,
                                 s->comm, s->stream),
                        "ncclSend", err, errlen)) {
      ncclGroupEnd();
      return 1;
    }
    if (recv_bytes[p] > 0 && moe_nccl_check_(ncclRecv((char*)recv + roff, (size_t)recv_bytes[p],
                                                      ncclChar, p, s->comm, s->stream),
                                             "ncclRecv", err, errlen)) {
      ncclGroupEnd();
      return 1;
    }
    soff += send_bytes[p];
    roff += recv_bytes[p];
  }
  if (moe_nccl_check_(ncclGroupEnd(), "ncclGroupEnd", err, errlen)) return 1;
  return moe_nccl_wait_(s, timeout_s, "all_to_all", err, errlen);
}

static inline int moe_nccl_all_reduce_sum_(void* state, double* data, int64_t count,
                                           double timeout_s, char* err, size_t errlen) {
  moe_nccl_state_t* s = (moe_nccl_state_t*)state;
  const size_t bytes = sizeof(double) * (size_t)(count > 0 ? count : 1);
  if (s->aborted) {
    snprintf(err, errlen, "the NCCL communicator was aborted");
    return 1;
  }
  if (count > s->scratch_count) {
    if (s->scratch) cudaFree(s->scratch);
    s->scratch = NULL;
    s->scratch_count = 0;
    if (cudaMalloc((void**)&s->scratch, bytes) != cudaSuccess) {
      snprintf(err, errlen, "all_reduce_sum: cudaMalloc of %zu bytes failed", bytes);
      return 1;
    }
    s->scratch_count = count;
  }
  if (count == 0) return 0;
  if (cudaMemcpyAsync(s->scratch, data, bytes, cudaMemcpyHostToDevice, s->stream) != cudaSuccess ||
      moe_nccl_check_(ncclAllReduce(s->scratch, s->scratch, (size_t)count, ncclFloat64, ncclSum,
                                    s->comm, s->stream),
                      "ncclAllReduce", err, errlen) ||
      cudaMemcpyAsync(data, s->scratch, bytes, cudaMemcpyDeviceToHost, s->stream) != cudaSuccess) {
    if (err[0] == '\0') snprintf(err, errlen, "all_reduce_sum: cudaMemcpyAsync failed");
    return 1;
  }
  return moe_nccl_wait_(s, timeout_s, "all_reduce_sum", err, errlen);
}

static inline int moe_nccl_barrier_(void* state, double timeout_s, char* err, size_t errlen) {
  double one = 1.0;
  return moe_nccl_all_reduce_sum_(state, &one, 1, timeout_s, err, errlen);
}

static inline void moe_nccl_destroy_(void* state) {
  moe_nccl_state_t* s = (moe_nccl_state_t*)state;
  if (s->scratch) cudaFree(s->scratch);
  free(s);
}

/* A communicator over the caller's `comm`, enqueuing on `stream` (the stream the
 * layer's tensors are ready on). Destroy it with moe_comm_destroy before
 * ncclCommDestroy. timeout_s bounds every collective (0 = wait forever). */
static inline moe_status_t moe_comm_create_nccl(ncclComm_t comm, cudaStream_t stream,
                                                double timeout_s, moe_comm_t* out) {
  moe_comm_ops_t ops;
  moe_status_t status;
  moe_nccl_state_t* s = (moe_nccl_state_t*)calloc(1, sizeof(moe_nccl_state_t));
  if (s == NULL) return MOE_STATUS_OUT_OF_MEMORY;
  s->comm = comm;
  s->stream = stream;
  if (ncclCommUserRank(comm, &s->rank) != ncclSuccess ||
      ncclCommCount(comm, &s->world) != ncclSuccess) {
    free(s);
    return MOE_STATUS_COMM_ERROR;
  }
  ops.size = sizeof(moe_comm_ops_t);
  ops.version = MOE_COMM_OPS_VERSION;
  ops.rank = s->rank;
  ops.world = s->world;
  ops.device = MOE_DEVICE_CUDA;
  ops.state = s;
  ops.all_to_all = moe_nccl_all_to_all_;
  ops.all_reduce_sum = moe_nccl_all_reduce_sum_;
  ops.barrier = moe_nccl_barrier_;
  ops.destroy = moe_nccl_destroy_;
  status = moe_comm_create(&ops, timeout_s, out);
  if (status != MOE_STATUS_SUCCESS) moe_nccl_destroy_(s);
  return status;
}

#ifdef __cplusplus
}
#endif

#endif /* MOE_NCCL_H */
