// Building blocks of the row-wise kernels: rows cut into 16-byte chunks, a row's chunks held in
// registers (RowTile), groups of threads that own one row each (RowGroup), and a reduction over
// such a group whose result every thread of the group receives (RowAllReduce, on CUB).
//
// Chunk c of a row covers the row's elements [c*W - head, c*W - head + W), W elements of
// W * sizeof(T) bytes (16 bytes, or 8 for the narrower of two arrays chunked alike), where `head`
// is how far (in elements) the row start lies past a chunk boundary. Chunks that lie wholly in
// the row are one vector load; the first and last chunk may be partial and are read element by
// element. A second array shares the chunking only when its rows start at the same `head`;
// otherwise it is read element by element with the same element-to-thread mapping.
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cub/util_ptx.cuh>
#include <cub/warp/warp_reduce.cuh>

#include <type_traits>

#include "../launch_plan.h"
#include "cuda_utils.cuh"

namespace fusedkd::cuda {

template <typename T, int N = Pack<T>::kWidth>
__device__ __forceinline__ int chunk_head(const T* row) {
  constexpr std::uintptr_t kBytes = N * sizeof(T);
  return static_cast<int>((reinterpret_cast<std::uintptr_t>(row) % kBytes) / sizeof(T));
}

using detail::chunk_count;
using detail::max_chunks_per_row;

// Loads chunk `c` of a row as stored; elements outside the row become `fill`.
// `vector_ok`: this row's head equals the chunking head (a whole chunk is one aligned load).
template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_chunk_raw(const T* row, std::int64_t cols, int head, std::int64_t c,
                                                     bool vector_ok, bool streaming, T fill) {
  const std::int64_t first = c * N - head;
  if (vector_ok && first >= 0 && first + N <= cols) return load_pack<T, N>(row + first, streaming);
  Pack<T, N> pack;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const std::int64_t e = first + k;
    pack.v[k] = (e >= 0 && e < cols) ? row[e] : fill;
  }
  return pack;
}

// A chunk as accumulation values.
template <typename T, int N, typename Acc>
__device__ __forceinline__ void unpack_chunk(const Pack<T, N>& pack, Acc (&out)[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) out[k] = static_cast<Acc>(to_acc(pack.v[k]));
}

// Loads chunk `c` of a row as accumulation values; elements outside the row become `fill`
// (a value the element type holds exactly: 0 or -inf).
template <typename T, int N, typename Acc>
__device__ __forceinline__ void load_chunk(const T* row, std::int64_t cols, int head,
                                           std::int64_t c, bool vector_ok, bool streaming,
                                           Acc (&out)[N], Acc fill) {
  unpack_chunk<T, N>(load_chunk_raw<T, N>(row, cols, head, c, vector_ok, streaming,
                                          from_acc<T>(static_cast<acc_t<T>>(fill))),
                     out);
}

template <typename T, int N, typename Acc>
__device__ __forceinline__ void store_chunk(T* row, std::int64_t cols, int head, std::int64_t c,
                                            bool vector_ok, const Acc (&in)[N]) {
  constexpr int kWidth = N;
  const std::int64_t first = c * kWidth - head;
  if (vector_ok && first >= 0 && first + kWidth <= cols) {
    Pack<T, N> pack;
#pragma unroll
    for (int k = 0; k < kWidth; ++k) pack.v[k] = from_acc<T>(static_cast<acc_t<T>>(in[k]));
    store_pack<T, N>(row + first, pack);
  } else {
#pragma unroll
    for (int k = 0; k < kWidth; ++k) {
      const std::int64_t e = first + k;
      if (e >= 0 && e < cols) row[e] = from_acc<T>(static_cast<acc_t<T>>(in[k]));
    }
  }
}

// A row held in registers: thread `lane` of a THREADS-thread group owns chunks
// lane, lane + THREADS, ..., ITEMS of them, of N elements each, as values of type Acc. Indices
// are compile-time after unrolling, so the array stays in registers.
template <typename Acc, int THREADS, int ITEMS, int N>
struct RowTile {
  static constexpr int kWidth = N;
  Acc v[ITEMS][N];

  template <typename T>
  __device__ __forceinline__ void load(const T* row, int cols, int head, int lane, Acc fill) {
    const bool vector_ok = chunk_head<T, N>(row) == head;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i)
      load_chunk<T, N>(row, cols, head, lane + i * THREADS, vector_ok, /*streaming=*/true, v[i], fill);
  }

  template <typename T>
  __device__ __forceinline__ void store(T* row, int cols, int head, int lane) const {
    const bool vector_ok = chunk_head<T, N>(row) == head;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) store_chunk<T, N>(row, cols, head, lane + i * THREADS, vector_ok, v[i]);
  }

  // Row index of element k of item i for this lane.
  __device__ __forceinline__ static int element(int lane, int i, int k, int head) {
    return (lane + i * THREADS) * N - head + k;
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

// Values each thread keeps per array in the register tiles.
constexpr int kElementsPerThread = 16;

// Calls launch.tile<THREADS, BLOCK, ITEMS>() for the smallest register tile that holds a row of
// `cols` elements in chunks of N (ITEMS = ELEMENTS_PER_THREAD / N per thread): a sub-warp or warp
// per row (several rows per 128-thread block) for short rows, a block per row up to MAX_BLOCK
// threads for long ones; else launch.long_rows(). MAX_BLOCK is where ptxas would start spilling
// for the kernel's register tiles (-Xptxas -warn-spills, checked at build time).
// The choice is detail::register_tile (kernels/launch_plan.h, tested on the CPU); this maps it onto
// the compiled tile kernels.
template <int N, int ELEMENTS_PER_THREAD, int MAX_BLOCK, typename Launch>
void dispatch_row_length(std::int64_t cols, const Launch& launch) {
  constexpr int kItems = ELEMENTS_PER_THREAD / N;
  const detail::RegisterTile tile = detail::register_tile(cols, N, ELEMENTS_PER_THREAD, MAX_BLOCK);
  if (!tile.fits()) return launch.long_rows();
  if (tile.items == 1 && tile.threads <= 32) {
    switch (tile.threads) {
      case 4: return launch.template tile<4, 128, 1>();
      case 8: return launch.template tile<8, 128, 1>();
      case 16: return launch.template tile<16, 128, 1>();
      default: return launch.template tile<32, 128, 1>();
    }
  }
  if (tile.block == 128) {
    if (tile.threads == 32) return launch.template tile<32, 128, kItems>();
    return launch.template tile<128, 128, kItems>();
  }
  if constexpr (MAX_BLOCK >= 256) {
    if (tile.threads == 256) return launch.template tile<256, 256, kItems>();
  }
  if constexpr (MAX_BLOCK >= 512) {
    if (tile.threads == 512) return launch.template tile<512, 512, kItems>();
  }
  if constexpr (MAX_BLOCK >= 1024) {
    if (tile.threads == 1024) return launch.template tile<1024, 1024, kItems>();
  }
  return launch.long_rows();  // unreachable: register_tile keeps to MAX_BLOCK
}

}  // namespace fusedkd::cuda
