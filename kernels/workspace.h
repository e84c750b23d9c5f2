// Workspace layouts the CPU and CUDA launchers carve alike (the byte counts are public:
// *_workspace_bytes in fusedkd/soft_target.h and fusedkd/feature.h, defined in workspace.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

namespace fusedkd::detail {

// The workspace of attention_transfer and similarity_preserving: the rows a_s, a_t and their
// gradients d_s, d_t ([rows, cols] each), then the row losses [rows].
template <typename Acc>
struct NormalizedRowsWorkspace {
  Acc *a_s, *a_t, *d_s, *d_t, *row_loss;
  NormalizedRowsWorkspace(void* workspace, std::int64_t rows, std::int64_t cols) {
    const std::int64_t size = rows * cols;
    a_s = static_cast<Acc*>(workspace);
    a_t = a_s + size;
    d_s = a_t + size;
    d_t = d_s + size;
    row_loss = d_t + size;
  }
  static std::size_t bytes(std::int64_t rows, std::int64_t cols) {
    return (4 * static_cast<std::size_t>(rows * cols) + static_cast<std::size_t>(rows)) * sizeof(Acc);
  }
};

// Most blocks a CUDA feature kernel's grid has (its per-block partials fit the workspace).
constexpr std::int64_t kFeatureMaxBlocks = 2048;

// The soft-target workspace: [rows] row losses, then, 16-byte aligned, the weight of a valid row
// (the CUDA kernels compute it on the device from the labels). Its offset:
inline std::size_t soft_target_weight_offset(std::int64_t rows, std::size_t acc_bytes) {
  return (static_cast<std::size_t>(rows) * acc_bytes + 15) / 16 * 16;
}

}  // namespace fusedkd::detail
