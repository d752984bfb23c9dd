/* moe_mpi.h: a moe communicator over an MPI communicator.
 *
 * Header-only and inline: it compiles with the caller's MPI (libmoe itself does not
 * link MPI), duplicates the caller's communicator so that the layer's traffic never
 * matches the caller's own messages, and runs every collective non-blocking
 * (all-to-all as MPI_Irecv/MPI_Isend pairs, MPI_Iallreduce, MPI_Ibarrier), polling
 * until it completes or the communicator's timeout passes. A timed-out collective is abandoned (MPI
 * cannot cancel one): the communicator then refuses further use, and the caller should end the job.
 */
#ifndef MOE_MPI_H
#define MOE_MPI_H

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_mpi_state {
  MPI_Comm comm;
  int rank;
  int world;
  MPI_Request* requests; /* [2 * world]: one all-to-all's receives and sends */
} moe_mpi_state_t;

/* Polls `count` requests until all are done or `timeout_s` (> 0) passes. 0: done. */
static inline int moe_mpi_wait_all_(int count, MPI_Request* requests, double timeout_s,
                                    const char* what, char* err, size_t errlen) {
  const double start = MPI_Wtime();
  for (;;) {
    int done = 0;
    const int rc = MPI_Testall(count, requests, &done, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) {
      char text[MPI_MAX_ERROR_STRING];
      int len = 0;
      MPI_Error_string(rc, text, &len);
      snprintf(err, errlen, "%s failed: %s", what, text);
      return 1;
    }
    if (done) return 0;
    if (timeout_s > 0 && MPI_Wtime() - start > timeout_s) {
      snprintf(err, errlen, "%s timed out after %.1f s (a peer may have exited)", what, timeout_s);
      return 1;
    }
  }
}

/* A started all-to-all: its receives and sends, polled by moe_mpi_all_to_all_wait_. */
typedef struct moe_mpi_request {
  int count;
  MPI_Request requests[1]; /* [count], allocated with the struct */
} moe_mpi_request_t;

/* The same exchange as moe_mpi_all_to_all_, returning once it is posted. */
static inline int moe_mpi_all_to_all_start_(void* state, const void* send,
                                            const int64_t* send_bytes, void* recv,
                                            const int64_t* recv_bytes, void** request, char* err,
                                            size_t errlen) {
  moe_mpi_state_t* s = (moe_mpi_state_t*)state;
  int64_t soff = 0, roff = 0, self_soff = 0, self_roff = 0;
  int p;
  moe_mpi_request_t* r = (moe_mpi_request_t*)malloc(sizeof(moe_mpi_request_t) +
                                                    sizeof(MPI_Request) * 2 * (size_t)s->world);
  *request = NULL;
  if (r == NULL) {
    snprintf(err, errlen, "all_to_all_start: out of memory");
    return 1;
  }
  r->count = 0;
  for (p = 0; p < s->world; ++p) {
    if (send_bytes[p] > INT_MAX || recv_bytes[p] > INT_MAX) {
      snprintf(err, errlen, "all_to_all: more than INT_MAX bytes for one peer");
      free(r);
      return 1;
    }
  }
  if (send_bytes[s->rank] != recv_bytes[s->rank]) {
    snprintf(err, errlen, "all_to_all: %lld bytes to itself but %lld expected from itself",
             (long long)send_bytes[s->rank], (long long)recv_bytes[s->rank]);
    free(r);
    return 1;
  }
  for (p = 0; p < s->world; ++p) {
    if (p == s->rank) {
      self_roff = roff;
    } else if (recv_bytes[p] > 0 &&
               MPI_Irecv((char*)recv + roff, (int)recv_bytes[p], MPI_BYTE, p, 0, s->comm,
                         &r->requests[r->count++]) != MPI_SUCCESS) {
      snprintf(err, errlen, "MPI_Irecv from rank %d could not start", p);
      *request = r; /* what was posted is waited for by the caller's wait, or leaks */
      return 1;
    }
    roff += recv_bytes[p];
  }
  for (p = 0; p < s->world; ++p) {
    if (p == s->rank) {
      self_soff = soff;
    } else if (send_bytes[p] > 0 &&
               MPI_Isend((const char*)send + soff, (int)send_bytes[p], MPI_BYTE, p, 0, s->comm,
                         &r->requests[r->count++]) != MPI_SUCCESS) {
      snprintf(err, errlen, "MPI_Isend to rank %d could not start", p);
      *request = r;
      return 1;
    }
    soff += send_bytes[p];
  }
  if (send_bytes[s->rank] > 0)
    memcpy((char*)recv + self_roff, (const char*)send + self_soff, (size_t)send_bytes[s->rank]);
  *request = r;
  return 0;
}

static inline int moe_mpi_all_to_all_wait_(void* state, void* request, double timeout_s, char* err,
                                           size_t errlen) {
  moe_mpi_request_t* r = (moe_mpi_request_t*)request;
  int rc;
  (void)state;
  if (r == NULL) return 0;
  rc = moe_mpi_wait_all_(r->count, r->requests, timeout_s, "all_to_all", err, errlen);
  free(r);
  return rc;
}

/* Pairwise: every receive posted first, then every send, then one poll for all. As
 * fast as the blocking MPI_Alltoallv (bench: moe-bench --ep), where MPI_Ialltoallv's
 * schedule-driven progress was measurably slower, and it can still time out. */
static inline int moe_mpi_all_to_all_(void* state, const void* send, const int64_t* send_bytes,
                                      void* recv, const int64_t* recv_bytes, double timeout_s,
                                      char* err, size_t errlen) {
  void* request = NULL;
  if (moe_mpi_all_to_all_start_(state, send, send_bytes, recv, recv_bytes, &request, err, errlen) !=
      0) {
    free(request);
    return 1;
  }
  return moe_mpi_all_to_all_wait_(state, request, timeout_s, err, errlen);
}

static inline int moe_mpi_all_reduce_sum_(void* state, double* data, int64_t count,
                                          double timeout_s, char* err, size_t errlen) {
  moe_mpi_state_t* s = (moe_mpi_state_t*)state;
  MPI_Request request;
  if (count > INT_MAX) {
    snprintf(err, errlen, "all_reduce_sum: more than INT_MAX values");
    return 1;
  }
  if (MPI_Iallreduce(MPI_IN_PLACE, data, (int)count, MPI_DOUBLE, MPI_SUM, s->comm, &request) !=
      MPI_SUCCESS) {
    snprintf(err, errlen, "MPI_Iallreduce could not start");
    return 1;
  }
  return moe_mpi_wait_all_(1, &request, timeout_s, "MPI_Iallreduce", err, errlen);
}

static inline int moe_mpi_barrier_(void* state, double timeout_s, char* err, size_t errlen) {
  moe_mpi_state_t* s = (moe_mpi_state_t*)state;
  MPI_Request request;
  if (MPI_Ibarrier(s->comm, &request) != MPI_SUCCESS) {
    snprintf(err, errlen, "MPI_Ibarrier could not start");
    return 1;
  }
  return moe_mpi_wait_all_(1, &request, timeout_s, "MPI_Ibarrier", err, errlen);
}

static inline void moe_mpi_destroy_(void* state) {
  moe_mpi_state_t* s = (moe_mpi_state_t*)state;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Comm_free(&s->comm);
  free(s->requests);
  free(s);
}

/* A communicator over (a duplicate of) `comm`; destroy it with moe_comm_destroy, before
 * MPI_Finalize. timeout_s bounds every collective (0 = wait forever). */
static inline moe_status_t moe_comm_create_mpi(MPI_Comm comm, double timeout_s, moe_comm_t* out) {
  moe_comm_ops_t ops;
  moe_status_t status;
  moe_mpi_state_t* s = (moe_mpi_state_t*)malloc(sizeof(moe_mpi_state_t));
  if (s == NULL) return MOE_STATUS_OUT_OF_MEMORY;
  if (MPI_Comm_dup(comm, &s->comm) != MPI_SUCCESS) {
    free(s);
    return MOE_STATUS_COMM_ERROR;
  }
  /* Errors come back as statuses (then MOE_STATUS_COMM_ERROR), not as an abort. */
  MPI_Comm_set_errhandler(s->comm, MPI_ERRORS_RETURN);
  MPI_Comm_size(s->comm, &s->world);
  MPI_Comm_rank(s->comm, &s->rank);
  s->requests = (MPI_Request*)malloc(sizeof(MPI_Request) * 2 * (size_t)s->world);
  if (s->requests == NULL) {
    moe_mpi_destroy_(s); /* frees the duplicate and s */
    return MOE_STATUS_OUT_OF_MEMORY;
  }
  ops.size = sizeof(moe_comm_ops_t);
  ops.version = MOE_COMM_OPS_VERSION;
  MPI_Comm_rank(s->comm, &ops.rank);
  ops.world = s->world;
  ops.device = MOE_DEVICE_CPU;
  ops.state = s;
  ops.all_to_all = moe_mpi_all_to_all_;
  ops.all_reduce_sum = moe_mpi_all_reduce_sum_;
  ops.barrier = moe_mpi_barrier_;
  ops.destroy = moe_mpi_destroy_;
  ops.all_to_all_start = moe_mpi_all_to_all_start_;
  ops.all_to_all_wait = moe_mpi_all_to_all_wait_;
  status = moe_comm_create(&ops, timeout_s, out);
  if (status != MOE_STATUS_SUCCESS) moe_mpi_destroy_(s);
  return status;
}

#ifdef __cplusplus
}
#endif

#endif /* MOE_MPI_H */
