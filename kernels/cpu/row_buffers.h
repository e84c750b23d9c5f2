// Row helpers of the CPU kernels: per-thread scratch rows, conversion of a row from and to its
// storage type, the row maximum. Included by each kernel file, so compiled per instruction set.
#pragma once

#include <cstdint>
#include <vector>

#include "fusedkd/dtype.h"
#include "fusedkd/math.h"

namespace fusedkd::cpu::FUSEDKD_CPU_ISA {
namespace {

// A scratch row of at least `cols` values for this thread; `slot` tells apart two live rows.
template <typename Acc>
Acc* scratch_row(std::int64_t cols, int slot) {
  thread_local std::vector<Acc> buffers[2];
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

template <typename T, typename Acc>
void load_row(const T* __restrict src, std::int64_t cols, Acc* __restrict dst) {
#pragma omp simd
  for (std::int64_t j = 0; j < cols; ++j) dst[j] = static_cast<Acc>(load_as_acc(src[j]));
}

template <typename T, typename Acc>
void store_row(const Acc* __restrict src, std::int64_t cols, T* __restrict dst) {
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
void store_row(const Acc* src, std::int64_t cols, void* base, DType dtype, std::int64_t offset) {
  with_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    store_row(src, cols, static_cast<T*>(base) + offset);
  });
}

template <typename Acc>
Acc row_max(const Acc* __restrict x, std::int64_t cols) {
  Acc m = neg_infinity<Acc>();
#pragma omp simd reduction(max : m)
  for (std::int64_t j = 0; j < cols; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

}  // namespace
}  // namespace fusedkd::cpu::FUSEDKD_CPU_ISA
