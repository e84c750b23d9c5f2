// Row helpers of the CPU kernels: per-thread scratch rows, conversion of a row from and to its
// storage type, the row maximum, short rows across the vector lanes. Included by each kernel
// file, so compiled per instruction set.
#pragma once

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "fusedkd/dtype.h"
#include "fusedkd/math.h"
#include "vector_math.h"

namespace fusedkd::cpu::FUSEDKD_CPU_ISA {
namespace {

// A scratch row of at least `cols` values for this thread; `slot` (0-4) tells apart live rows.
template <typename Acc>
Acc* scratch_row(std::int64_t cols, int slot) {
  thread_local std::vector<Acc> buffers[5];
  std::vector<Acc>& buffer = buffers[slot];
  if (static_cast<std::int64_t>(buffer.size()) < cols) buffer.resize(static_cast<std::size_t>(cols));
  return buffer.data();
}

// Calls fn(T{}) with the host storage type of `dtype`.
template <typename Fn>
void with_storage_type(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Float32: fn(float{}); break;
    case DType::Float64: fn(double{}); break;
    case DType::Float16: fn(Half{}); break;
    case DType::BFloat16: fn(BFloat16{}); break;
  }
}

// fn(G{}) with G the storage type of the gradient of an input stored as T: T itself, or float for
// float16 when float16_gradients_in_float32 (fusedkd/dtype.h: gradient_dtype).
template <typename T, typename Fn>
void with_gradient_type(bool float16_gradients_in_float32, Fn&& fn) {
  if constexpr (std::is_same_v<T, Half>) {
    if (float16_gradients_in_float32) return fn(float{});
  }
  fn(T{});
}

template <typename T, typename Acc>
void load_row(const T* __restrict src, std::int64_t cols, Acc* __restrict dst) {
#pragma omp simd
  for (std::int64_t j = 0; j < cols; ++j) dst[j] = static_cast<Acc>(load_as_acc(src[j]));
}

// Outputs of at least this many bytes are written with non-temporal stores (stream_copy), block
// by block from a tile in L1 (stream_blocks; store_row's `stream`, and the soft-target gradient
// sweeps): larger than the last-level cache of the machines this project measures (32 MiB on its
// VM), such an output is read back from memory by whatever reads it next, and a plain store first
// reads every cache line it writes. Measured 2026-12-01, kd_loss fwd+bwd at 4096 x 32,000,
// alternating runs: bfloat16 (converted from a scratch row) medians 46.1-47.3 -> 41.1-46.2 ms,
// float32 (the gradient sweep writing into the tile instead of the output) 48.3-55.7 ->
// 42.7-51.3 ms (three runs of four at 42.7-43.1). One fence per row: a fence after every tile
// lost the gain. A float32 row written whole into a scratch row in L2 and then streamed out was
// slower (53.9-56.4 -> 55.7-58.3 ms). Smaller outputs stay in cache for their reader.
constexpr std::int64_t kStreamedOutputBytes = std::int64_t{32} << 20;

// Copies `bytes` from src to dst, dst's whole cache lines with non-temporal stores (written
// without being read first) where the instruction set has them (x86-64: SSE2 at least), the
// unaligned ends and other machines with memcpy. Unordered until stream_fence.
inline void stream_copy(const void* src, void* dst, std::size_t bytes) {
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
#if defined(__SSE2__)
  const std::size_t head = std::min<std::size_t>(bytes, (64 - reinterpret_cast<std::uintptr_t>(d) % 64) % 64);
  std::memcpy(d, s, head);
  std::size_t i = head;
  for (; i + 64 <= bytes; i += 64) {
#if defined(__AVX512F__)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d + i), _mm512_loadu_si512(s + i));
#elif defined(__AVX__)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i + 32),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 32)));
#else
    for (int k = 0; k < 64; k += 16)
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + k),
                       _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + k)));
#endif
  }
  std::memcpy(d + i, s + i, bytes - i);
#else
  std::memcpy(d, s, bytes);
#endif
}

// Whether stream_copy writes with non-temporal stores here (else it is a memcpy, and streaming
// through a tile would only add a copy).
#if defined(__SSE2__)
constexpr bool kStreamingStores = true;
#else
constexpr bool kStreamingStores = false;
#endif

// The tile a streamed output is written through: 4 KiB, in L1.
constexpr std::size_t kStreamTileBytes = 4096;

// Calls block(j0, j1) over [0, cols) in pieces of at most kStreamTileBytes of T, the first one cut
// short so that every later piece of `dst` starts on a cache line (a piece's partial lines are
// written by memcpy, read first).
template <typename T, typename Block>
void stream_blocks(const T* dst, std::int64_t cols, const Block& block) {
  constexpr std::int64_t kTile = kStreamTileBytes / sizeof(T);
  const std::int64_t head =
      static_cast<std::int64_t>((64 - reinterpret_cast<std::uintptr_t>(dst) % 64) % 64 / sizeof(T));
  std::int64_t j0 = 0;
  if (head > 0) {
    j0 = std::min(head, cols);
    block(std::int64_t{0}, j0);
  }
  for (; j0 < cols; j0 += kTile) block(j0, std::min(j0 + kTile, cols));
}

// Orders the non-temporal stores before it (for any thread that synchronises with this one
// afterwards). Once per row: a fence after every few KiB made the streamed store slower than the
// plain one.
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// The next row a thread will read, asked for (software prefetch into L2) a little at a time while
// the current row's statistics sweep computes: the first sweep over a row (its maxima) otherwise
// waits on memory while the arithmetic units idle, and the sweeps after it find the row in cache
// and wait on the arithmetic while the memory idles. `s`, `t`: the next row's bytes at the sweep
// block's first element (or the current row's, where the thread has no next row: its prefetches
// then hit cache); `s_bytes`, `t_bytes`: the element sizes. step(k) asks for the line holding
// element k of the block on each side, one line per side per 16 elements (a 16-bit row's lines
// twice, the second time in flight or in cache already). Asked for all at once, a block's lines
// (2-4 KiB) filled the core's outstanding-miss slots and stalled the sweep as long as the memory
// took: measured, 2026-12-02.
struct RowPrefetch {
  const char* s;
  const char* t;
  std::int64_t s_bytes, t_bytes;
  RowPrefetch at(std::int64_t j) const { return {s + j * s_bytes, t + j * t_bytes, s_bytes, t_bytes}; }
  void step(std::int64_t k) const {
    prefetch_l2(s + k * s_bytes);
    prefetch_l2(t + k * t_bytes);
  }
  // prefetcht1 as an asm statement: GCC 12 dropped __builtin_prefetch from the AVX-512 sweep loop.
  static void prefetch_l2(const char* p) {
#if defined(__SSE__)
    asm volatile("prefetcht1 %0" : : "m"(*p));
#else
    __builtin_prefetch(p, 0, 2);
#endif
  }
};

// src converted into dst; with `stream`, through a tile in L1 and stream_copy.
template <typename T, typename Acc>
void store_row(const Acc* __restrict src, std::int64_t cols, T* __restrict dst, bool stream = false) {
  if (stream) {
    alignas(64) T tile[kStreamTileBytes / sizeof(T)];
    stream_blocks(dst, cols, [&](std::int64_t j0, std::int64_t j1) {
#pragma omp simd
      for (std::int64_t j = j0; j < j1; ++j) tile[j - j0] = StoreFromAcc<T>::apply(static_cast<acc_t<T>>(src[j]));
      stream_copy(tile, dst + j0, static_cast<std::size_t>(j1 - j0) * sizeof(T));
    });
    stream_fence();
    return;
  }
#pragma omp simd
  for (std::int64_t j = 0; j < cols; ++j) dst[j] = StoreFromAcc<T>::apply(static_cast<acc_t<T>>(src[j]));
}

// The same, for a dtype known at run time; `offset` in elements from `base`.
template <typename Acc>
void load_row(const void* base, DType dtype, std::int64_t offset, std::int64_t cols, Acc* dst) {
  with_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    load_row(static_cast<const T*>(base) + offset, cols, dst);
  });
}

template <typename Acc>
void store_row(const Acc* src, std::int64_t cols, void* base, DType dtype, std::int64_t offset, bool stream = false) {
  with_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    store_row(src, cols, static_cast<T*>(base) + offset, stream);
  });
}

// Rows stored in the accumulation type are read and written where they lie (no copy through a
// scratch row); others are converted into `scratch` and back.
// The row to read: `src` itself, or converted into `scratch`.
template <typename T, typename Acc>
const Acc* input_row(const T* src, std::int64_t cols, Acc* scratch) {
  if constexpr (std::is_same_v<T, Acc>) {
    return src;
  } else {
    load_row(src, cols, scratch);
    return scratch;
  }
}

// The row to write an output into: `dst` itself, or `scratch`, which output_row_done then converts
// into `dst` (with `stream`, through store_row's streaming path).
template <typename T, typename Acc>
Acc* output_row(T* dst, Acc* scratch) {
  if constexpr (std::is_same_v<T, Acc>) return dst;
  else return scratch;
}

template <typename T, typename Acc>
void output_row_done(const Acc* row, std::int64_t cols, T* dst, bool stream = false) {
  if constexpr (!std::is_same_v<T, Acc>) store_row(row, cols, dst, stream);
}

// The same, for a dtype known at run time; `offset` in elements from `base`.
template <typename Acc>
const Acc* input_row(const void* base, DType dtype, std::int64_t offset, std::int64_t cols, Acc* scratch) {
  const Acc* row = scratch;
  with_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    row = input_row(static_cast<const T*>(base) + offset, cols, scratch);
  });
  return row;
}

template <typename Acc>
Acc* output_row(void* base, DType dtype, std::int64_t offset, Acc* scratch) {
  Acc* row = scratch;
  with_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    row = output_row(static_cast<T*>(base) + offset, scratch);
  });
  return row;
}

template <typename Acc>
void output_row_done(const Acc* row, std::int64_t cols, void* base, DType dtype, std::int64_t offset,
                     bool stream = false) {
  with_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    output_row_done(row, cols, static_cast<T*>(base) + offset, stream);
  });
}

// Element j of a row stored as T, in the accumulation type (a 16-bit row widened as it is read).
template <typename Acc, typename T>
inline __attribute__((always_inline)) Acc at(const T* row, std::int64_t j) {
  return static_cast<Acc>(load_as_acc(row[j]));
}

// Whether the sweeps read rows stored as T where they lie, widening each element as they read it,
// rather than through a scratch row converted once: always for bfloat16 (a shift), for float16
// where the instruction set converts it (F16C). Elsewhere float16 is widened by integer arithmetic
// that would run at every read of every sweep: measured 2026-11-30 with the baseline x86 copy,
// float16 at 1024 x 32,000, kd_loss's statistics sweep took 54 ms read in place against 45 ms
// converted once, softmax_t fwd+bwd (512 x 32,000) 45 ms against 30-36 ms.
#if defined(__F16C__)
constexpr bool kConvertsHalf = true;
#else
constexpr bool kConvertsHalf = false;
#endif
template <typename T>
constexpr bool kReadInPlace = !std::is_same_v<T, Half> || kConvertsHalf;

// The maximum of a row stored as T, in the accumulation type.
template <typename Acc, typename T>
Acc row_max(const T* __restrict x, std::int64_t cols) {
  Acc m = neg_infinity<Acc>();
#pragma omp simd reduction(max : m)
  for (std::int64_t j = 0; j < cols; ++j) {
    const Acc v = at<Acc>(x, j);
    m = v > m ? v : m;
  }
  return m;
}

#if defined(__AVX512F__)
// rows_max for float sums of float or bfloat16 rows in AVX-512: vmaxps(x, m) is `x > m ? x : m`
// and vminps(x, lo) is `x < lo ? x : lo`, the scalar loop's selects (a NaN x keeps m and lo), 16
// elements a step, the last under a mask. GCC built the bfloat16 loop from the scalar selects as
// compares, masked shifts and register copies, about 20 instructions a step against 8 here: the
// statistics sweep of kd_loss at 4096 x 32,000 bfloat16 23.3-23.5 -> 22.4-22.6 ms, float32
// unchanged (memory-bound), measured 2026-12-01 in alternating runs.
template <typename T>
void rows_max_x16(const T* __restrict s, const T* __restrict t, std::int64_t cols, float& max_s, float& max_t,
                  bool& has_neg_inf) {
  const __m512 neg_inf = _mm512_set1_ps(neg_infinity<float>()), pos_inf = _mm512_set1_ps(-neg_infinity<float>());
  __m512 ms = neg_inf, mt = neg_inf, lo_s = pos_inf, lo_t = pos_inf;
  const auto step = [&](std::int64_t j, __mmask16 m) __attribute__((always_inline)) {
    // Lanes outside m read as 0 and are kept out of the reductions by the mask.
    const __m512 sj = load_x16(s + j, m), tj = load_x16(t + j, m);
    ms = _mm512_mask_max_ps(ms, m, sj, ms);
    mt = _mm512_mask_max_ps(mt, m, tj, mt);
    lo_s = _mm512_mask_min_ps(lo_s, m, sj, lo_s);
    lo_t = _mm512_mask_min_ps(lo_t, m, tj, lo_t);
  };
  for_each_x16(0, cols, step);
  max_s = _mm512_reduce_max_ps(ms);
  max_t = _mm512_reduce_max_ps(mt);
  has_neg_inf = _mm512_reduce_min_ps(_mm512_min_ps(lo_s, lo_t)) == neg_infinity<float>();
}
#else
template <typename... Args>
void rows_max_x16(Args&&...) {}  // never instantiated: kVectorMath is false
#endif

// The maxima of two rows, and whether some element of either is -inf (a masked logit: the sweeps
// then keep their exact-zero rules; rows without one take the sweeps without selects); a NaN is
// neither. Both rows in one loop: the first sweep over a row waits on memory, and two streams at
// once keep more loads in flight than one row after the other (7% of the statistics sweep of
// kd_loss at 4096 x 32,000 float32, measured). The two minima are separate reductions: one
// running minimum of both rows chained two compare-and-selects per iteration, and that chain, not
// memory, bounded the loop for bfloat16 (its share of the statistics sweep's samples 28% -> 21%;
// the sweep 33-34 -> 32-33 ms at 4096 x 32,000, measured 2026-12-01). A NaN in either row is
// skipped by its minimum, so it cannot hide a -inf.
template <typename Acc, typename T>
void rows_max(const T* __restrict s, const T* __restrict t, std::int64_t cols, Acc& max_s, Acc& max_t,
              bool& has_neg_inf) {
  if constexpr (kVectorMath && std::is_same_v<Acc, float> &&
                (std::is_same_v<T, float> || std::is_same_v<T, BFloat16>)) {
    return rows_max_x16(s, t, cols, max_s, max_t, has_neg_inf);
  }
  Acc ms = neg_infinity<Acc>(), mt = neg_infinity<Acc>(), lo_s = -neg_infinity<Acc>(), lo_t = lo_s;
#pragma omp simd reduction(max : ms, mt) reduction(min : lo_s, lo_t)
  for (std::int64_t j = 0; j < cols; ++j) {
    const Acc sj = at<Acc>(s, j), tj = at<Acc>(t, j);
    ms = sj > ms ? sj : ms;
    mt = tj > mt ? tj : mt;
    lo_s = sj < lo_s ? sj : lo_s;
    lo_t = tj < lo_t ? tj : lo_t;
  }
  max_s = ms;
  max_t = mt;
  has_neg_inf = lo_s == neg_infinity<Acc>() || lo_t == neg_infinity<Acc>();
}

// ---------------------------------------------------------------- short rows across the lanes

// Short rows (a few classes) leave a row's element loops too short to vectorise, so the kernels
// take them kShortRowLanes at a time, transposed: element j of every row of a group side by side
// (x[j * kShortRowLanes + lane]), and each sweep is a vector loop across the rows. Lanes past the
// last row are padded with zeros and their results dropped. Every lane runs the same code, so a
// row's result does not depend on the rows it is grouped with.
constexpr int kShortRowLanes = 16;

// Row sums of long rows (docs/numerics.md) add vector-wide partials over blocks of kSumBlock
// elements in the accumulation type, and the blocks' totals in double: a float sum over a whole
// long row rounds at every add of a comparable term, and its error moves every probability of the
// row alike. Within a block a lane adds kSumBlock / 16 terms; the double total costs one
// horizontal add per block.
constexpr std::int64_t kSumBlock = 1024;
constexpr std::int64_t kShortRowMax = 31;  // longest row taken this way

// kShortRowLanes as a value the compiler cannot see through. With a constant trip count of 16,
// GCC unrolls the long lane loops completely before its vectoriser runs, and the unrolled body
// stays scalar; with this bound they stay loops and vectorise. 16 is a multiple of every vector
// width, so every lane runs through the same vector code.
inline int opaque_lane_count() {
  int lanes = kShortRowLanes;
  asm("" : "+r"(lanes));
  return lanes;
}

// Rows 0..rows-1 of `src` (row stride `stride`) into dst[j * kShortRowLanes + row]; the lanes past
// `rows` are zero. The transposition is element by element; a 16-bit group whose rows lie back to
// back is first converted in one vector loop (scratch slot 2), so that no conversion runs scalar.
template <typename T, typename Acc>
void load_rows_transposed(const T* __restrict src, std::int64_t stride, int rows, std::int64_t cols,
                          Acc* __restrict dst) {
  constexpr int L = kShortRowLanes;
  if constexpr (sizeof(T) == 2) {
    if (stride == cols) {
      Acc* converted = scratch_row<Acc>(rows * cols, 2);
      load_row(src, rows * cols, converted);
      for (int l = 0; l < L; ++l)
        for (std::int64_t j = 0; j < cols; ++j) dst[j * L + l] = l < rows ? converted[l * cols + j] : Acc(0);
      return;
    }
  }
  if constexpr (std::is_same_v<T, Acc>) {
    if (rows == L) {  // a full group: a vector gather per element j
      const int lanes = opaque_lane_count();
      for (std::int64_t j = 0; j < cols; ++j)
#pragma omp simd
        for (int l = 0; l < lanes; ++l) dst[j * L + l] = src[l * stride + j];
      return;
    }
  }
  for (int l = 0; l < L; ++l)
    for (std::int64_t j = 0; j < cols; ++j)
      dst[j * L + l] = l < rows ? static_cast<Acc>(load_as_acc(src[l * stride + j])) : Acc(0);
}

// Lanes 0..rows-1 of a transposed group back into `rows` contiguous rows at `dst` (16-bit types:
// transposed in the accumulation type, then converted in one vector loop).
template <typename T, typename Acc>
void store_rows_transposed(const Acc* __restrict src, int rows, std::int64_t cols, T* __restrict dst) {
  constexpr int L = kShortRowLanes;
  if constexpr (sizeof(T) == 2) {
    Acc* rows_back = scratch_row<Acc>(rows * cols, 2);
    for (int l = 0; l < rows; ++l)
      for (std::int64_t j = 0; j < cols; ++j) rows_back[l * cols + j] = src[j * L + l];
    store_row(rows_back, rows * cols, dst);
    return;
  }
  if constexpr (std::is_same_v<T, Acc>) {
    if (rows == L) {  // a full group: a vector scatter per element j
      const int lanes = opaque_lane_count();
      for (std::int64_t j = 0; j < cols; ++j)
#pragma omp simd
        for (int l = 0; l < lanes; ++l) dst[l * cols + j] = src[j * L + l];
      return;
    }
  }
  for (int l = 0; l < rows; ++l)
    for (std::int64_t j = 0; j < cols; ++j)
      dst[l * cols + j] = StoreFromAcc<T>::apply(static_cast<acc_t<T>>(src[j * L + l]));
}

// The same, for a dtype known at run time; `offset` in elements from `base`.
template <typename Acc>
void load_rows_transposed(const void* base, DType dtype, std::int64_t offset, std::int64_t stride, int rows,
                          std::int64_t cols, Acc* dst) {
  with_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    load_rows_transposed(static_cast<const T*>(base) + offset, stride, rows, cols, dst);
  });
}

template <typename Acc>
void store_rows_transposed(const Acc* src, int rows, std::int64_t cols, void* base, DType dtype,
                           std::int64_t offset) {
  with_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    store_rows_transposed(src, rows, cols, static_cast<T*>(base) + offset);
  });
}

}  // namespace
}  // namespace fusedkd::cpu::FUSEDKD_CPU_ISA
