// Peak CUDA memory of a piece of work, read from LibTorch's caching allocator. Shared by the op
// tests (the memory contract of the soft-target ops) and the benchmarks (the memory
// target), so both count the same way; testing/ holds what tests/ and bench/ share (both put it
// on their include path).
#pragma once

#include "fusedkd/build_config.h"

#if FUSEDKD_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>

#include <cstdint>

namespace fusedkd::testing {

// Bytes `fn` asks the caching allocator for on the current CUDA device at its peak, above what was
// allocated before it (requested sizes, before the allocator rounds them; tensors `fn` returns
// are still alive at the peak).
template <typename Fn>
std::int64_t cuda_peak_extra_bytes(Fn&& fn) {
  namespace allocator = c10::cuda::CUDACachingAllocator;
  const auto aggregate = static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  const c10::DeviceIndex device = c10::cuda::current_device();
  c10::cuda::device_synchronize();
  allocator::resetPeakStats(device);
  const std::int64_t before = allocator::getDeviceStats(device).requested_bytes[aggregate].current;
  fn();
  c10::cuda::device_synchronize();
  return allocator::getDeviceStats(device).requested_bytes[aggregate].peak - before;
}

}  // namespace fusedkd::testing
#endif
