#include "backends/cuda/expert_parallel.hpp"

#include <algorithm>
#include <numeric>
#include <vector>

#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/expert_mlp.hpp"
#include "dist/dispatch.hpp"
#include "dist/row_exchange.hpp"

namespace moe::cuda {
namespace {

template <typename T>
DeviceBuffer upload(const std::vector<T>& values, cudaStream_t stream) {
  DeviceBuffer buffer(values.size() * sizeof(T), stream);
  if (!values.empty())
    check(cudaMemcpyAsync(buffer.get(), values.data(), buffer.bytes(), cudaMemcpyHostToDevice,
                          stream),
          "cudaMemcpyAsync");
  return buffer;
}

template <typename T>
void download(const DeviceBuffer& buffer, std::vector<T>& values, cudaStream_t stream) {
  if (values.empty()) return;
  check(cudaMemcpyAsync(values.data(), buffer.get(), values.size() * sizeof(T),
                        cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync");
}

// Sends rows_out[p] rows of `row_bytes` to each peer p from `rows` (packed by peer) and
// returns the rows_in[p] received from each, packed in rank order. The stream's work
// must be done: the communicator reads `rows` directly, or a host copy of them.
DeviceBuffer exchange_rows(dist::ExpertParallel& ep, const void* rows,
                           const std::vector<int64_t>& rows_out,
                           const std::vector<int64_t>& rows_in, int64_t row_bytes,
                           cudaStream_t stream) {
  const std::vector<int64_t> out_bytes = dist::bytes_of_rows(rows_out, row_bytes),
                             in_bytes = dist::bytes_of_rows(rows_in, row_bytes);
  DeviceBuffer received(
      static_cast<size_t>(std::accumulate(in_bytes.begin(), in_bytes.end(), int64_t{0})), stream);
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  ep.exchange_device(rows, out_bytes, received.get(), in_bytes);
  const int64_t sent = std::accumulate(out_bytes.begin(), out_bytes.end(), int64_t{0}),
                got = std::accumulate(in_bytes.begin(), in_bytes.end(), int64_t{0});
  ep.count_rows(sent, got, sent, got);
  return received;
}

// The rows of this rank's experts regrouped from the receive order (packed by sender)
// into the expert layout (by local expert, batch order within each, padded as the
// layout says): expert_source[expert row] = received row (-1: padding), and
// received_row the inverse.
void regroup(const Plan& local, const ExpertLayout& layout, std::vector<int64_t>& expert_source,
             std::vector<int64_t>& received_row) {
  const int64_t J = static_cast<int64_t>(local.served.size());
  expert_source.assign(layout.offsets.empty() ? 0 : layout.offsets.back(), -1);
  received_row.assign(local.rows, -1);
  for (int64_t j = 0; j < J; ++j) {
    for (int64_t i = 0; i < local.served[j]; ++i) {
      const int64_t received = local.token_of_row[local.offset[j] + i];
      const int64_t row = layout.offsets[j] + i;
      expert_source[row] = received;
      received_row[received] = row;
    }
  }
}

}  // namespace

void forward_expert_parallel(const DeviceLayer& layer, LayerState& state, SavedOnDevice& s,
                             const moe_forward_args_t& args, const dist::ForwardCheckIn& group,
                             EventTimer& timer) {
  const LayerConfig& c = layer.config;
  dist::ExpertParallel& ep = *layer.ep;
  const cudaStream_t stream = s.stream;
  const moe_dtype_t dtype = c.dtype;
  const int64_t T = s.params.tokens, E = c.num_experts, k = c.slots(), copies = T * k;
  const int64_t d = c.d_model, row_bytes = d * static_cast<int64_t>(dtype_size(dtype));
  const SummaryLayout L{E};
  const ReadbackLayout R{E};

  // The routing decision and its counts, to the host.
  std::vector<int64_t> summary(L.words());
  std::vector<double> losses(E + 4);
  std::vector<float> gates(copies);
  Routing& routing = s.routing;
  routing.expert.resize(copies);
  download(s.summary, summary, stream);
  download(s.loss_sums, losses, stream);
  download(s.experts, routing.expert, stream);
  download(s.gates, gates, stream);
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  s.take_counts(summary.data(), losses.data());
  routing.gate.assign(gates.begin(), gates.end());

  // The group's decision: capacity, drops and losses over the batch, and the exchange.
  auto dispatch =
      std::make_unique<dist::Dispatch>(dist::make_dispatch(ep, c, group.call, routing, s.plan));
  const Plan& plan = s.plan;  // this rank's copies, in send order
  const Plan& local = dispatch->local;
  s.batch_valid_tokens = routing.batch_valid_tokens;
  s.row = upload(plan.row, stream);
  s.dropped = upload(plan.dropped, stream);
  s.row_token = upload(plan.token_of_row, stream);
  s.exchange.batch_demand = upload(dispatch->batch_demand, stream);
  s.batch_demand = s.exchange.batch_demand.get<int64_t>();
  timer.mark("dispatch");

  if (layer.telemetry_due) {
    s.sum_step_stats(c, args.seq_len);
    check(cudaMemcpyAsync(state.readback + R.stats(), s.stats.get(), s.stats.bytes(),
                          cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync");
  }

  // Rows out, grouped by owner: the exchange's first synchronisation also completes the
  // statistics' read-back.
  copy_finite_rows(dtype, T, d, args.x.data, s.nonfinite.get<uint8_t>(), s.x.get(), stream);
  DeviceBuffer sent(plan.rows * row_bytes, stream);
  permute(dtype, plan.rows, d, s.x.get(), s.row_token.get<int64_t>(), sent.get(), stream);
  const DeviceBuffer received =
      exchange_rows(ep, sent.get(), dispatch->send_rows, dispatch->recv_rows, row_bytes, stream);
  if (layer.telemetry_due)
    s.device_stats.assign(state.readback + R.stats(),
                          state.readback + R.stats() + StatsLayout{E}.words());
  timer.mark("exchange");

  // This rank's experts over the rows they received.
  const int64_t J = dispatch->local_config.num_experts;
  ExpertLayout layout =
      choose_layout(local.served, state.grouped_mode,
                    c.pad_to_capacity ? std::min(local.capacity, dispatch->batch_tokens) : -1);
  std::vector<int64_t> expert_source, received_row;
  regroup(local, layout, expert_source, received_row);
  prepare_expert_rows(c, s.expert_rows, std::move(layout), J, stream);
  ExpertRows& rows = s.expert_rows;
  s.exchange.expert_source = upload(expert_source, stream);
  s.exchange.received_row = upload(received_row, stream);
  permute(dtype, rows.rows(), d, received.get(), s.exchange.expert_source.get<int64_t>(),
          rows.xp.get(), stream);
  experts_forward(state, stream, c, layer.weights, rows, timer);

  // Results back to the ranks whose tokens they are, then combined.
  DeviceBuffer results(local.rows * row_bytes, stream);
  permute(dtype, local.rows, d, rows.yp.get(), s.exchange.received_row.get<int64_t>(),
          results.get(), stream);
  s.exchange.returned =
      exchange_rows(ep, results.get(), dispatch->recv_rows, dispatch->send_rows, row_bytes, stream);
  combine(dtype, T, k, d, s.gates.get<float>(), s.row.get<int64_t>(), s.exchange.returned.get(),
          args.y.data, stream);
  timer.mark("return_combine");
  s.dispatch = std::move(dispatch);
}

void backward_expert_parallel(const DeviceLayer& layer, LayerState& state, const SavedOnDevice& s,
                              const moe_backward_args_t& args, float* dgate, EventTimer& timer) {
  const LayerConfig& c = layer.config;
  dist::ExpertParallel& ep = *layer.ep;
  const dist::Dispatch& dispatch = *s.dispatch;
  const cudaStream_t stream = s.stream;
  const moe_dtype_t dtype = c.dtype;
  const Plan& plan = s.plan;
  const int64_t T = plan.tokens, k = c.slots(), d = c.d_model;
  const int64_t row_bytes = d * static_cast<int64_t>(dtype_size(dtype));
  const ExpertRows& rows = s.expert_rows;
  const bool accumulate = (args.flags & MOE_BACKWARD_ACCUMULATE) != 0;

  DeviceBuffer dy_sent(plan.rows * row_bytes, stream);
  combine_backward(dtype, T, k, d, s.gates.get<float>(), s.row.get<int64_t>(),
                   s.exchange.returned.get(), args.dy.data, dy_sent.get(), dgate, stream);
  const DeviceBuffer dy_received =
      exchange_rows(ep, dy_sent.get(), dispatch.send_rows, dispatch.recv_rows, row_bytes, stream);
  timer.mark("combine_backward_exchange");
  DeviceBuffer dyp(rows.rows() * row_bytes, stream), dxp(rows.rows() * row_bytes, stream);
  permute(dtype, rows.rows(), d, dy_received.get(), s.exchange.expert_source.get<int64_t>(),
          dyp.get(), stream);
  // dxp always: the other ranks' dx needs this rank's experts whatever this rank asks.
  experts_backward(state, stream, c, layer.weights, args.grads, accumulate, rows, dyp.get(),
                   dxp.get(), timer);
  const int64_t received = dispatch.local.rows;
  DeviceBuffer dx_results(received * row_bytes, stream);
  permute(dtype, received, d, dxp.get(), s.exchange.received_row.get<int64_t>(), dx_results.get(),
          stream);
  const DeviceBuffer dx_returned = exchange_rows(ep, dx_results.get(), dispatch.recv_rows,
                                                 dispatch.send_rows, row_bytes, stream);
  if (args.dx.data)
    gather_rows(dtype, T, k, d, s.row.get<int64_t>(), dx_returned.get(), args.dx.data, accumulate,
                stream);
  timer.mark("dx_exchange");
}

}  // namespace moe::cuda
