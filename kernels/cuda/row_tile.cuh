// Building blocks of the row-wise kernels: rows cut into 16-byte chunks, a row's chunks held in
// registers (RowTile), groups of threads that own one row each (RowGroup), and a reduction over
// such a group whose result every thread of the group receives (RowAllReduce, on CUB).
//
// Chunk c of a row covers the row's elements [c*W - head, c*W - head + W), W = 16 / sizeof(T),
// where `head` is how far the row start lies past a 16-byte boundary. Chunks that lie wholly in
// the row are one vector load; the first and last chunk may be partial and are read element by
// element. A second array shares the chunking only when its rows start at the same `head`;
// otherwise it is read element by element with the same element-to-thread mapping.
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cub/util_ptx.cuh>
#include <cub/warp/warp_reduce.cuh>

#include <type_traits>

#include "cuda_utils.cuh"

namespace fusedkd::cuda {

template <typename T>
__device__ __forceinline__ int chunk_head(const T* row) {
  return static_cast<int>((reinterpret_cast<std::uintptr_t>(row) & 15u) / sizeof(T));
}

// Number of chunks a row of `cols` elements spans at the worst head.
template <typename T>
constexpr std::int64_t max_chunks_per_row(std::int64_t cols) {
  constexpr int kWidth = Pack<T>::kWidth;
  return (cols + 2 * kWidth - 2) / kWidth;
}

// Loads chunk `c` of a row as accumulation values; elements outside the row become `fill`.
// `vector_ok`: this row's head equals the chunking head (a whole chunk is one aligned load).
template <typename T>
__device__ __forceinline__ void load_chunk(const T* row, std::int64_t cols, int head,
                                           std::int64_t c, bool vector_ok, bool streaming,
                                           acc_t<T> (&out)[Pack<T>::kWidth], acc_t<T> fill) {
  constexpr int kWidth = Pack<T>::kWidth;
  const std::int64_t first = c * kWidth - head;
  if (vector_ok && first >= 0 && first + kWidth <= cols) {
    const Pack<T> pack = load_pack(row + first, streaming);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) out[k] = to_acc(pack.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < kWidth; ++k) {
      const std::int64_t e = first + k;
      out[k] = (e >= 0 && e < cols) ? to_acc(row[e]) : fill;
    }
  }
}

template <typename T>
__device__ __forceinline__ void store_chunk(T* row, std::int64_t cols, int head, std::int64_t c,
                                            bool vector_ok, const acc_t<T> (&in)[Pack<T>::kWidth]) {
  constexpr int kWidth = Pack<T>::kWidth;
  const std::int64_t first = c * kWidth - head;
  if (vector_ok && first >= 0 && first + kWidth <= cols) {
    Pack<T> pack;
#pragma unroll
    for (int k = 0; k < kWidth; ++k) pack.v[k] = from_acc<T>(in[k]);
    store_pack(row + first, pack);
  } else {
#pragma unroll
    for (int k = 0; k < kWidth; ++k) {
      const std::int64_t e = first + k;
      if (e >= 0 && e < cols) row[e] = from_acc<T>(in[k]);
    }
  }
}

// A row held in registers: thread `lane` of a THREADS-thread group owns chunks
// lane, lane + THREADS, ..., ITEMS of them. Indices are compile-time after unrolling, so the
// array stays in registers.
template <typename T, int THREADS, int ITEMS>
struct RowTile {
  using Acc = acc_t<T>;
  static constexpr int kWidth = Pack<T>::kWidth;
  Acc v[ITEMS][kWidth];

  __device__ __forceinline__ void load(const T* row, int cols, int head, int lane, Acc fill) {
    const bool vector_ok = chunk_head(row) == head;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i)
      load_chunk(row, cols, head, lane + i * THREADS, vector_ok, /*streaming=*/true, v[i], fill);
  }

  __device__ __forceinline__ void store(T* row, int cols, int head, int lane) const {
    const bool vector_ok = chunk_head(row) == head;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) store_chunk(row, cols, head, lane + i * THREADS, vector_ok, v[i]);
  }
};

// THREADS threads per row: a sub-warp or warp (several rows per block) or the whole block.
template <int THREADS, int BLOCK>
struct RowGroup {
  static_assert(THREADS <= 32 ? (32 % THREADS == 0 && BLOCK % 32 == 0) : THREADS == BLOCK,
                "a row group is a power-of-two part of a warp, or the whole block");
  static constexpr int kRowsPerBlock = BLOCK / THREADS;
  int lane;
  int group;
  __device__ __forceinline__ RowGroup()
      : lane(static_cast<int>(threadIdx.x) % THREADS), group(static_cast<int>(threadIdx.x) / THREADS) {}
  __device__ __forceinline__ std::int64_t first_row() const {
    return static_cast<std::int64_t>(blockIdx.x) * kRowsPerBlock + group;
  }
  __device__ __forceinline__ std::int64_t row_step() const {
    return static_cast<std::int64_t>(gridDim.x) * kRowsPerBlock;
  }
};

// Reduction over one row group; every thread of the group gets the result. Block groups
// synchronise the block (all of its threads must call it).
template <typename V, int THREADS, int BLOCK>
struct RowAllReduce {
  static constexpr bool kWarp = THREADS <= 32;
  using WarpReduce = cub::WarpReduce<V, (kWarp ? THREADS : 32)>;
  using BlockReduce = cub::BlockReduce<V, BLOCK>;
  struct WarpStorage {
    typename WarpReduce::TempStorage groups[BLOCK / (kWarp ? THREADS : BLOCK)];
  };
  struct BlockStorage {
    typename BlockReduce::TempStorage reduce;
    V result;
  };
  using TempStorage = std::conditional_t<kWarp, WarpStorage, BlockStorage>;

  template <typename Op>
  __device__ __forceinline__ static V run(const V& value, Op op, TempStorage& storage, int group) {
    if constexpr (kWarp) {
      const V total = WarpReduce(storage.groups[group]).Reduce(value, op);
      const unsigned int member_mask =
          cub::WarpMask<THREADS>((static_cast<unsigned int>(threadIdx.x) % 32u) / THREADS);
      return cub::ShuffleIndex<THREADS>(total, 0, member_mask);  // lane 0 holds the total
    } else {
      const V total = BlockReduce(storage.reduce).Reduce(value, op);
      if (threadIdx.x == 0) storage.result = total;
      __syncthreads();
      const V result = storage.result;
      __syncthreads();  // the storage is free again for the next row
      return result;
    }
  }
};

template <typename Acc>
struct AddOp {
  __device__ __forceinline__ Acc operator()(Acc a, Acc b) const { return a + b; }
};

}  // namespace fusedkd::cuda
