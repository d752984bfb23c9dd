#include "backends/cuda/expert_mlp.hpp"

#include "backends/cuda/cuda_check.hpp"

namespace moe::cuda {
namespace {

constexpr int64_t kRows = GroupedProblem::kRows;

ExpertOperand rows_of(const void* base, int64_t ld, bool transpose = false) {
  return {base, ld, transpose, 0, true};
}

ExpertOperand per_expert(const void* base, int64_t ld, int64_t stride, bool transpose = false) {
  return {base, ld, transpose, stride, false};
}

}  // namespace

void prepare_expert_rows(const LayerConfig& c, ExpertRows& r, ExpertLayout layout, int64_t experts,
                         cudaStream_t stream) {
  const size_t es = dtype_size(c.dtype);
  r.layout = std::move(layout);
  r.experts = experts;
  const int64_t rows = r.rows(), d = c.d_model;
  r.offsets = DeviceBuffer((experts + 1) * sizeof(int64_t), stream);
  if (r.layout.padded && experts > 0)
    padded_offsets(experts, r.layout.rows[0], r.offsets.get<int64_t>(), stream);
  else
    check(cudaMemcpyAsync(r.offsets.get(), r.layout.offsets.data(), r.offsets.bytes(),
                          cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync");
  r.row_expert = DeviceBuffer(rows * sizeof(int32_t), stream);
  row_experts(experts, rows, r.offsets.get<int64_t>(), r.row_expert.get<int32_t>(), stream);
  r.xp = DeviceBuffer(rows * d * es, stream);
  r.h_pre = DeviceBuffer(rows * c.ff_width() * es, stream);
  r.h = DeviceBuffer(rows * c.d_ff * es, stream);
  r.yp = DeviceBuffer(rows * d * es, stream);
}

void experts_forward(LayerState& state, cudaStream_t stream, const LayerConfig& c,
                     const BoundWeights& w, ExpertRows& r, EventTimer& timer) {
  if (r.experts == 0) return;  // a rank that owns no expert
  const moe_dtype_t dtype = c.dtype;
  const int64_t d = c.d_model, F = c.ff_width(), dff = c.d_ff, rows = r.rows();
  state.grouped.run(state.cublas, stream, dtype, r.layout,
                    {kRows, F, d, rows_of(r.xp.get(), d), per_expert(w.w1.data, F, d * F),
                     rows_of(r.h_pre.get(), F), false});
  timer.mark("gemm1");
  bias_activation(dtype, c.activation, rows, dff, r.h_pre.get(), w.b1.data,
                  r.row_expert.get<int32_t>(), r.h.get(), stream);
  state.grouped.run(state.cublas, stream, dtype, r.layout,
                    {kRows, d, dff, rows_of(r.h.get(), dff), per_expert(w.w2.data, d, dff * d),
                     rows_of(r.yp.get(), d), false});
  if (w.b2.data)
    add_row_bias(dtype, rows, d, r.yp.get(), w.b2.data, r.row_expert.get<int32_t>(), stream);
  timer.mark("gemm2");
}

void experts_backward(LayerState& state, cudaStream_t stream, const LayerConfig& c,
                      const BoundWeights& w, const moe_weights_t& g, bool accumulate,
                      const ExpertRows& r, const void* dyp, void* dxp, EventTimer& timer) {
  if (r.experts == 0) return;
  const moe_dtype_t dtype = c.dtype;
  const size_t es = dtype_size(dtype);
  const int64_t d = c.d_model, F = c.ff_width(), dff = c.d_ff, rows = r.rows();
  const int64_t* offsets = r.offsets.get<int64_t>();
  DeviceBuffer dh(rows * dff * es, stream);
  state.grouped.run(state.cublas, stream, dtype, r.layout,
                    {kRows, dff, d, rows_of(dyp, d), per_expert(w.w2.data, d, dff * d, true),
                     rows_of(dh.get(), dff), false});
  timer.mark("dh");
  if (g.w2.data)
    state.grouped.run(state.cublas, stream, dtype, r.layout,
                      {dff, d, kRows, rows_of(r.h.get(), dff, true), rows_of(dyp, d),
                       per_expert(g.w2.data, d, dff * d), accumulate});
  if (g.b2.data)
    expert_column_sums(dtype, r.experts, d, dyp, offsets, g.b2.data, accumulate, stream);
  timer.mark("dw2_db2");
  DeviceBuffer dh_pre(rows * F * es, stream);
  activation_backward(dtype, c.activation, rows, dff, r.h_pre.get(), dh.get(), dh_pre.get(),
                      stream);
  if (g.b1.data)
    expert_column_sums(dtype, r.experts, F, dh_pre.get(), offsets, g.b1.data, accumulate, stream);
  timer.mark("activation_backward");
  if (g.w1.data)
    state.grouped.run(state.cublas, stream, dtype, r.layout,
                      {d, F, kRows, rows_of(r.xp.get(), d, true), rows_of(dh_pre.get(), F),
                       per_expert(g.w1.data, F, d * F), accumulate});
  timer.mark("dw1");
  if (dxp)
    state.grouped.run(state.cublas, stream, dtype, r.layout,
                      {kRows, d, F, rows_of(dh_pre.get(), F), per_expert(w.w1.data, F, d * F, true),
                       rows_of(dxp, d), false});
}

}  // namespace moe::cuda
