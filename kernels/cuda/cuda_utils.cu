#include "cuda_utils.cuh"

#include "../launch_plan.h"

#include <deque>
#include <mutex>
#include <stdexcept>
#include <string>

namespace fusedkd::cuda {

void throw_cuda_error(cudaError_t error, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string("fusedkd: CUDA error '") + cudaGetErrorString(error) +
                           "' from " + what + " at " + file + ":" + std::to_string(line));
}

const DeviceLimits& device_limits() {
  static std::mutex mutex;
  static std::deque<DeviceLimits> limits;  // by device ordinal; elements never move
  int device = 0;
  FUSEDKD_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  if (device >= static_cast<int>(limits.size())) limits.resize(device + 1);
  DeviceLimits& d = limits[device];
  if (d.multiprocessors == 0) {
    int optin = 0;
    FUSEDKD_CUDA_CHECK(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, device));
    FUSEDKD_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    d.shared_per_block_optin = static_cast<std::size_t>(optin);
    FUSEDKD_CUDA_CHECK(cudaDeviceGetAttribute(&d.multiprocessors, cudaDevAttrMultiProcessorCount, device));
  }
  return d;
}

int multiprocessor_count() { return device_limits().multiprocessors; }

unsigned int grid_size(std::int64_t work_items, int items_per_block, int block_threads) {
  // 2048 resident threads per SM on sm_80/sm_90; four waves of blocks keep every SM busy while
  // the grid-stride loops pick up the remainder.
  return detail::grid_blocks(work_items, items_per_block, block_threads, multiprocessor_count());
}

}  // namespace fusedkd::cuda
