// CUDA temperature softmax / log-softmax, forward and backward.
//
// Rows of up to 16 elements per thread of the largest tile (1024 threads for the float forward,
// 512 for the backward and for double) are held in registers and read from device memory once
// (RowTile): a sub-warp or warp per row for short rows, a block per row for long ones, one CUB
// reduction per row. Longer rows are read twice by a block per row (statistics, then output);
// the second read may be served by L2 (not yet measured). See docs/architecture.md.
#include <cmath>

#include "fusedkd/math.h"
#include "fusedkd/softmax.h"
#include "row_tile.cuh"
#include "../validate.h"

namespace fusedkd::cuda {
namespace {

constexpr int kStreamingBlock = 512;

struct ForwardParams {
  const void* input;
  void* output;
  std::int64_t rows;
  int cols;
  std::int64_t input_row_stride;
  double temperature;
  bool log;
};

struct BackwardParams {
  const void* grad_output;
  const void* output;
  void* grad_input;
  std::int64_t rows;
  int cols;
  std::int64_t grad_output_row_stride;
  std::int64_t output_row_stride;
  double temperature;
  bool log;
};

// ---------------------------------------------------------------- register-tile kernels

template <typename T, int THREADS, int BLOCK, int ITEMS>
__global__ void __launch_bounds__(BLOCK) softmax_forward_tile_kernel(ForwardParams p) {
  using Acc = acc_t<T>;
  using Reduce = RowAllReduce<SoftmaxStats<Acc>, THREADS, BLOCK>;
  constexpr int kWidth = Pack<T>::kWidth;
  __shared__ typename Reduce::TempStorage storage;
  const RowGroup<THREADS, BLOCK> g;
  const Temperature<Acc> temp = Temperature<Acc>::of(p.temperature);
  const SoftmaxStatsMerge<Acc> merge{temp.scale_log2};

  for (std::int64_t row = g.first_row(); row < p.rows; row += g.row_step()) {
    const T* in = static_cast<const T*>(p.input) + row * p.input_row_stride;
    T* out = static_cast<T*>(p.output) + row * p.cols;
    const int head = chunk_head(out);
    RowTile<Acc, THREADS, ITEMS, kWidth> x;
    x.load(in, p.cols, head, g.lane, neg_infinity<Acc>());

    SoftmaxStats<Acc> local{neg_infinity<Acc>(), Acc(0)};
#pragma unroll
    for (int i = 0; i < ITEMS; ++i)
#pragma unroll
      for (int k = 0; k < kWidth; ++k) local.max = x.v[i][k] > local.max ? x.v[i][k] : local.max;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i)
#pragma unroll
      for (int k = 0; k < kWidth; ++k) local.sum += softmax_sum_term(x.v[i][k], local.max, temp.scale_log2);
    const SoftmaxStats<Acc> stats = Reduce::run(local, merge, storage, g.group);

    if (p.log) {
      const Acc log_sum = log(stats.sum);
#pragma unroll
      for (int i = 0; i < ITEMS; ++i)
#pragma unroll
        for (int k = 0; k < kWidth; ++k)
          x.v[i][k] = log_softmax_value(x.v[i][k], stats.max, temp.inv_t, log_sum);
    } else {
      const Acc inv_sum = Acc(1) / stats.sum;
#pragma unroll
      for (int i = 0; i < ITEMS; ++i)
#pragma unroll
        for (int k = 0; k < kWidth; ++k)
          x.v[i][k] = softmax_numerator(x.v[i][k], stats.max, temp.scale_log2) * inv_sum;
    }
    x.store(out, p.cols, head, g.lane);
  }
}

template <typename T, int THREADS, int BLOCK, int ITEMS>
__global__ void __launch_bounds__(BLOCK) softmax_backward_tile_kernel(BackwardParams p) {
  using Acc = acc_t<T>;
  using Reduce = RowAllReduce<double, THREADS, BLOCK>;
  constexpr int kWidth = Pack<T>::kWidth;
  __shared__ typename Reduce::TempStorage storage;
  const RowGroup<THREADS, BLOCK> g;
  const Acc inv_t = Temperature<Acc>::of(p.temperature).inv_t;

  for (std::int64_t row = g.first_row(); row < p.rows; row += g.row_step()) {
    const T* dy_row = static_cast<const T*>(p.grad_output) + row * p.grad_output_row_stride;
    const T* y_row = static_cast<const T*>(p.output) + row * p.output_row_stride;
    T* dx_row = static_cast<T*>(p.grad_input) + row * p.cols;
    const int head = chunk_head(dx_row);
    RowTile<Acc, THREADS, ITEMS, kWidth> dy;
    RowTile<Acc, THREADS, ITEMS, kWidth> y;
    dy.load(dy_row, p.cols, head, g.lane, Acc(0));
    y.load(y_row, p.cols, head, g.lane, Acc(0));

    // softmax: sum_j dy_j y_j, in double (see softmax_backward_value); log-softmax: sum_j dy_j.
    // Padding is 0 in both.
    double local = 0;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i)
#pragma unroll
      for (int k = 0; k < kWidth; ++k)
        local += p.log ? static_cast<double>(dy.v[i][k])
                       : static_cast<double>(dy.v[i][k]) * static_cast<double>(y.v[i][k]);
    const SplitSum<Acc> reduced = split_sum<Acc>(Reduce::run(local, Plus{}, storage, g.group));

#pragma unroll
    for (int i = 0; i < ITEMS; ++i)
#pragma unroll
      for (int k = 0; k < kWidth; ++k)
        dy.v[i][k] = p.log ? log_softmax_backward_value(dy.v[i][k], y.v[i][k], reduced.hi, inv_t)
                           : softmax_backward_value(dy.v[i][k], y.v[i][k], reduced.hi, reduced.lo,
                                                    inv_t);
    dy.store(dx_row, p.cols, head, g.lane);
  }
}

// ---------------------------------------------------------------- long rows: two reads

template <typename T, int BLOCK>
__global__ void __launch_bounds__(BLOCK) softmax_forward_streaming_kernel(ForwardParams p) {
  using Acc = acc_t<T>;
  using Reduce = RowAllReduce<SoftmaxStats<Acc>, BLOCK, BLOCK>;
  constexpr int kWidth = Pack<T>::kWidth;
  __shared__ typename Reduce::TempStorage storage;
  const Temperature<Acc> temp = Temperature<Acc>::of(p.temperature);
  const SoftmaxStatsMerge<Acc> merge{temp.scale_log2};

  for (std::int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const T* in = static_cast<const T*>(p.input) + row * p.input_row_stride;
    T* out = static_cast<T*>(p.output) + row * p.cols;
    const int head = chunk_head(out);
    const bool in_vector_ok = chunk_head(in) == head;
    const std::int64_t chunks = chunk_count(p.cols, head, kWidth);

    SoftmaxStats<Acc> local{neg_infinity<Acc>(), Acc(0)};
    for (std::int64_t c = threadIdx.x; c < chunks; c += BLOCK) {
      Acc v[kWidth];
      load_chunk(in, p.cols, head, c, in_vector_ok, /*streaming=*/false, v, neg_infinity<Acc>());
      SoftmaxStats<Acc> chunk{neg_infinity<Acc>(), Acc(0)};
#pragma unroll
      for (int k = 0; k < kWidth; ++k) chunk.max = v[k] > chunk.max ? v[k] : chunk.max;
#pragma unroll
      for (int k = 0; k < kWidth; ++k) chunk.sum += softmax_sum_term(v[k], chunk.max, temp.scale_log2);
      local = merge(local, chunk);
    }
    const SoftmaxStats<Acc> stats = Reduce::run(local, merge, storage, 0);
    const Acc log_sum = log(stats.sum);
    const Acc inv_sum = Acc(1) / stats.sum;

    for (std::int64_t c = threadIdx.x; c < chunks; c += BLOCK) {
      Acc v[kWidth];
      load_chunk(in, p.cols, head, c, in_vector_ok, /*streaming=*/true, v, Acc(0));
#pragma unroll
      for (int k = 0; k < kWidth; ++k)
        v[k] = p.log ? log_softmax_value(v[k], stats.max, temp.inv_t, log_sum)
                     : softmax_numerator(v[k], stats.max, temp.scale_log2) * inv_sum;
      store_chunk(out, p.cols, head, c, /*vector_ok=*/true, v);
    }
  }
}

template <typename T, int BLOCK>
__global__ void __launch_bounds__(BLOCK) softmax_backward_streaming_kernel(BackwardParams p) {
  using Acc = acc_t<T>;
  using Reduce = RowAllReduce<double, BLOCK, BLOCK>;
  constexpr int kWidth = Pack<T>::kWidth;
  __shared__ typename Reduce::TempStorage storage;
  const Acc inv_t = Temperature<Acc>::of(p.temperature).inv_t;

  for (std::int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const T* dy_row = static_cast<const T*>(p.grad_output) + row * p.grad_output_row_stride;
    const T* y_row = static_cast<const T*>(p.output) + row * p.output_row_stride;
    T* dx_row = static_cast<T*>(p.grad_input) + row * p.cols;
    const int head = chunk_head(dx_row);
    const bool dy_vector_ok = chunk_head(dy_row) == head;
    const bool y_vector_ok = chunk_head(y_row) == head;
    const std::int64_t chunks = chunk_count(p.cols, head, kWidth);

    double local = 0;
    for (std::int64_t c = threadIdx.x; c < chunks; c += BLOCK) {
      Acc dy[kWidth];
      load_chunk(dy_row, p.cols, head, c, dy_vector_ok, /*streaming=*/false, dy, Acc(0));
      if (p.log) {
#pragma unroll
        for (int k = 0; k < kWidth; ++k) local += static_cast<double>(dy[k]);
      } else {
        Acc y[kWidth];
        load_chunk(y_row, p.cols, head, c, y_vector_ok, /*streaming=*/false, y, Acc(0));
#pragma unroll
        for (int k = 0; k < kWidth; ++k) local += static_cast<double>(dy[k]) * static_cast<double>(y[k]);
      }
    }
    const SplitSum<Acc> reduced = split_sum<Acc>(Reduce::run(local, Plus{}, storage, 0));

    for (std::int64_t c = threadIdx.x; c < chunks; c += BLOCK) {
      Acc dy[kWidth];
      Acc y[kWidth];
      load_chunk(dy_row, p.cols, head, c, dy_vector_ok, /*streaming=*/true, dy, Acc(0));
      load_chunk(y_row, p.cols, head, c, y_vector_ok, /*streaming=*/true, y, Acc(0));
#pragma unroll
      for (int k = 0; k < kWidth; ++k)
        dy[k] = p.log ? log_softmax_backward_value(dy[k], y[k], reduced.hi, inv_t)
                      : softmax_backward_value(dy[k], y[k], reduced.hi, reduced.lo, inv_t);
      store_chunk(dx_row, p.cols, head, c, /*vector_ok=*/true, dy);
    }
  }
}

// ---------------------------------------------------------------- dispatch by row length

template <typename T>
struct ForwardLaunch {
  const ForwardParams& p;
  cudaStream_t stream;
  template <int THREADS, int BLOCK, int ITEMS>
  void tile() const {
    constexpr int kRowsPerBlock = BLOCK / THREADS;
    softmax_forward_tile_kernel<T, THREADS, BLOCK, ITEMS>
        <<<grid_size(p.rows, kRowsPerBlock, BLOCK), BLOCK, 0, stream>>>(p);
  }
  void long_rows() const {
    softmax_forward_streaming_kernel<T, kStreamingBlock>
        <<<grid_size(p.rows, 1, kStreamingBlock), kStreamingBlock, 0, stream>>>(p);
  }
};

template <typename T>
struct BackwardLaunch {
  const BackwardParams& p;
  cudaStream_t stream;
  template <int THREADS, int BLOCK, int ITEMS>
  void tile() const {
    constexpr int kRowsPerBlock = BLOCK / THREADS;
    softmax_backward_tile_kernel<T, THREADS, BLOCK, ITEMS>
        <<<grid_size(p.rows, kRowsPerBlock, BLOCK), BLOCK, 0, stream>>>(p);
  }
  void long_rows() const {
    softmax_backward_streaming_kernel<T, kStreamingBlock>
        <<<grid_size(p.rows, 1, kStreamingBlock), kStreamingBlock, 0, stream>>>(p);
  }
};

}  // namespace
}  // namespace fusedkd::cuda

namespace fusedkd {

void softmax_forward_cuda(const SoftmaxForwardArgs& args, CUstream_st* stream) {
  detail::validate(args);
  if (args.rows == 0) return;
  const cuda::ForwardParams p{args.input,       args.output,      args.rows,
                              static_cast<int>(args.cols), args.input_row_stride,
                              args.temperature, args.kind == SoftmaxKind::LogSoftmax};
  cuda::dispatch_dtype(args.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    // At 1024 threads a thread has 64 registers: enough for one float tile, not for a double one.
    constexpr int kMaxBlock = sizeof(cuda::acc_t<T>) == 8 ? 512 : 1024;
    cuda::dispatch_row_length<cuda::Pack<T>::kWidth, cuda::kElementsPerThread, kMaxBlock>(
        p.cols, cuda::ForwardLaunch<T>{p, stream});
  });
  FUSEDKD_CUDA_CHECK(cudaGetLastError());
}

void softmax_backward_cuda(const SoftmaxBackwardArgs& args, CUstream_st* stream) {
  detail::validate(args);
  if (args.rows == 0) return;
  const cuda::BackwardParams p{args.grad_output,
                               args.output,
                               args.grad_input,
                               args.rows,
                               static_cast<int>(args.cols),
                               args.grad_output_row_stride,
                               args.output_row_stride,
                               args.temperature,
                               args.kind == SoftmaxKind::LogSoftmax};
  cuda::dispatch_dtype(args.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    // Two tiles (dy and y): at most 512 threads, 128 registers each.
    cuda::dispatch_row_length<cuda::Pack<T>::kWidth, cuda::kElementsPerThread, 512>(
        p.cols, cuda::BackwardLaunch<T>{p, stream});
  });
  FUSEDKD_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fusedkd
