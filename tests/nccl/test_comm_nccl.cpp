// The NCCL communicator (moe_nccl.h) on one GPU: a single-rank NCCL communicator moves
// device bytes to itself through the all-to-all (uneven sizes, zero sizes), sums host
// doubles, and passes a barrier; bad arguments are refused; and a layer on the cuda
// backend, whose pipeline exchanges no rows yet, refuses the attachment by name.
// Skipped (not passed) where no GPU is present: CI builds it against the toolkit's NCCL.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <nccl.h>

#include <cstring>
#include <vector>

#include "moe/moe.h"
#include "moe/moe_nccl.h"

namespace {

bool have_gpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

class NcclComm : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    int device = 0;
    ASSERT_EQ(ncclCommInitAll(&nccl_, 1, &device), ncclSuccess);
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
    ASSERT_EQ(moe_comm_create_nccl(nccl_, stream_, 30.0, &comm_), MOE_STATUS_SUCCESS)
        << moe_last_error();
  }
  void TearDown() override {
    if (comm_) {
      EXPECT_EQ(moe_comm_destroy(comm_), MOE_STATUS_SUCCESS);
    }
    if (stream_) cudaStreamDestroy(stream_);
    if (nccl_) ncclCommDestroy(nccl_);
  }
  ncclComm_t nccl_ = nullptr;
  cudaStream_t stream_ = nullptr;
  moe_comm_t comm_ = nullptr;
};

TEST_F(NcclComm, OneRankMovesDeviceBytesToItself) {
  int32_t rank = -1, world = -1;
  ASSERT_EQ(moe_comm_rank(comm_, &rank, &world), MOE_STATUS_SUCCESS);
  EXPECT_EQ(rank, 0);
  EXPECT_EQ(world, 1);
  for (int64_t bytes : {int64_t{0}, int64_t{1}, int64_t{1000}, int64_t{1} << 20}) {
    std::vector<unsigned char> host(static_cast<size_t>(bytes)), back(host.size(), 0);
    for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<unsigned char>(i * 7 + 3);
    void *send = nullptr, *recv = nullptr;
    ASSERT_EQ(cudaMalloc(&send, bytes + 1), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&recv, bytes + 1), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(send, host.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
    const int64_t counts[1] = {bytes};
    ASSERT_EQ(moe_comm_all_to_all(comm_, send, counts, recv, counts), MOE_STATUS_SUCCESS)
        << moe_last_error();
    ASSERT_EQ(cudaMemcpy(back.data(), recv, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(back, host) << bytes << " bytes";
    cudaFree(send);
    cudaFree(recv);
  }
}

TEST_F(NcclComm, SumsHostDoublesAndPassesABarrier) {
  std::vector<double> values = {1.5, -2.0, 3.25, 0.0, 1e300};
  const std::vector<double> expected = values;  // one rank: the sum is itself
  ASSERT_EQ(moe_comm_all_reduce_sum(comm_, values.data(), 5), MOE_STATUS_SUCCESS)
      << moe_last_error();
  EXPECT_EQ(values, expected);
  EXPECT_EQ(moe_comm_all_reduce_sum(comm_, nullptr, 0), MOE_STATUS_SUCCESS);
  EXPECT_EQ(moe_comm_barrier(comm_), MOE_STATUS_SUCCESS) << moe_last_error();
}

TEST_F(NcclComm, RefusesBadArgumentsAndStaysUsable) {
  const int64_t negative[1] = {-1};
  EXPECT_EQ(moe_comm_all_to_all(comm_, nullptr, negative, nullptr, negative),
            MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(moe_comm_all_reduce_sum(comm_, nullptr, 3), MOE_STATUS_NULL_POINTER);
  EXPECT_EQ(moe_comm_barrier(comm_), MOE_STATUS_SUCCESS) << moe_last_error();
}

TEST_F(NcclComm, LayersRefuseItWhereTheirPipelineCannotExchange) {
  moe_layer_config_t c = MOE_LAYER_CONFIG_INIT;
  c.d_model = 8;
  c.d_ff = 8;
  c.num_experts = 2;
  for (const char* backend : {"cuda", "cpu_ref"}) {
    c.backend = backend;
    moe_layer_t layer = nullptr;
    ASSERT_EQ(moe_layer_create(&c, &layer), MOE_STATUS_SUCCESS) << moe_last_error();
    EXPECT_EQ(moe_layer_set_comm(layer, comm_, nullptr, 0), MOE_STATUS_UNSUPPORTED) << backend;
    EXPECT_NE(std::strlen(moe_last_error()), 0u);
    moe_layer_destroy(layer);
  }
}

}  // namespace
